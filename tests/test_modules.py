"""Generator, Segmenter and Editor as ordinary torch modules: state dict round trips, .to(), train/eval, no
surprise mutation of the caller's modules."""
import pytest
import torch

from editgan_fast import assets
from editgan_fast.backend import use_backend
from editgan_fast.editor import Editor, default_editor
from editgan_fast.errors import InputValueError
from editgan_fast.models.generator import Generator
from editgan_fast.models.segmenter import PixelClassifier, Segmenter, load_segmenter
from factories import small_generator
from seg_factories import StubGenerator, write_classifiers


@pytest.fixture
def stub():
    return StubGenerator(resolution=16, feature_channels=(8, 8, 6, 6, 4, 4))


def loaded(directory, stub, seed, **kw):
    directory.mkdir()
    return load_segmenter(write_classifiers(directory, 3, sum(stub.feature_channels), 5, seed=seed), stub, **kw)


# ------------------------------------------------------------------------------------------------ Segmenter
def test_segmenter_state_dict_round_trip(tmp_path, stub):
    a = loaded(tmp_path / "a", stub, seed=1, crop=(2, 14, 0, 16))
    b = loaded(tmp_path / "b", stub, seed=50, crop=(2, 14, 0, 16))
    sd = a.state_dict()
    assert len(sd) == 3 * 16  # per classifier: 3 Linear x 2, 2 BatchNorm x 5 (counters included)
    assert {k.split(".", 2)[2] for k in sd} == {k for k in PixelClassifier(36, 5).state_dict()}
    assert sum(p.numel() for p in a.parameters()) == sum(v.numel() for k, v in sd.items()
                                                          if k.endswith(("weight", "bias")))
    features = stub.random_features(2, seed=4)
    with use_backend("reference"):
        assert not torch.equal(a.logits(features), b.logits(features))
        b.load_state_dict(sd)
        assert torch.equal(a.logits(features), b.logits(features))
    # The file contents are the classifiers' state: EditGAN's keys, values as read.
    file_sd = torch.load(tmp_path / "a" / "model_1.pth", weights_only=True)["model_state_dict"]
    for k, v in a.classifiers[1].state_dict().items():
        assert torch.equal(v, file_sd["module." + k]), k


def test_segmenter_to_and_repr(tmp_path, stub):
    seg = loaded(tmp_path / "a", stub, seed=2)
    features = stub.random_features(1, seed=5)
    with use_backend("reference"):
        want = seg.logits(features)
        seg64 = seg.to(torch.float64)
        assert all(p.dtype == torch.float64 for p in seg64.parameters())
        assert all(t.dtype == torch.float64 for m in seg64.members for t in m.weights + m.bn_var)
        got = seg64.logits([f.double() for f in features])
    assert got.dtype == torch.float64
    torch.testing.assert_close(got.float(), want, rtol=1e-5, atol=1e-5)
    text = repr(seg)
    assert "out_size=(16, 16)" in text and "num_classes=5" in text and "BatchNorm1d(128" in text


@pytest.mark.parametrize("use_region", [False, "mask", "indices"])
def test_module_path_matches_the_op(tmp_path, stub, use_region):
    """The train-mode path (the classifiers as modules) with its BatchNorms switched to running statistics
    computes what the seg_head op computes."""
    seg = loaded(tmp_path / "a", stub, seed=3, crop=(3, 13, 1, 16)).double()
    features = stub.random_features(2, seed=6, dtype=torch.float64)
    mask = torch.rand(10, 15, generator=torch.Generator().manual_seed(0)) < 0.3
    region = {False: None, "mask": mask, "indices": mask.flatten().nonzero()[:, 0]}[use_region]
    with use_backend("reference"):
        want = seg.logits(features, region=region)
        seg.train()
        for m in seg.modules():
            if isinstance(m, torch.nn.BatchNorm1d):
                m.eval()
        got = seg.logits(features, region=region)
    assert got.shape == want.shape == (2, 5, *((int(mask.sum()),) if use_region else (10, 15)))
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_segmenter_trains_and_eval_sees_the_new_weights(tmp_path, stub):
    seg = loaded(tmp_path / "a", stub, seed=4).requires_grad_(True)
    features = stub.random_features(2, seed=7)
    labels = torch.randint(0, 5, (2, 16, 16), generator=torch.Generator().manual_seed(1))
    before = seg.classifiers[0].layers[2].running_mean.clone()
    seg.train()
    loss = torch.nn.functional.cross_entropy(seg(features), labels)
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in seg.parameters())
    assert not torch.equal(seg.classifiers[0].layers[2].running_mean, before)  # batch statistics were tracked
    with torch.no_grad():
        for p in seg.parameters():
            p -= 0.1 * p.grad
    seg.eval()
    fresh = Segmenter([PixelClassifier(36, 5) for _ in range(3)], 16)
    fresh.load_state_dict(seg.state_dict())
    with use_backend("reference"):
        torch.testing.assert_close(seg.logits(features), fresh.logits(features), rtol=0, atol=0)
    with torch.no_grad():
        trained = seg.logits(features)
    assert torch.nn.functional.cross_entropy(trained, labels) < loss


def test_members_must_agree(stub):
    with pytest.raises(InputValueError, match="classifier 1 maps 36 features to 4 classes"):
        Segmenter([PixelClassifier(36, 5), PixelClassifier(36, 4)], 16)
    with pytest.raises(InputValueError, match="PixelClassifier or a PixelMLP"):
        Segmenter([torch.nn.Linear(36, 5)], 16)


# ------------------------------------------------------------------------------------------------ Generator
def test_generator_state_dict_keeps_latent_avg_and_fingerprint():
    g = small_generator(seed=1)
    fingerprint = g.fingerprint()
    g.set_mean_latent(torch.randn(g.style_dim))
    assert g.fingerprint() == fingerprint  # the mean latent is not part of the identity vectors record
    other = small_generator(seed=2)
    assert other.fingerprint() != fingerprint
    other.load_state_dict(g.state_dict(), strict=True)
    assert other.fingerprint() == fingerprint
    torch.testing.assert_close(other.mean_latent(), g.latent_avg, rtol=0, atol=0)  # kept, not re-estimated
    # rosinality's g_ema has no latent_avg: still loads strictly, and the mean latent is estimated again.
    rosinality = {k: v for k, v in g.state_dict().items() if k != "latent_avg"}
    fresh = small_generator(seed=2)
    fresh.load_state_dict(rosinality, strict=True)
    assert not fresh.latent_avg.any()
    assert torch.isfinite(fresh.mean_latent()).all() and fresh.mean_latent().any()


def test_bundled_generator_fingerprint_is_unchanged():
    """Vector files made for the bundled model record this fingerprint; it must not move."""
    if not assets.available():
        pytest.skip("no bundled model")
    generator, _ = assets.load_bundled()
    assert generator.fingerprint() == "8e77ddba88339fac"


def test_generator_forward_takes_z_or_wplus():
    g = small_generator(seed=3)
    z = torch.randn(2, g.style_dim)
    with use_backend("reference"):
        w = g.truncate(g.mapping(z), 0.7)
        want_z = g.synthesis(w[:, None].expand(-1, g.num_ws, -1))
        wplus = torch.randn(2, g.num_ws, g.style_dim)
        torch.testing.assert_close(g(z, truncation=0.7), want_z, rtol=0, atol=0)
        torch.testing.assert_close(g(wplus), g.synthesis(wplus), rtol=0, atol=0)
        image, features = g(wplus, return_features=True)
    assert image.shape == (2, 3, 32, 32) and len(features) == 8
    with pytest.raises(InputValueError, match=r"z \[N, 16\] or w\+ \[N, 8, 16\], got \(16,\)"):
        g(torch.randn(16))


# ------------------------------------------------------------------------------------------------ Editor
def _editor_models(tmp_path):
    g = Generator(32, style_dim=16, n_mlp=2, channels={4: 16, 8: 12, 16: 10, 32: 8})  # training mode, grads on
    (tmp_path / "seg").mkdir()
    seg = load_segmenter(write_classifiers(tmp_path / "seg", 2, sum(g.feature_channels), 4), g).train()
    return g, seg


def test_editor_leaves_the_callers_modules_alone(tmp_path):
    g, seg = _editor_models(tmp_path)
    editor = Editor(g, seg)
    assert g.training and seg.training and all(p.requires_grad for p in g.parameters())
    assert not editor.generator.training and not editor.segmenter.training
    assert not any(p.requires_grad for p in editor.generator.parameters())
    # The copies share the weights' storage: nothing is duplicated.
    for a, b in zip(g.parameters(), editor.generator.parameters()):
        assert a.data_ptr() == b.data_ptr()
    latent = editor.sample(3)
    before = editor.render(latent)
    assert editor.to(torch.float64) is editor
    assert all(p.dtype == torch.float32 for p in g.parameters()) and seg.classifiers[0].layers[0].weight.dtype \
        == torch.float32
    assert editor.generator.input.input.dtype == torch.float64
    after = editor.render(latent)
    torch.testing.assert_close(after.image, before.image, rtol=1e-4, atol=1e-4)


def test_default_editors_are_independent():
    a, b = default_editor(trained=False), default_editor(trained=False)
    assert a.generator is not b.generator and a.segmenter is not b.segmenter
    latent = b.sample(0)
    before = b.render(latent)
    a.to(torch.float64)
    assert b.generator.input.input.dtype == torch.float32
    assert b.segmenter.members[0].weights[0].dtype == torch.float32
    assert torch.equal(b.render(latent).image, before.image)
    assert default_editor(trained=False).generator.input.input.dtype == torch.float32


def test_editors_over_one_segmenter_share_its_packed_views(tmp_path):
    """The backends cache packed classifier weights by the views' identity: editors' frozen copies (shared
    storage) keep the same views, a real deep copy or a moved copy gets its own."""
    import copy
    import pickle
    g, seg = _editor_models(tmp_path)
    seg.eval()  # how a loaded segmenter arrives
    a, b = Editor(g, seg), Editor(g, seg)
    assert a.segmenter.members is b.segmenter.members is seg.members
    deep = copy.deepcopy(seg)
    assert deep.members is not seg.members
    assert deep.members[0].weights[0].data_ptr() != seg.members[0].weights[0].data_ptr()
    assert pickle.loads(pickle.dumps(seg)).members[0].weights[0].data_ptr() != seg.members[0].weights[0].data_ptr()
    a.to(torch.float64)
    assert a.segmenter.members is not seg.members and b.segmenter.members is seg.members
