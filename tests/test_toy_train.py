"""The training script's pieces: the training-time modulated conv, the loss, the classifier conversion."""
import pytest
import torch

from editgan_fast import toyfaces, train
from editgan_fast.ops import setup_filter
from editgan_fast.ops.modulated_conv2d import modulated_conv2d_reference
from editgan_fast.ops.seg_head import mlp_reference


@pytest.mark.parametrize("up,kernel,skip,act", [(1, 3, False, "lrelu"), (2, 3, False, "lrelu"),
                                                (1, 1, True, "linear")])
def test_unfused_modconv_matches_reference(up, kernel, skip, act):
    gen = torch.Generator().manual_seed(up * 10 + kernel)
    d = dict(dtype=torch.float64)
    x = torch.randn(2, 5, 6, 6, generator=gen, **d)
    w = torch.randn(4, 5, kernel, kernel, generator=gen, **d)
    s = torch.randn(2, 5, generator=gen, **d)
    out_hw = 6 * up
    kw = dict(up=up, resample_filter=setup_filter([1, 3, 3, 1], dtype=torch.float64), act=act,
              bias=torch.randn(4, generator=gen, **d), demodulate=not skip,
              noise=torch.randn(2, 1, out_hw, out_hw, generator=gen, **d) if not skip else None,
              skip=torch.randn(2, 4, 3, 3, generator=gen, **d) if skip else None)
    ref = modulated_conv2d_reference(x, w, s, **kw)
    got = train.modulated_conv2d_unfused(x, w, s, **kw)
    assert got.shape == ref.shape
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-10)
    # Training differentiates through the weight and the styles (gradcheck on a smaller problem: 2 channels).
    side = 2 if skip else 3
    x, w, s = x[:1, :2, :side, :side], w[:2, :2].clone().requires_grad_(True), s[:1, :2].clone().requires_grad_(True)
    kw = dict(kw, bias=kw["bias"][:2], noise=None if skip else kw["noise"][:1, :, :side * up, :side * up],
              skip=kw["skip"][:1, :2, :1, :1] if skip else None)
    assert torch.autograd.gradcheck(lambda w_, s_: train.modulated_conv2d_unfused(x, w_, s_, **kw), (w, s))


def test_training_ops_swaps_and_restores_the_reference():
    from editgan_fast import backend
    with train.training_ops():
        assert backend.resolve("modulated_conv2d", torch.zeros(1)) is train.modulated_conv2d_unfused
    assert backend.resolve("modulated_conv2d", torch.zeros(1)) is not train.modulated_conv2d_unfused
    with backend.use_backend("reference"):
        assert backend.resolve("modulated_conv2d", torch.zeros(1)) is modulated_conv2d_reference


def test_image_loss_weights_small_parts_and_edges():
    z = toyfaces.sample_z(4, 24, seed=7)
    real, labels = toyfaces.render(z)
    assert train.image_loss(real, real, labels) == 0
    pupil = (labels == toyfaces.PUPIL)[:, None].expand_as(real)
    skin = (labels == toyfaces.SKIN)[:, None].expand_as(real)
    # The same total error costs more on pupils than on skin (class weight), per pixel changed.
    err_pupil = train.image_loss(real + 0.1 * pupil, real, labels) / pupil.sum()
    err_skin = train.image_loss(real + 0.1 * skin, real, labels) / skin.sum()
    assert err_pupil > 5 * err_skin


def test_pixel_classifier_converts_to_the_seg_head_member():
    torch.manual_seed(0)
    net = train.pixel_classifier(12, len(toyfaces.CLASSES))
    net.train()
    net(torch.randn(256, 12) * 3 + 1)  # move the BatchNorm running statistics off their defaults
    net.eval()
    x = torch.randn(50, 12)
    with torch.no_grad():
        torch.testing.assert_close(mlp_reference(train.as_pixel_mlp(net), x), net(x), rtol=1e-5, atol=1e-5)


def test_mean_iou():
    a = torch.tensor([[0, 0, 1, 1]])
    assert train.mean_iou(a, a, num_classes=3) == 1.0
    b = torch.tensor([[0, 1, 1, 1]])
    assert train.mean_iou(b, a, num_classes=3) == pytest.approx((1 / 2 + 2 / 3) / 2)


def test_a_few_training_steps_train_every_layer_and_lower_the_loss():
    from editgan_fast.models.generator import Generator
    torch.manual_seed(0)
    g = Generator(16, style_dim=24, n_mlp=2, channels={4: 16, 8: 16, 16: 8})
    before = {n: p.detach().clone() for n, p in g.named_parameters()}
    z = toyfaces.sample_z(16, 24, seed=9)
    real, labels = toyfaces.render(z, 16)
    with train.training_ops():
        loss0 = train.image_loss(g.synthesis(train.wplus_of(g, z)), real, labels).item()
        train.train_generator(5.0, batch=4, lr=5e-3, generator=g, max_steps=25, log_every=1000)
        loss1 = train.image_loss(g.synthesis(train.wplus_of(g, z)), real, labels).item()
    assert loss1 < 0.8 * loss0, (loss0, loss1)
    moved = [n for n, p in g.named_parameters() if not torch.equal(p, before[n])]
    assert all(n in moved for n in before if n.endswith("conv.weight")), sorted(set(before) - set(moved))
    assert any(n.startswith("style.") for n in moved)
