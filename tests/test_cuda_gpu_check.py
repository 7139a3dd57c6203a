"""bench/gpu_check.sh (`make gpu-check`), the one-command GPU proof, on this machine: without a CUDA device it
must stop at its device step with a clear reason, exit 1, and still leave a complete Markdown report."""
import os
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present: the check would run for minutes")
def test_gpu_check_reports_no_cuda_device(tmp_path):
    out = tmp_path / "report"
    env = dict(os.environ, PYTHON=sys.executable)
    run = subprocess.run(["bash", os.path.join(ROOT, "bench", "gpu_check.sh"), str(out)], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 1, run.stdout + run.stderr
    report = (out / "gpu-check.md").read_text()
    assert f"- torch {torch.__version__}" in report
    assert "- triton " in report and "- nvcc" in report
    assert "### device: FAIL (exit 1)" in report
    assert "gpu_check: no CUDA device" in report
    assert "| device | FAIL (exit 1) |" in report and "not run: no usable device" in report
    assert report.rstrip().endswith("see gpu-check.log.") and "**GPU check FAILED** (device)" in report
    assert "no CUDA device" in (out / "gpu-check.log").read_text()
    assert not os.path.lexists(os.path.join(ROOT, "editgan_fast", "kernels")), "the kernels link was left behind"


def test_gpu_check_needs_an_output_directory():
    env = {k: v for k, v in os.environ.items() if k != "OUT"}
    run = subprocess.run(["bash", os.path.join(ROOT, "bench", "gpu_check.sh")], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and "usage" in run.stderr


def test_auto_on_cuda_follows_the_gpu_choice_table(monkeypatch):
    from editgan_fast import backend
    table = backend.gpu_choice()
    assert set(table) == {"bias_act", "upfirdn2d", "modulated_conv2d", "seg_head"}
    assert set(table.values()) <= set(backend.BACKENDS)
    cuda = torch.device("cuda")
    monkeypatch.setattr(backend, "_gpu_choice", {"seg_head": "cuda", "bias_act": "triton"})
    monkeypatch.setattr(backend, "available", lambda name: name in ("triton", "cuda"))
    assert backend._auto_for(cuda, "seg_head") == "cuda"
    assert backend._auto_for(cuda, "bias_act") == "triton"
    assert backend._auto_for(cuda, "upfirdn2d") == "triton"  # not in the table: triton first
    monkeypatch.setattr(backend, "available", lambda name: name == "triton")
    assert backend._auto_for(cuda, "seg_head") == "triton"  # the table's choice is not built here


def test_record_choice_picks_the_fastest_backend_within_the_bound(tmp_path):
    import json
    import shutil
    from factories import load_bench_script
    gpu = load_bench_script("gpu")
    path = tmp_path / "gpu_choice.json"
    shutil.copy(os.path.join(ROOT, "editgan_fast", "ops", "gpu_choice.json"), path)
    rows = [("bias_act lrelu", "reference", None, 2.0), ("bias_act lrelu", "triton", 1e-6, 0.5),
            ("bias_act lrelu", "cuda", 1e-6, 0.3),
            ("upfirdn2d up", "triton", 1e-6, 0.5), ("upfirdn2d up", "cuda", 1e-6, 0.3),
            ("upfirdn2d blur", "triton", 1e-6, 0.5), ("upfirdn2d blur", "cuda", 2e-4, 0.3),  # over the bound
            ("seg_head car", "triton", float("nan"), 1.0), ("seg_head car", "cuda", 5e-4, 4.0)]
    chosen = gpu.record_choice(str(path), rows, 1e-4, "test device")
    assert chosen == {"bias_act": "cuda", "upfirdn2d": "triton", "seg_head": "reference"}
    table = json.loads(path.read_text())
    assert table["ops"]["modulated_conv2d"] == "triton" and table["measured"].startswith("test device")


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present: main() would run the benchmark")
def test_gpu_bench_without_a_device_says_so(capsys):
    from factories import load_bench_script
    gpu = load_bench_script("gpu")
    assert gpu.main(["--check"]) == 1 and gpu.main([]) == 0
    assert capsys.readouterr().out.count("bench/gpu.py: no CUDA device here") == 2


def _graph_bench_inputs():
    from cuda_cases import random_members
    from factories import small_generator
    from editgan_fast.editor import Editor, EditVector
    from editgan_fast.models.segmenter import Segmenter
    g = small_generator(size=16, style_dim=8, channels={4: 8, 8: 6, 16: 4})
    members = random_members(sum(g.feature_channels), classes=4, count=2, h1=12, h2=6, device="cpu")
    editor = Editor(g, Segmenter(members, out_size=16), progress=False)
    return editor, editor.sample(0), EditVector(0.3 * torch.randn(g.num_ws, g.style_dim))


def test_the_graph_replay_rows_run_on_the_cpu_stand_in():
    """bench/gpu.py's "apply, CUDA graph replay vs eager" rows, with the graph stand-in and a plain timer: the
    code a GPU machine runs once gets exercised here first."""
    from factories import load_bench_script
    from editgan_fast.editor import graphs
    gpu = load_bench_script("gpu")
    editor, latent, vector = _graph_bench_inputs()
    calls = []
    timer = lambda fn, reps: (calls.append(reps), fn(), 2.0 if len(calls) == 1 else 0.5)[-1]
    rows = gpu.graph_rows(editor, latent, vector, 3, 4, "cpu", timer=timer, graph_type=graphs.EagerGraph)
    assert rows[0] == ("apply (Editor, eager), batch 3", "cpu", None, 2.0)
    stage, name, err, ms = rows[1]
    assert stage == "apply, CUDA graph replay vs eager, batch 3 (4.00x)" and name == "cpu" and ms == 0.5
    assert err <= 1e-6 and calls == [4, 4]
    assert editor.graphs is None  # turned off again: the graph's memory goes

    class Refused(graphs.EagerGraph):
        def __init__(self, fn, device):
            raise gpu.BackendUnavailable("apply could not be captured in a CUDA graph (test)")

    rows = gpu.graph_rows(editor, latent, vector, 1, 2, "cpu", timer=lambda fn, reps: 1.0, graph_type=Refused)
    assert "capture failed (apply could not be captured" in rows[1][0] and rows[1][2] != rows[1][2]  # NaN
    assert editor.graphs is None
