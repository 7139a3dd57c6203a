"""torch.func over the cpu backend: `grad` of each public op equals the reference backend's gradient (float64
exactly up to rounding, float32 within a stated bound), `vmap` equals a loop over the batch (with and without
gradients), and `grad` of the editor's objective through synthesis and segmentation equals eager autograd."""
import pytest
import torch
from torch.func import grad, vmap

from editgan_fast import backend
from editgan_fast.editor import default_editor
from editgan_fast.editor.demo import paint_enlarge
from editgan_fast.ops import bias_act, modulated_conv2d, seg_head, upfirdn2d
from editgan_fast.ops.seg_head import PixelMLP
from editgan_fast.ops.upfirdn2d import setup_filter
from factories import small_generator

pytestmark = pytest.mark.skipif(not backend.available("cpu"), reason="native extension not built")


@pytest.fixture(autouse=True)
def no_vmap_fallback():
    """vmap must use the native kernels' rules: PyTorch's per-sample fallback loop raises instead."""
    torch._C._functorch._set_vmap_fallback_enabled(False)
    yield
    torch._C._functorch._set_vmap_fallback_enabled(True)


@pytest.fixture(autouse=True)
def small_winograd_layers(monkeypatch):
    """The *_winograd cases' 64-channel 16 px layers take the Winograd kernels (by default those start at 32 px
    for up=1 and 64 px for up=2 below 512 channels, sizes too slow for these float64 tests)."""
    from editgan_fast.ops import _cpu_layers
    monkeypatch.setattr(_cpu_layers, "WINOGRAD_MIN_PIXELS", {1: 256, 2: 256})


def _rand(*shape, seed, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _member(dim, classes, seed):
    r = lambda *s, k: _rand(*s, seed=seed * 20 + k)
    return PixelMLP(weights=(r(8, dim, k=0), r(6, 8, k=1), r(classes, 6, k=2)), biases=(r(8, k=3), r(6, k=4),
                    r(classes, k=5)), bn_mean=(r(8, k=6), r(6, k=7)), bn_var=(r(8, k=8).abs() + 0.5,
                    r(6, k=9).abs() + 0.5), bn_weight=(r(8, k=10), r(6, k=11)), bn_bias=(r(8, k=12), r(6, k=13)))


_F = setup_filter([1, 3, 3, 1], dtype=torch.float64)
_MEMBERS = [_member(5, 4, seed) for seed in (2, 3)]
_REGION = _rand(6, 8, seed=9) > 0


def _case(name):
    """(op of the differentiated/vmapped tensors, their values in float64): frozen weights are closed over."""
    if name.startswith("modulated_conv2d"):
        winograd = name.endswith("winograd")  # enough channels and pixels for the Winograd kernels
        c, size = (64, 16) if winograd else (5, 6)
        up = 2 if "up2" in name else 1
        torgb = name.endswith("torgb")
        weight = _rand(3 if torgb else c, c, 1 if torgb else 3, 1 if torgb else 3, seed=1) / c ** 0.5
        noise, bias = _rand(1, 1, size * up, size * up, seed=3), _rand(weight.shape[0], seed=4)
        tensors = [_rand(2, c, size, size, seed=0), _rand(2, c, seed=2) + 1]
        if torgb:
            tensors.append(_rand(2, 3, size // 2, size // 2, seed=5))

        def op(x, styles, skip=None):
            return modulated_conv2d(x, weight, styles, demodulate=not torgb, up=up, resample_filter=_F,
                                    noise=None if torgb else noise, bias=bias, act="linear" if torgb else "lrelu",
                                    skip=skip)
        return op, tensors
    if name == "bias_act":
        b = _rand(3, seed=1)
        return (lambda x: bias_act(x, b, act="lrelu", clamp=0.9)), [_rand(2, 3, 4, 5, seed=0)]
    if name.startswith("upfirdn2d"):
        up, down = (2, 1) if name.endswith("up") else (1, 2)
        return (lambda x: upfirdn2d(x, _F, up=up, down=down, padding=(2, 1, 2, 1), gain=up * up)), \
            [_rand(2, 3, 7, 6, seed=0)]
    if name.startswith("seg_head"):
        region = _REGION if name.endswith("region") else None
        return (lambda a, b: seg_head([a, b], _MEMBERS, 8, crop=(1, 7, 0, 8), region=region)), \
            [_rand(2, 3, 4, 4, seed=0), _rand(2, 2, 8, 8, seed=1)]
    raise KeyError(name)


CASES = ["modulated_conv2d", "modulated_conv2d_up2", "modulated_conv2d_torgb", "modulated_conv2d_winograd",
         "modulated_conv2d_up2_winograd", "bias_act", "upfirdn2d_up", "upfirdn2d_down", "seg_head",
         "seg_head_region"]


def _loss(op, cotangent):
    return lambda *tensors: (op(*tensors) * cotangent).sum()


def _grads(name, dtype, backend_name):
    op, tensors = _case(name)
    tensors = [t.to(dtype) for t in tensors]
    with backend.use_backend("reference"):
        cotangent = _rand(*op(*tensors).shape, seed=7).to(dtype)  # the same values in either dtype
    with backend.use_backend(backend_name):
        return grad(_loss(op, cotangent), argnums=tuple(range(len(tensors))))(*tensors)


@pytest.mark.parametrize("name", CASES)
def test_grad_equals_the_reference_gradient_float64(name):
    for got, want in zip(_grads(name, torch.float64, "cpu"), _grads(name, torch.float64, "reference")):
        torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-9)


@pytest.mark.parametrize("name", ["modulated_conv2d_up2", "modulated_conv2d_torgb"])
def test_constants_built_under_grad_serve_later_eager_calls(name):
    """The FIR taps (the blur after up=2, the skip's upsampling) are memoized; the first built inside grad must
    not be grad's (dead) wrapper."""
    from editgan_fast.ops import _cpu_layers
    _cpu_layers._blur_taps.cache_clear()
    _grads(name, torch.float64, "cpu")
    constant = _cpu_layers._blur_taps(tuple(_F.tolist()), torch.float64)
    assert not torch._C._functorch.is_functorch_wrapped_tensor(constant)
    constant.data_ptr()  # a dead wrapper has no storage
    op, tensors = _case(name)
    with backend.use_backend("cpu"), torch.no_grad():
        got = op(*tensors)
    with backend.use_backend("reference"):
        want = op(*tensors)
    torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-9)


@pytest.mark.parametrize("name", CASES)
def test_grad_float32_within_its_bound(name):
    """fp32 on the cpu backend against the float64 reference: max error <= 1e-4 of the gradient's largest entry
    (measured <= 4.2e-6, the Winograd F(4x4, 3x3) case; the others <= 2.3e-7)."""
    for got, want in zip(_grads(name, torch.float32, "cpu"), _grads(name, torch.float64, "reference")):
        assert got.dtype == torch.float32
        assert (got.double() - want).abs().max() <= 1e-4 * want.abs().max()


def _batched(tensors, b=3):
    """B different inputs per tensor, stacked on a new dim 0."""
    return [torch.stack([t * (1 + 0.25 * i) + 0.1 * i for i in range(b)]) for t in tensors]


@pytest.mark.parametrize("name", CASES)
def test_vmap_equals_a_loop(name):
    op, tensors = _case(name)
    batched = _batched(tensors)
    with backend.use_backend("cpu"), torch.no_grad():
        got = vmap(op)(*batched)
        want = torch.stack([op(*inputs) for inputs in zip(*batched)])
    torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("name", ["modulated_conv2d_up2", "modulated_conv2d_torgb", "modulated_conv2d_winograd",
                                  "bias_act", "upfirdn2d_up", "seg_head_region"])
def test_vmap_of_grad_gives_per_sample_gradients(name):
    op, tensors = _case(name)
    batched = _batched(tensors)
    with backend.use_backend("reference"):
        cotangent = _rand(*op(*tensors).shape, seed=7)
    loss = _loss(op, cotangent)
    argnums = tuple(range(len(tensors)))
    with backend.use_backend("cpu"):
        got = vmap(grad(loss, argnums=argnums))(*batched)
        want = [grad(loss, argnums=argnums)(*inputs) for inputs in zip(*batched)]
    for i, g in enumerate(got):
        torch.testing.assert_close(g, torch.stack([w[i] for w in want]), atol=1e-12, rtol=1e-12)


def test_vmap_over_some_inputs_only():
    """styles vmapped, x shared by the batch: x is broadcast, not required to be vmapped too."""
    op, (x, styles) = _case("modulated_conv2d_winograd")
    batch = _batched([styles])[0]
    with backend.use_backend("cpu"), torch.no_grad():
        got = vmap(op, in_dims=(None, 0))(x, batch)
        want = torch.stack([op(x, s) for s in batch])
    torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-12)


def test_vmap_over_a_frozen_weight_is_refused_clearly():
    x = _rand(2, 3, 4, 5, seed=0)
    biases = _rand(4, 3, seed=1)
    with backend.use_backend("cpu"), pytest.raises(NotImplementedError, match="shared by the whole batch"):
        vmap(lambda b: bias_act(x, b, act="lrelu"))(biases)


def test_vmap_synthesis_over_a_batch_of_latents():
    g = small_generator(size=16)
    wplus = _rand(3, 1, g.num_ws, g.style_dim, seed=0, dtype=torch.float32)
    with backend.use_backend("cpu"), torch.no_grad():
        got = vmap(g.synthesis)(wplus)
        want = torch.stack([g.synthesis(w) for w in wplus])
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def editing():
    """(latent, objective) of an edit on the bundled default model: a refinement step's loss of w+ through
    synthesis and segmentation."""
    editor = default_editor(progress=False)
    with backend.use_backend("cpu"), pytest.warns(UserWarning, match="LPIPS"):
        latent = editor.sample(3)
        edited, _ = paint_enlarge(editor.segment(latent)[0], iterations=2)
        return latent, editor.edit_objective(latent, edited)


def test_grad_of_the_editing_objective_equals_eager_autograd(editing):
    latent, objective = editing
    with backend.use_backend("cpu"):
        got = grad(lambda w: objective(w)[0])(latent.wplus)
        w = latent.wplus.clone().requires_grad_(True)
        (want,) = torch.autograd.grad(objective(w)[0], w)
    assert want.abs().sum() > 0
    torch.testing.assert_close(got, want, atol=1e-7, rtol=1e-5)


def test_per_latent_gradients_of_the_editing_objective(editing):
    """vmap(grad) over two latents equals a loop, up to float32 rounding (the batched convolutions sum in
    another order): max error measured 1.2e-6 for gradients up to 0.058."""
    latent, objective = editing
    wplus = torch.stack([latent.wplus, latent.wplus + 0.05])
    step = grad(lambda w: objective(w)[0])
    with backend.use_backend("cpu"):
        got = vmap(step)(wplus)
        want = torch.stack([step(w) for w in wplus])
    assert (got - want).abs().max() <= 1e-4 * want.abs().max()
