"""The bundled trained toy-face model: it loads through the public loaders, its checksums match, its segmenter
is as good as measured when it was trained, and a learned vector edits its target part."""
import json
import shutil

import pytest
import torch

from editgan_fast import assets, toyfaces, train
from editgan_fast.models.loaders import load_generator
from editgan_fast.models.segmenter import load_segmenter
from factories import load_bench_script

MIOU_MARGIN = 0.05  # fresh samples vs the 64 the manifest's value was measured on
FRESH_SEED = 5000   # disjoint from the segmenter's training (1000) and measuring (2000) seeds


def _load_bench():
    return load_bench_script("edit_quality")


@pytest.fixture(scope="module")
def bundled():
    return assets.load_bundled()


def test_manifest_lists_the_shipped_files_with_matching_checksums():
    manifest = assets.manifest()
    assert set(manifest["sha256"]) == {train.GENERATOR_FILE, *train.CLASSIFIER_FILES}
    files = assets.verified_files()
    assert sum(p.stat().st_size for p in files.values()) <= 20 * 2**20
    assert manifest["classes"] == list(toyfaces.CLASSES)


def test_public_loaders_read_the_shipped_files(bundled):
    generator, segmenter = bundled
    arch = assets.manifest()["arch"]
    assert generator.resolution == arch["size"] and generator.style_dim == arch["style_dim"]
    assert segmenter.num_classes == len(toyfaces.CLASSES)
    assert not any(p.requires_grad for p in generator.parameters())
    # The same files through the loaders directly (not via the assets helper).
    g2 = load_generator(assets.ASSETS / train.GENERATOR_FILE)
    s2 = load_segmenter([assets.ASSETS / f for f in train.CLASSIFIER_FILES], g2)
    assert g2.fingerprint() == generator.fingerprint() and len(s2.members) == len(train.CLASSIFIER_FILES)


def test_a_corrupted_file_is_refused(tmp_path, monkeypatch):
    for name in [assets.MANIFEST.name, *assets.manifest()["sha256"]]:
        shutil.copy(assets.ASSETS / name, tmp_path / name)
    broken = tmp_path / train.CLASSIFIER_FILES[0]
    data = bytearray(broken.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte
    broken.write_bytes(bytes(data))
    monkeypatch.setattr(assets, "ASSETS", tmp_path)
    monkeypatch.setattr(assets, "MANIFEST", tmp_path / assets.MANIFEST.name)
    with pytest.raises(assets.BundledModelError, match="sha256"):
        assets.verified_files()
    (tmp_path / assets.MANIFEST.name).unlink()
    with pytest.raises(assets.BundledModelError, match="missing"):
        assets.verified_files()


def test_generator_draws_the_renderers_faces(bundled):
    generator, _ = bundled
    z = toyfaces.sample_z(8, generator.style_dim, seed=FRESH_SEED)
    real, _ = toyfaces.render(z, generator.resolution)
    with torch.no_grad():
        fake = generator.synthesis(train.wplus_of(generator, z))
    # A trained model, not a random one: far closer to its own sample than to other samples.
    own = (fake - real).abs().mean()
    other = (fake - real.roll(1, 0)).abs().mean()
    assert own < 0.6 * other, (own, other)


def test_segmenter_miou_on_fresh_samples(bundled):
    generator, segmenter = bundled
    measured = assets.manifest()["segmenter_miou"]
    miou = train.measure_miou(generator, segmenter, n=16, seed=FRESH_SEED)
    assert miou >= measured - MIOU_MARGIN, (miou, measured)


def test_learned_vector_enlarges_the_mouth_of_fresh_samples():
    from editgan_fast.editor import Editor
    bench = _load_bench()
    editor = Editor(*assets.load_bundled(), progress=False)
    g = editor.generator
    train_latent = editor.sample(toyfaces.sample_z(1, g.style_dim, seed=bench.TRAIN_SEED)[0], truncation=1.0)
    labels, _ = editor.segment(train_latent)
    vector = editor.learn_vector(train_latent, bench.enlarge_mouth(labels[None])[0], steps=20)
    z = toyfaces.sample_z(3, g.style_dim, seed=FRESH_SEED)
    colours = toyfaces.class_colours(toyfaces.face_params(z)).float()
    for i, zi in enumerate(z):
        latent = editor.sample(zi, truncation=1.0)
        before, after = editor.render(latent), editor.apply(latent, {vector: 1.0})
        mouth = lambda lab: (lab == toyfaces.MOUTH).sum().item()
        assert mouth(after.labels) > mouth(before.labels), i
        # And in the image itself: more pixels of this face's mouth colour.
        truth = lambda img: bench.colour_labels(img[None], colours[i:i + 1])[0]
        assert mouth(truth(after.image)) > mouth(truth(before.image)), i


def test_benchmark_runs_at_reduced_size(tmp_path, capsys):
    bench = _load_bench()
    bench.main(["--reduced", "--out", str(tmp_path)])
    report = json.loads((tmp_path / "edit_quality.json").read_text())
    for picture in ("edit_quality.png", "generator_vs_renderer.png"):
        assert (tmp_path / picture).stat().st_size > 0, picture
    assert 0 < report["miou"] <= 1
    assert set(report["edits"]) == {e.name for e in bench.EDITS}
    for settings in report["edits"].values():
        for r in settings.values():
            assert 0 <= r["success"] <= min(r["success_pred"], r["success_truth"]) <= 1
            assert r["psnr"] > 10
    assert "segmenter mIoU" in capsys.readouterr().out
