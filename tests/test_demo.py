"""`make demo`'s command, at reduced steps, in a temporary folder: every artifact is written and readable."""
import json

from PIL import Image

from editgan_fast import io
from editgan_fast.cli import main
from editgan_fast.editor import EditVector, default_editor


def test_demo_runs_end_to_end(tmp_path, capsys):
    editor = default_editor(progress=False)  # what the demo runs on: bundled trained weights, else random
    g, classes = editor.generator, editor.num_classes
    r = g.resolution
    out = tmp_path / "out"
    assert main(["demo", "--out", str(out), "--steps", "3", "--refine-steps", "2", "--repeats", "1",
                 "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "median ms" in printed and "apply, batch of 8 scales" in printed
    for name in ("original.png", "learned.png", "refined.png", "apply_seed1.png"):
        assert Image.open(out / name).size[1] == r
    assert Image.open(out / "apply_seed2.png").size == (4 * r, r)
    for name in ("original_labels.png", "edited_labels.png", "learned_labels.png", "refined_labels.png"):
        assert io.load_labels(out / name, num_classes=classes).shape == (r, r)
    summary = json.loads((out / "summary.json").read_text())
    vector = EditVector.load(out / "vector.npz")
    assert vector.name == f"enlarge_class_{summary['grown_class']}" and vector.num_ws == g.num_ws
    table = (out / "latency.md").read_text()
    assert "median ms" in table and "apply, 1 scale (cached styles)" in table
    assert set(summary["latency_ms"]) == {line.split("|")[1].strip() for line in table.splitlines()[2:]}
