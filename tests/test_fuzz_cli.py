"""The CLI's argument space (Hypothesis) and its error path: every run exits 0, or prints one
`editgan-fast: error: ...` line (no traceback) and exits 2; an output file is either its previous contents or a
complete new file. Ctrl-C during an optimization exits 130 after saving the best result so far."""
import contextlib
import io as pyio
import os

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

import fuzzing
from editgan_fast import io
from editgan_fast.cli import main
from editgan_fast.editor import EditVector, VectorLibrary, random_editor

PREVIOUS = b"previous contents of this output file"
OUTPUTS = {"out.png": "image", "out.npy": "latent", "out.safetensors": "vectors", "labels_out.png": "labels",
           "latent_out.npy": "latent", "image_out.png": "image"}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Valid and broken inputs for the random default model, in one directory."""
    d = tmp_path_factory.mktemp("cli")
    editor = random_editor(0, progress=False)
    g = editor.generator
    latent = editor.sample(1)
    io.save_latent(d / "w.npy", latent.wplus)
    labels, _ = editor.segment(latent)
    edited = labels.clone()
    edited[40:80, 40:80] = 3
    io.save_labels(d / "edited.png", edited)
    EditVector(0.3 * torch.randn(g.num_ws, g.style_dim), (3,), "v", editor.fingerprint).save(d / "v.safetensors")
    EditVector(0.3 * torch.randn(g.num_ws, g.style_dim), (3,), "v", "ffffffffffffffff").save(d / "foreign.npz")
    np.save(d / "editgan.npy", np.random.default_rng(0).standard_normal((1, g.num_ws, g.style_dim), np.float32))
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (3, 300, 3), np.uint8)).save(d / "strip.png")
    (d / "empty.npy").write_bytes(b"")
    (d / "text.pt").write_text("not a checkpoint")
    np.save(d / "nan.npy", np.full((g.num_ws, g.style_dim), np.nan, np.float32))
    (d / "adir").mkdir()
    return d


def _paths(d):
    names = ["w.npy", "edited.png", "v.safetensors", "foreign.npz", "editgan.npy", "strip.png", "empty.npy",
             "text.pt", "nan.npy", "adir", "missing.npz", "w.npy/inside"]
    return st.sampled_from([str(d / n) for n in names])


NUMBERS = st.sampled_from(["0", "1", "-1", "0.5", "nan", "inf", "-inf", "1e308", "x", "", "99999999999999999999",
                           "2", "3"])


@st.composite
def argvs(draw, d):
    command = draw(st.sampled_from(["generate", "segment", "embed", "learn", "apply", "refine"]))
    argv = [command, "--random-model"]
    if command == "embed":
        argv.append(draw(_paths(d)))
    options = {
        "--seed": NUMBERS, "--truncation": NUMBERS, "--seed-style": st.sampled_from(["torch", "ada", "numpy"]),
        "--latent": _paths(d), "--labels": _paths(d), "--vector": _paths(d),
        "--scales": st.sampled_from(["1", "0,1,2", "nan", "1e30", ",", "1,x", "-3,3"] + ["0," * 40 + "1"]),
        "--classes": st.sampled_from(["1", "3", "-1", "999", "x"]), "--region": st.sampled_from(["changed", "bad"]),
        "--steps": st.sampled_from(["0", "1", "2", "-1", "x", "1e3"]),
        "--device": st.sampled_from(["cpu", "cuda", "cuda:7", "tpu", "", "meta"]),
        "--backend": st.sampled_from(["auto", "reference", "cpu", "quantum"]),
        "--checkpoint": _paths(d), "--segmenter": _paths(d), "--name": st.sampled_from(["e", "", "x" * 300]),
    }
    for option in draw(st.lists(st.sampled_from(sorted(options)), max_size=5, unique=True)):
        argv += [option, draw(options[option])]
    required_vector = command in ("apply", "refine") and "--vector" not in argv
    if required_vector and draw(st.booleans()):
        argv += ["--vector", str(d / "v.safetensors")]
    if command == "learn" and "--labels" not in argv and draw(st.booleans()):
        argv += ["--labels", str(d / "edited.png")]
    if command in ("embed", "learn", "refine") and "--steps" not in argv:
        argv += ["--steps", "1"]
    out = {"generate": "out.png", "segment": "out.png", "embed": "out.npy", "learn": "out.safetensors",
           "apply": "out.png", "refine": "out.npy"}[command]
    argv += ["--out", str(d / "outs" / out)]
    extra = {"generate": ["--latent-out", "--labels-out"], "apply": ["--labels-out"], "embed": ["--image-out"],
             "refine": ["--image-out"]}.get(command, [])
    for option in draw(st.lists(st.sampled_from(extra), unique=True)) if extra else []:
        argv += [option, str(d / "outs" / (option[2:].replace("-", "_") + (".npy" if "latent" in option else ".png")))]
    return argv


def _complete(path, kind) -> bool:
    try:
        if kind == "image":
            io.image_to_tensor(path)
        elif kind == "labels":
            io.load_labels(path)
        elif kind == "latent":
            io.load_npy(path)
        else:
            VectorLibrary.load(path)
        return True
    except Exception:
        return False


@pytest.fixture(scope="module", autouse=True)
def _report():
    yield
    fuzzing.report()


@fuzzing.SETTINGS
@given(data=st.data())
def test_cli_argument_fuzz(files, data):
    argv = data.draw(argvs(files))
    outs = files / "outs"
    outs.mkdir(exist_ok=True)
    for name in OUTPUTS:
        (outs / name).write_bytes(PREVIOUS)
    stdout, stderr = pyio.StringIO(), pyio.StringIO()
    peak = fuzzing.rss_peak_mib()
    fuzzing.COUNTS["CLI cases"] += 1
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            code = main(argv + ["--quiet"])
        except SystemExit as e:  # argparse: usage errors (our one line) and --help
            code = e.code
    lines = stderr.getvalue().strip().splitlines()
    if code == 0:
        fuzzing.COUNTS["CLI ran"] += 1
    elif code == 2 and lines and lines[-1].startswith("editgan-fast: error: ") and \
            sum(line.startswith("editgan-fast: error") for line in lines) == 1 and "Traceback" not in stderr.getvalue():
        fuzzing.COUNTS["CLI clean errors"] += 1
    else:
        fuzzing.COUNTS["CLI tracebacks"] += 1
        pytest.fail(f"{argv}: exit {code}, stderr {stderr.getvalue()!r}")
    lost = [n for n, kind in OUTPUTS.items() if (outs / n).read_bytes() != PREVIOUS and not _complete(outs / n, kind)]
    fuzzing.COUNTS["files lost"] += len(lost)
    assert not lost, f"{argv}: half-written {lost}"
    if fuzzing.rss_peak_mib() - peak > fuzzing.PEAK_GROWTH_MIB:
        fuzzing.COUNTS["blow-ups"] += 1
        pytest.fail(f"{argv}: peak memory grew by {fuzzing.rss_peak_mib() - peak:.0f} MiB")


@pytest.mark.parametrize("command", ["embed", "learn", "refine"])
def test_ctrl_c_exits_130_after_saving_the_best_so_far(files, monkeypatch, capsys, command):
    """Ctrl-C arrives during the third optimizer step: the command saves the best w+ so far and exits 130."""
    steps = {"n": 0}
    real_step = torch.optim.Adam.step

    def interrupted_step(self, *args, **kwargs):
        steps["n"] += 1
        if steps["n"] == 3:
            raise KeyboardInterrupt
        return real_step(self, *args, **kwargs)
    monkeypatch.setattr(torch.optim.Adam, "step", interrupted_step)
    out = files / f"interrupted_{command}{'.safetensors' if command == 'learn' else '.npy'}"
    argv = {"embed": ["embed", str(files / "strip.png")],
            "learn": ["learn", "--latent", str(files / "w.npy"), "--labels", str(files / "edited.png")],
            "refine": ["refine", "--latent", str(files / "w.npy"), "--vector", str(files / "v.safetensors")]}[command]
    code = main(argv + ["--random-model", "--steps", "10", "--out", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert code == 130 and "interrupted at step 2" in err and str(out) in err and "Traceback" not in err
    editor = random_editor(0, progress=False)
    if command == "learn":
        vector = EditVector.load(out, editor.generator)
        assert vector.classes == (3,) and vector.delta.abs().sum() > 0   # two Adam steps were taken
    else:
        wplus = io.load_latent(out, editor.generator.num_ws, editor.generator.style_dim)
        assert torch.isfinite(wplus).all()


def test_bundled_model_missing_says_how_to_restore(monkeypatch, capsys, tmp_path):
    from editgan_fast import assets
    from editgan_fast.editor import default as default_module
    monkeypatch.setattr(assets, "MANIFEST", tmp_path / "manifest.json")
    default_module._bundled_models.cache_clear()
    try:
        code = main(["generate", "--out", str(tmp_path / "g.png"), "--quiet"])
    finally:
        default_module._bundled_models.cache_clear()
    err = capsys.readouterr().err
    assert code == 2 and "git checkout -- editgan_fast/assets" in err and "--random-model" in err
    assert not os.path.exists(tmp_path / "g.png")
