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
