"""`editgan-fast` on the embedded default model: every command end to end, and bad input as one clear line."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from editgan_fast import io
from editgan_fast.cli import main
from editgan_fast.editor import EditVector, default_editor
from editgan_fast.editor.demo import paint_enlarge

# The commands run on the default model (the bundled trained one once it ships, else the random one).
_DEFAULT = default_editor(progress=False)
R, NUM_WS, DIM = _DEFAULT.generator.resolution, _DEFAULT.generator.num_ws, _DEFAULT.generator.style_dim


def run(capsys, *argv):
    code = main([*map(str, argv), "--quiet", "--json"])
    out, err = capsys.readouterr()
    return code, (json.loads(out) if code == 0 else None), err


def fails(capsys, *argv, match):
    code = main([*map(str, argv), "--quiet"])
    out, err = capsys.readouterr()
    assert code == 2 and "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("editgan-fast: error: ") and match in lines[0], err


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("cli")


def test_generate_segment_learn_apply_refine(capsys, workdir):
    code, out, _ = run(capsys, "generate", "--seed", 3, "--out", workdir / "g.png", "--latent-out",
                       workdir / "g.npy", "--labels-out", workdir / "g_labels.png")
    assert code == 0 and Image.open(out["image"]).size == (R, R)
    code, out, _ = run(capsys, "segment", "--latent", workdir / "g.npy", "--out", workdir / "s.png")
    labels = io.load_labels(out["labels"])
    assert torch.equal(labels, io.load_labels(workdir / "g_labels.png"))
    assert sum(out["class_pixels"].values()) == R * R

    edited, grown = paint_enlarge(labels, iterations=2)
    io.save_labels(workdir / "edited.png", edited)
    code, out, _ = run(capsys, "learn", "--latent", workdir / "g.npy", "--labels", workdir / "edited.png",
                       "--steps", 3, "--name", "grow", "--out", workdir / "v.npz")
    assert code == 0 and out["name"] == "grow" and out["classes"] == [grown]
    assert EditVector.load(workdir / "v.npz").classes == (grown,)

    code, out, _ = run(capsys, "apply", "--seed", 4, "--vector", workdir / "v.npz", "--scales", "0,1,2",
                       "--out", workdir / "a.png", "--labels-out", workdir / "a_labels.png")
    assert code == 0 and out["count"] == 3 and Image.open(out["image"]).size == (3 * R, R)
    assert io.load_labels(out["labels"]).shape == (R, 3 * R)

    code, out, _ = run(capsys, "refine", "--seed", 4, "--vector", workdir / "v.npz", "--steps", 2,
                       "--out", workdir / "r.npy", "--image-out", workdir / "r.png")
    assert code == 0 and {"ce", "mse", "total"} <= set(out["first_loss"])
    assert Image.open(out["image"]).size == (R, R)
    assert io.load_latent(workdir / "r.npy", NUM_WS, DIM).shape == (NUM_WS, DIM)


def test_embed_and_bench(capsys, workdir):
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(workdir / "x.png")
    code, out, err = run(capsys, "embed", workdir / "x.png", "--steps", 2, "--out", workdir / "e.npy")
    assert code == 0 and f"resized 40x40 to {R}x{R}" in err
    assert np.load(out["latent"]).shape == (NUM_WS, DIM)
    code, out, _ = run(capsys, "bench", "--repeats", 1)
    assert code == 0 and all(v > 0 for v in out["latency_ms"].values())
    assert "apply, batch of 8 scales" in out["latency_ms"]


def test_bad_input_is_one_clear_line(capsys, workdir):
    run(capsys, "generate", "--seed", 0, "--out", workdir / "b.png", "--latent-out", workdir / "b.npy",
        "--labels-out", workdir / "b_labels.png")
    fails(capsys, "segment", "--latent", workdir / "missing.npy", "--out", workdir / "s.png", match="does not exist")
    labels = io.load_labels(workdir / "b_labels.png")
    io.save_labels(workdir / "small.png", labels[:R // 2, :R // 2])
    fails(capsys, "learn", "--latent", workdir / "b.npy", "--labels", workdir / "small.png", "--out",
          workdir / "v.npz", match=f"{R // 2}x{R // 2}")
    unknown = labels.clone()
    unknown[5, 5] = 30
    io.save_labels(workdir / "unknown.png", unknown)
    fails(capsys, "learn", "--latent", workdir / "b.npy", "--labels", workdir / "unknown.png", "--out",
          workdir / "v.npz", match="unknown class id(s) [30]")
    EditVector(torch.randn(NUM_WS, DIM), (1,), "foreign", "ffffffffffffffff").save(workdir / "foreign.npz")
    fails(capsys, "apply", "--latent", workdir / "b.npy", "--vector", workdir / "foreign.npz", "--out",
          workdir / "a.png", match="made for generator")
    np.save(workdir / "wrong.npy", np.zeros((3, 4), np.float32))
    fails(capsys, "apply", "--latent", workdir / "wrong.npy", "--vector", workdir / "foreign.npz", "--out",
          workdir / "a.png", match=f"[{NUM_WS}, {DIM}]")
    fails(capsys, "generate", "--checkpoint", workdir / "nothing.pt", "--segmenter", workdir, "--out",
          workdir / "x.png", match="nothing.pt")
    EditVector(torch.randn(NUM_WS, DIM), (1,), "ours", _DEFAULT.fingerprint).save(workdir / "ours.npz")
    fails(capsys, "apply", "--seed", 0, "--vector", workdir / "ours.npz", "--scales", "1,x", "--out",
          workdir / "a.png", match="comma-separated numbers")
