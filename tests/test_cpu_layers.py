"""cpu backend's modulated_conv2d / upfirdn2d / bias_act against the reference, forward and gradients.

Bounds: float64 1e-10 relative (same algebra, different summation order); float32 2e-5 relative to the
output's largest value; bf16 storage 1e-2 relative.
"""
import pytest
import torch

import editgan_fast
from editgan_fast import backend
from editgan_fast.ops import bias_act, modulated_conv2d, setup_filter, upfirdn2d

pytestmark = pytest.mark.skipif(not backend.available("cpu"), reason="native extension not built")
if backend.available("cpu"):
    from editgan_fast.ops._cpu_isa import cpu_settings


def _rel(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-30)).item()


def _both(fn, *args):
    with editgan_fast.use_backend("reference"):
        want = fn(*args)
    with editgan_fast.use_backend("cpu"):
        got = fn(*args)
    return got, want


def _grads(fn, inputs):
    """Forward + input gradients on both backends, for a random projection of the output."""
    outs = {}
    for name in ("reference", "cpu"):
        leaves = [t.detach().clone().requires_grad_(True) for t in inputs]
        with editgan_fast.use_backend(name):
            y = fn(*leaves)
        probe = torch.Generator().manual_seed(7)
        (y * torch.randn(y.shape, generator=probe, dtype=y.dtype)).sum().backward()
        outs[name] = (y.detach(), [t.grad for t in leaves])
    return outs["cpu"], outs["reference"]


CONV_CASES = [  # (N, Cin, Cout, H, W, k, up, demodulate, noise, act, clamp, skip)
    (2, 5, 7, 6, 5, 3, 1, True, True, "lrelu", None, False),
    (1, 17, 3, 8, 6, 1, 1, False, False, "linear", 0.7, True),
    (3, 6, 9, 5, 7, 3, 2, True, True, "lrelu", 0.9, False),
    (2, 4, 5, 4, 4, 3, 2, False, False, "linear", None, False),
    (2, 19, 11, 8, 6, 3, 1, True, False, "lrelu", None, False),
    # one image larger than the weight: the style scales the weight instead of the input
    (1, 3, 6, 11, 9, 3, 1, True, True, "lrelu", None, False),
    (1, 4, 5, 12, 10, 3, 2, True, True, "lrelu", 0.8, False),
]


@pytest.mark.parametrize("case", CONV_CASES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_modulated_conv2d_matches_reference(case, dtype):
    n, cin, cout, h, w, k, up, demod, use_noise, act, clamp, use_skip = case
    torch.manual_seed(hash(case) % 1000)
    x = torch.randn(n, cin, h, w, dtype=dtype)
    weight = torch.randn(cout, cin, k, k, dtype=dtype) / (cin * k * k) ** 0.5
    styles = torch.randn(n, cin, dtype=dtype) + 1
    f = setup_filter([1, 3, 3, 1], dtype=dtype)
    oh, ow = h * up, w * up
    noise = 0.3 * torch.randn(1, 1, oh, ow, dtype=dtype) if use_noise else None
    bias = torch.randn(cout, dtype=dtype)
    skip = torch.randn(n, cout, oh // 2, ow // 2, dtype=dtype) if use_skip else None

    def fn(x, styles, skip=None):
        return modulated_conv2d(x, weight, styles, demodulate=demod, up=up, resample_filter=f, noise=noise,
                                bias=bias, act=act, clamp=clamp, skip=skip,
                                wsq=weight.square().sum([2, 3]))

    inputs = [x, styles] + ([skip] if use_skip else [])
    (y, grads), (want, want_grads) = _grads(fn, inputs)
    tol = 1e-10 if dtype == torch.float64 else 2e-5
    assert y.shape == want.shape and y.dtype == dtype
    assert _rel(y, want) < tol
    for g, wg in zip(grads, want_grads):
        assert _rel(g, wg) < tol * 10


@pytest.mark.parametrize("case", CONV_CASES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("winograd", [False, True])
def test_modulated_conv2d_without_gradients_matches_reference(monkeypatch, case, dtype, winograd):
    """Without gradients the epilogue (demodulation, noise, bias, activation, clamp) runs inside the kernel that
    writes the output (the FIR pass of up=2, the Winograd output transform of up=1): same values as the
    reference. `winograd` lowers the channel threshold so these small layers take the Winograd paths."""
    from editgan_fast.ops import _cpu_layers
    if winograd:
        monkeypatch.setattr(_cpu_layers, "WINOGRAD_MIN_CHANNELS", {1: 1, 2: 1})
        monkeypatch.setattr(_cpu_layers, "WINOGRAD_MIN_PIXELS", {1: 1, 2: 1})
    fused = []  # native calls that carry epilogue arguments
    monkeypatch.setattr(_cpu_layers, "_native", lambda: _NativeSpy(torch.ops.editgan_fast, fused))
    n, cin, cout, h, w, k, up, demod, use_noise, act, clamp, use_skip = case
    torch.manual_seed(hash(case) % 1000 + 1)
    x = torch.randn(n, cin, h, w, dtype=dtype)
    weight = torch.randn(cout, cin, k, k, dtype=dtype) / (cin * k * k) ** 0.5
    styles = torch.randn(n, cin, dtype=dtype) + 1
    f = setup_filter([1, 3, 3, 1], dtype=dtype)
    noise = 0.3 * torch.randn(1, 1, h * up, w * up, dtype=dtype) if use_noise else None
    skip = torch.randn(n, cout, h * up // 2, w * up // 2, dtype=dtype) if use_skip else None
    bias = torch.randn(cout, dtype=dtype)
    with torch.no_grad():
        got, want = _both(lambda: modulated_conv2d(x, weight, styles, demodulate=demod, up=up, resample_filter=f,
                                                   noise=noise, bias=bias, act=act, clamp=clamp, skip=skip))
    assert got.shape == want.shape and got.dtype == dtype
    assert _rel(got, want) < (1e-10 if dtype == torch.float64 else 2e-5)
    # ToRGB (skip) keeps its separate epilogue; every other layer fuses it when its kernel is native
    assert bool(fused) == (not use_skip and (up == 2 or winograd))


class _NativeSpy:
    """torch.ops.editgan_fast with winograd_conv / fir_separable calls that pass epilogue arguments recorded."""

    def __init__(self, ops, calls):
        self.ops, self.calls = ops, calls

    def __getattr__(self, name):
        op = getattr(self.ops, name)
        if name not in ("winograd_conv", "fir_separable"):
            return op
        positional = 10 if name == "winograd_conv" else 4  # arguments before the epilogue's

        def spy(*args):
            if len(args) > positional:
                self.calls.append(name)
            return op(*args)
        return spy


def test_recycled_output_blocks_are_fully_overwritten():
    """Outputs of >= 1 MiB come from a pool of recycled blocks (csrc/cpu/output_pool.cpp): an output written
    into a block that held another output (here a huge constant) must not show any of it."""
    ops = torch.ops.editgan_fast
    torch.manual_seed(11)
    shape = (1, 8, 256, 130)  # 1.02 MiB of float32
    stale = ops.epilogue_forward(torch.full(shape, 1e6), None, None, None, None, 0, 0.2, 1.0, -1.0)
    block = stale.data_ptr()
    del stale  # its block goes back to the pool ...
    y = torch.randn(shape)
    d, bias = torch.rand(1, 8) + 0.5, torch.randn(8)
    out = ops.epilogue_forward(y, d, None, bias, None, 1, 0.2, 2.0, -1.0)  # ... and is reused here
    assert out.data_ptr() == block
    want = torch.nn.functional.leaky_relu(y * d[:, :, None, None] + bias[:, None, None], 0.2) * 2.0
    assert out.abs().max() < 1e3 and _rel(out, want) < 1e-6
    from editgan_fast.ops._cpu_layers import SAME_3X3, winograd_conv, winograd_weight
    x, weight = torch.randn(shape), torch.randn(8, 8, 3, 3)
    del out
    got = winograd_conv(x, winograd_weight(weight, SAME_3X3), SAME_3X3)
    assert _rel(got, torch.nn.functional.conv2d(x.double(), weight.double(), padding=1)) < 1e-5


def test_modulated_conv2d_gradcheck():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    s = (torch.randn(2, 3, dtype=torch.float64) + 1).requires_grad_(True)
    weight = torch.randn(4, 3, 3, 3, dtype=torch.float64)
    f = setup_filter([1, 3, 3, 1], dtype=torch.float64)
    noise = torch.randn(1, 1, 8, 10, dtype=torch.float64)
    with editgan_fast.use_backend("cpu"):
        assert torch.autograd.gradcheck(
            lambda x, s: modulated_conv2d(x, weight, s, up=2, resample_filter=f, noise=noise, act="lrelu",
                                          clamp=1.5), (x, s))


@pytest.mark.parametrize("up,down,padding,filt,flip,gain", [
    (2, 1, (2, 1, 2, 1), [1, 3, 3, 1], False, 4.0),
    (1, 1, (1, 1, 1, 1), [1, 3, 3, 1], False, 1.0),
    (1, 2, (1, 1, 1, 1), [1, 3, 3, 1], True, 1.0),
    (3, 1, (1, -1, 2, 0), [1, 2, 5], False, 9.0),
    (2, 2, (0, 1, -1, 2), [1, 4, 6, 4, 1], False, 2.0),
    (1, 1, (-1, 2, 0, -1), "2d", False, 1.5),
])
def test_upfirdn2d_matches_reference(up, down, padding, filt, flip, gain):
    torch.manual_seed(1)
    x = torch.randn(2, 3, 7, 6, dtype=torch.float64)
    f = torch.randn(3, 4, dtype=torch.float64) if filt == "2d" else setup_filter(filt, dtype=torch.float64)
    fn = lambda x: upfirdn2d(x, f, up=up, down=down, padding=padding, flip_filter=flip, gain=gain)
    (y, (g,)), (want, (wg,)) = _grads(fn, [x])
    assert y.shape == want.shape
    assert _rel(y, want) < 1e-12 and _rel(g, wg) < 1e-12


@pytest.mark.parametrize("shape,dim", [((2, 5, 3, 4), 1), ((7, 9), 1), ((3, 4, 5), 2)])
@pytest.mark.parametrize("act,clamp", [("lrelu", None), ("linear", 0.5), ("lrelu", 0.8)])
def test_bias_act_matches_reference(shape, dim, act, clamp):
    torch.manual_seed(2)
    x = torch.randn(*shape, dtype=torch.float64)
    b = torch.randn(shape[dim], dtype=torch.float64)
    fn = lambda x: bias_act(x, b, dim=dim, act=act, clamp=clamp)
    (y, (g,)), (want, (wg,)) = _grads(fn, [x])
    assert _rel(y, want) < 1e-14 and _rel(g, wg) < 1e-14
    with editgan_fast.use_backend("cpu"):
        assert torch.autograd.gradcheck(fn, (x.requires_grad_(True),))


@pytest.mark.parametrize("products", ["native", "fp32"])  # both bf16 branches, forced, on any CPU
def test_bf16_mode_stores_bf16_with_small_error(products):
    torch.manual_seed(3)
    x = torch.randn(2, 16, 8, 8)
    weight = torch.randn(24, 16, 3, 3) / 12
    s = torch.randn(2, 16) + 1
    f = setup_filter([1, 3, 3, 1])
    fn = lambda: modulated_conv2d(x, weight, s, up=2, resample_filter=f, act="lrelu")
    with editgan_fast.use_backend("reference"):
        want = fn()
    with cpu_settings(bf16_products=products), editgan_fast.use_backend("cpu", dtype=torch.bfloat16):
        got = fn()
    assert got.dtype == torch.bfloat16
    assert _rel(got, want) < 1e-2


def test_generator_cpu_matches_reference():
    from factories import small_generator
    g = small_generator(size=32, conv_clamp=3.0)
    wplus = torch.randn(2, g.num_ws, g.style_dim)
    (img, feats), (want, want_feats) = _both(lambda w: g.synthesis(w, return_features=True), wplus)
    assert _rel(img, want) < 2e-5
    for f, wf in zip(feats, want_feats):
        assert _rel(f, wf) < 2e-5
    gd = g.double()
    w64 = wplus.double().requires_grad_(True)
    (gi, (gw,)), (wi, (ww,)) = _grads(lambda w: gd.synthesis(w), [w64])
    assert _rel(gi, wi) < 1e-10 and _rel(gw, ww) < 1e-10


@pytest.mark.parametrize("taps", [[1, 2, 1], [1, 5, 10, 10, 5, 1]])
def test_other_resample_filters_match_reference(taps):
    torch.manual_seed(5)
    f = setup_filter(taps, dtype=torch.float64)
    x = torch.randn(2, 3, 4, 6, dtype=torch.float64)
    s = torch.randn(2, 3, dtype=torch.float64) + 1
    up_w = torch.randn(5, 3, 3, 3, dtype=torch.float64)
    rgb_w = torch.randn(5, 3, 1, 1, dtype=torch.float64)
    skip = torch.randn(2, 5, 2, 3, dtype=torch.float64)
    (u, (gu,)), (wu, (wgu,)) = _grads(lambda x: modulated_conv2d(x, up_w, s, up=2, resample_filter=f), [x])
    (r, (gr,)), (wr, (wgr,)) = _grads(
        lambda skip: modulated_conv2d(x, rgb_w, s, demodulate=False, resample_filter=f, skip=skip), [skip])
    for a, b in ((u, wu), (gu, wgu), (r, wr), (gr, wgr)):
        assert _rel(a, b) < 1e-12


# (5, 700, 8, 40, 20): 700 channels make chunks of ~38 tile rows, so chunks span images and split them mid-way.
@pytest.mark.parametrize("n,cin,cout,h,w", [(1, 3, 5, 7, 9), (2, 17, 8, 8, 8), (1, 33, 17, 5, 12), (3, 4, 4, 1, 1),
                                            (5, 700, 8, 40, 20)])
@pytest.mark.parametrize("up", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_winograd_conv_matches_direct(n, cin, cout, h, w, up, dtype):
    """The tile transforms against conv2d (up=1, padding 1) and conv_transpose2d (up=2, stride 2) in float64,
    with and without the input scaling: odd and even sizes (partial edge tiles), batch > 1, a 1x1 image.
    float32 bounds: F(4x4, 3x3)'s coefficients reach 8 (~3e-6 measured), the transposed set's are +-1."""
    from editgan_fast.ops._cpu_layers import SAME_3X3, TRANSPOSED_3X3_UP2, winograd_conv, winograd_weight
    torch.manual_seed(cin * h + w + up)
    spec = SAME_3X3 if up == 1 else TRANSPOSED_3X3_UP2
    tol = 1e-13 if dtype == torch.float64 else (1e-5 if up == 1 else 2e-6)
    x = torch.randn(n, cin, h, w, dtype=dtype)
    scale = torch.randn(n, cin, dtype=dtype) + 1
    weight = torch.randn(cout, cin, 3, 3, dtype=dtype)
    u = winograd_weight(weight, spec)
    for s in (None, scale):
        got = winograd_conv(x, u, spec, scale=s)
        xs = x.double() if s is None else x.double() * s.double()[:, :, None, None]
        if up == 1:
            want = torch.nn.functional.conv2d(xs, weight.double(), padding=1)
        else:
            want = torch.nn.functional.conv_transpose2d(xs, weight.double().transpose(0, 1), stride=2)
        assert got.dtype == dtype and got.shape == want.shape
        assert _rel(got, want) < tol


@pytest.mark.parametrize("up", [1, 2])
def test_winograd_layers_match_reference_with_gradients(monkeypatch, up):
    """With the channel threshold lowered, a layer takes the Winograd path: forward and gradients for the
    input and the styles against the reference, and gradcheck."""
    from editgan_fast.ops import _cpu_layers
    monkeypatch.setattr(_cpu_layers, "WINOGRAD_MIN_CHANNELS", {1: 1, 2: 1})
    monkeypatch.setattr(_cpu_layers, "WINOGRAD_MIN_PIXELS", {1: 1, 2: 1})
    calls = []
    monkeypatch.setattr(_cpu_layers.Winograd3x3, "forward", _spy(_cpu_layers.Winograd3x3.forward, calls))
    torch.manual_seed(3 + up)
    x = torch.randn(2, 4, 3, 5, dtype=torch.float64)
    s = torch.randn(2, 4, dtype=torch.float64) + 1
    weight = torch.randn(3, 4, 3, 3, dtype=torch.float64) / 6
    noise = torch.randn(1, 1, 3 * up, 5 * up, dtype=torch.float64)
    f = setup_filter([1, 3, 3, 1], dtype=torch.float64)
    fn = lambda x, s: modulated_conv2d(x, weight, s, up=up, resample_filter=f, noise=noise,
                                       bias=torch.ones(3, dtype=torch.float64), act="lrelu")
    (y, grads), (want, want_grads) = _grads(fn, [x, s])
    assert calls, "the Winograd path was not taken"
    assert _rel(y, want) < 1e-12
    for g, wg in zip(grads, want_grads):
        assert _rel(g, wg) < 1e-12
    with editgan_fast.use_backend("cpu"):
        assert torch.autograd.gradcheck(fn, (x.requires_grad_(True), s.requires_grad_(True)))


def _spy(fn, calls):
    return staticmethod(lambda *args: calls.append(1) or fn(*args))
