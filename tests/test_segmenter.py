"""Segmenter and its loader against an explicit EditGAN-style computation with torch.nn modules."""

import pytest
import torch

from editgan_fast.backend import use_backend
from editgan_fast.models.errors import CheckpointError
from editgan_fast.models.segmenter import Segmenter, load_segmenter, save_classifier
from editgan_fast.ops.seg_head import MemoryBudgetExceeded
from seg_factories import StubGenerator, editgan_widths, feature_resolutions, write_classifier, write_classifiers


def editgan_classifier(path, num_classes, dim):
    """EditGAN's pixel_classifier layout, built here with torch.nn and loaded strictly, eval mode."""
    h1, h2 = editgan_widths(num_classes)
    net = torch.nn.Module()
    net.layers = torch.nn.Sequential(
        torch.nn.Linear(dim, h1), torch.nn.ReLU(), torch.nn.BatchNorm1d(h1),
        torch.nn.Linear(h1, h2), torch.nn.ReLU(), torch.nn.BatchNorm1d(h2),
        torch.nn.Linear(h2, num_classes))
    wrapped = torch.nn.DataParallel(net)  # what EditGAN saves: keys start with `module.`
    wrapped.load_state_dict(torch.load(path, weights_only=True)["model_state_dict"], strict=True)
    return net.eval().double()


def editgan_logits(paths, features, out_res, num_classes, mode, crop_rows=None):
    """Materialize-and-classify as EditGAN does: nn.Upsample(scale_factor), concat, crop rows, mean logits."""
    ups = [torch.nn.Upsample(scale_factor=out_res / f.shape[-1], mode=mode)(f.double()) for f in features]
    stack = torch.cat(ups, 1)
    if crop_rows is not None:
        stack = stack[:, :, crop_rows[0]:crop_rows[1]]
    n, dim, h, w = stack.shape
    pixels = stack.permute(0, 2, 3, 1).reshape(-1, dim)
    nets = [editgan_classifier(p, num_classes, dim) for p in paths]
    with torch.no_grad():
        mean = torch.stack([net.layers(pixels) for net in nets]).mean(0)
    return mean.reshape(n, h, w, num_classes).permute(0, 3, 1, 2)


@pytest.fixture
def gen():
    return StubGenerator(resolution=16, feature_channels=(8, 8, 6, 6, 4, 4))


@pytest.mark.parametrize("num_classes", [5, 33])  # both of EditGAN's layouts (< 32 and >= 32 classes)
@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
def test_logits_match_editgan(tmp_path, gen, num_classes, mode):
    dim = sum(gen.feature_channels)
    paths = write_classifiers(tmp_path, 3, dim, num_classes, seed=11)
    seg = load_segmenter(paths, gen, upsample=mode).double()
    features = gen.random_features(2, seed=1, dtype=torch.float64)
    want = editgan_logits(paths, features, gen.resolution, num_classes, mode)
    with use_backend("reference"):
        got = seg.logits(features)
    assert got.shape == (2, num_classes, 16, 16)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    # The same file loaded in float32 on the default backend: float32 rounding only.
    seg32 = load_segmenter(paths, gen, upsample=mode)
    got32 = seg32.logits([f.float() for f in features])
    torch.testing.assert_close(got32.double(), want, rtol=1e-4, atol=1e-4)


def test_mode_argument_overrides_default(tmp_path, gen):
    paths = write_classifiers(tmp_path, 2, sum(gen.feature_channels), 4, seed=3)
    seg = load_segmenter(paths, gen).double()
    features = gen.random_features(1, seed=2, dtype=torch.float64)
    with use_backend("reference"):
        got = seg.logits(features, mode="nearest")
    torch.testing.assert_close(got, editgan_logits(paths, features, 16, 4, "nearest"), rtol=1e-10, atol=1e-10)


def test_crop_region_and_predict(tmp_path, gen):
    paths = write_classifiers(tmp_path, 2, sum(gen.feature_channels), 6, seed=5)
    seg = load_segmenter(paths, gen, crop=(2, 14, 0, 16)).double()
    assert seg.label_size == (12, 16) and seg.out_size == (16, 16) and seg.num_classes == 6
    features = gen.random_features(2, seed=4, dtype=torch.float64)
    want = editgan_logits(paths, features, 16, 6, "bilinear", crop_rows=(2, 14))
    region = torch.rand(12, 16, generator=torch.Generator().manual_seed(0)) < 0.3
    with use_backend("reference"):
        full = seg.logits(features)
        part = seg.logits(features, region=region)
        labels = seg.predict(features)
    torch.testing.assert_close(full, want, rtol=1e-10, atol=1e-10)
    assert part.shape == (2, 6, int(region.sum()))
    torch.testing.assert_close(part, want[:, :, region], rtol=1e-10, atol=1e-10)
    assert labels.dtype == torch.int64 and labels.shape == (2, 12, 16)
    assert torch.equal(labels, want.argmax(1))
    assert len(labels.unique()) > 1  # random weights give a real segmentation, not a constant map


def test_reference_refuses_over_memory_budget(tmp_path, gen, monkeypatch):
    seg = load_segmenter(write_classifiers(tmp_path, 1, sum(gen.feature_channels), 3), gen)
    features = gen.random_features(1, seed=0)
    monkeypatch.setenv("EDITGAN_FAST_REFERENCE_MEMORY_GB", "1e-9")
    with use_backend("reference"), pytest.raises(MemoryBudgetExceeded, match="EDITGAN_FAST_REFERENCE_MEMORY_GB"):
        seg.logits(features)


def test_save_round_trip_in_editgan_format(tmp_path, gen):
    (tmp_path / "src").mkdir()
    src = write_classifiers(tmp_path / "src", 2, sum(gen.feature_channels), 7, seed=9)
    seg = load_segmenter(src, gen)
    saved = seg.save(tmp_path / "out")
    for original, copy in zip(src, saved):
        a = torch.load(original, weights_only=True)["model_state_dict"]
        b = torch.load(copy, weights_only=True)["model_state_dict"]
        assert b.keys() == a.keys()  # `module.` prefix and every EditGAN key, num_batches_tracked included
        for k in a:
            if not k.endswith("num_batches_tracked"):
                assert torch.equal(a[k], b[k]), k
    again = load_segmenter(tmp_path / "out", gen)  # a directory: its *.pth files, sorted
    features = gen.random_features(1, seed=3)
    with use_backend("reference"):
        torch.testing.assert_close(again.logits(features), seg.logits(features), rtol=0, atol=0)


def test_loads_files_without_dataparallel_prefix(tmp_path, gen):
    dim = sum(gen.feature_channels)
    plain = write_classifier(tmp_path / "plain.pth", dim, 4, seed=1, data_parallel=False)
    wrapped = write_classifier(tmp_path / "wrapped.pth", dim, 4, seed=1, data_parallel=True)
    a, b = load_segmenter([plain], gen), load_segmenter([wrapped], gen)
    features = gen.random_features(1, seed=0)
    with use_backend("reference"):
        assert torch.equal(a.logits(features), b.logits(features))


def test_to_moves_members(tmp_path, gen):
    seg = load_segmenter(write_classifiers(tmp_path, 1, sum(gen.feature_channels), 3), gen)
    assert seg.members[0].weights[0].dtype == torch.float32
    seg.double()
    assert all(t.dtype == torch.float64 for t in seg.members[0].weights + seg.members[0].bn_var)


def test_class_count_mismatch_names_the_file(tmp_path, gen):
    dim = sum(gen.feature_channels)
    a = write_classifier(tmp_path / "a.pth", dim, 5, seed=0)
    b = write_classifier(tmp_path / "b.pth", dim, 6, seed=1)
    with pytest.raises(CheckpointError, match=r"b\.pth has 6 classes.*a\.pth has 5"):
        load_segmenter([a, b], gen)


def test_wrong_in_features(tmp_path, gen):
    path = write_classifier(tmp_path / "c.pth", sum(gen.feature_channels) + 1, 5, seed=0)
    with pytest.raises(CheckpointError, match=r"c\.pth takes 37 input features.*36 channels"):
        load_segmenter([path], gen)


def test_missing_and_misshaped_keys(tmp_path, gen):
    dim = sum(gen.feature_channels)
    path = write_classifier(tmp_path / "m.pth", dim, 5, seed=0)
    sd = torch.load(path, weights_only=True)["model_state_dict"]
    del sd["module.layers.5.running_var"]
    torch.save({"model_state_dict": sd}, tmp_path / "missing.pth")
    with pytest.raises(CheckpointError, match=r"missing\.pth.*missing keys \['layers\.5\.running_var'\]"):
        load_segmenter([tmp_path / "missing.pth"], gen)
    sd = torch.load(path, weights_only=True)["model_state_dict"]
    sd["module.layers.3.weight"] = sd["module.layers.3.weight"][:, :-1]
    torch.save({"model_state_dict": sd}, tmp_path / "shape.pth")
    with pytest.raises(CheckpointError, match=r"shape\.pth: layers\.3\.weight has shape \(32, 127\)"):
        load_segmenter([tmp_path / "shape.pth"], gen)


class NotATensor:
    pass


def test_non_torch_and_unsafe_files(tmp_path, gen):
    text = tmp_path / "notes.pth"
    text.write_text("not a checkpoint\n")
    with pytest.raises(CheckpointError, match=r"notes\.pth is not a PyTorch checkpoint"):
        load_segmenter([text], gen)
    # A pickle that would construct an arbitrary object must be refused, not executed.
    unsafe = tmp_path / "unsafe.pth"
    torch.save({"model_state_dict": {}, "payload": NotATensor()}, unsafe)
    with pytest.raises(CheckpointError, match=r"unsafe\.pth is not a PyTorch checkpoint"):
        load_segmenter([unsafe], gen)
    with pytest.raises(CheckpointError, match=r"absent\.pth does not exist"):
        load_segmenter([tmp_path / "absent.pth"], gen)


def test_segmenter_argument_checks(tmp_path, gen):
    seg = load_segmenter(write_classifiers(tmp_path, 1, sum(gen.feature_channels), 3), gen)
    with pytest.raises(ValueError, match="crop"):
        Segmenter(seg.members, 16, crop=(0, 20, 0, 16))
    with pytest.raises(ValueError, match="upsample mode"):
        Segmenter(seg.members, 16, mode="bicubic")
    with pytest.raises(ValueError, match="feature channels"):
        seg.logits(gen.random_features(1, seed=0)[:-1])


def test_feature_resolutions_follow_editgan_order():
    assert feature_resolutions(16) == [4, 4, 8, 8, 16, 16]
    assert len(feature_resolutions(512)) == 16  # EditGAN's 16 upsamplers for the 512 px car model


def test_save_classifier_without_prefix(tmp_path, gen):
    seg = load_segmenter(write_classifiers(tmp_path, 1, sum(gen.feature_channels), 4, seed=2), gen)
    save_classifier(seg.members[0], tmp_path / "plain.out", data_parallel=False)
    keys = torch.load(tmp_path / "plain.out", weights_only=True)["model_state_dict"].keys()
    assert "layers.0.weight" in keys and not any(k.startswith("module.") for k in keys)
    again = load_segmenter([tmp_path / "plain.out"], gen)
    for a, b in zip(seg.members[0].weights + seg.members[0].bn_var, again.members[0].weights + again.members[0].bn_var):
        assert torch.equal(a, b)


def test_with_a_real_generator(tmp_path):
    """The gen helper's small generator: its feature maps, through load_segmenter, match EditGAN's computation."""
    from factories import small_generator
    g = small_generator()
    paths = write_classifiers(tmp_path, 2, sum(g.feature_channels), 5, seed=21)
    seg = load_segmenter(paths, g, crop=(4, 28, 0, 32))
    assert seg.out_size == (g.resolution, g.resolution) and seg.label_size == (24, 32)
    w = torch.randn(2, g.num_ws, g.style_dim, generator=torch.Generator().manual_seed(0))
    _, features = g.synthesis(w, return_features=True)
    want = editgan_logits(paths, features, g.resolution, 5, "bilinear", crop_rows=(4, 28))
    torch.testing.assert_close(seg.logits(features).double(), want, rtol=1e-4, atol=1e-4)
    assert torch.equal(seg.predict(features), seg.logits(features).argmax(1))
