"""cpu backend layer kernels: the cases tests/test_cpu_layers.py leaves out.

- per-sample noise [N, 1, H, W] with up=2, demodulation, clamp and an upsampled skip together, float64
  gradients for x, styles and skip (bound 1e-10 relative: same algebra, different summation order);
- frozen weights: changing a weight in place must invalidate the cached transposed weight / sum of squares, and
  weights get no gradient;
- bf16 mode gradients for x and styles against the float64 reference (bound 3e-2 relative to the largest
  value: bf16 has an 8-bit mantissa, ~4e-3 per rounding, and the layer rounds its input and output; with bf16
  products 0.1 in relative L2 norm, see the test);
- upfirdn2d in the bf16 mode (bf16 storage, 1e-2);
- both bf16 branches forced (ops/_cpu_isa.py): products in bf16 (oneDNN; emulated, slowly, on AVX2 CPUs) and
  products in fp32 on bf16-stored values.
"""
import pytest
import torch

import editgan_fast
from editgan_fast import backend
from editgan_fast.ops import modulated_conv2d, setup_filter, upfirdn2d

pytestmark = pytest.mark.skipif(not backend.available("cpu"), reason="native extension not built")
if backend.available("cpu"):
    from editgan_fast.ops._cpu_isa import cpu_settings


def _rel(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


def _run(backend_name, fn, inputs, dtype=None, seed=11):
    """Output and input gradients for a fixed random projection of the output."""
    leaves = [t.detach().clone().requires_grad_(True) for t in inputs]
    with editgan_fast.use_backend(backend_name, dtype=dtype):
        y = fn(*leaves)
    probe = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    (y.double() * probe).sum().backward()
    return y.detach(), [t.grad for t in leaves]


@pytest.mark.parametrize("n,cin,cout,h,w", [(3, 7, 5, 5, 3), (2, 18, 13, 4, 6)])
def test_up2_per_sample_noise_skip_clamp_float64(n, cin, cout, h, w):
    gen = torch.Generator().manual_seed(n * 100 + cin)
    r = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64)
    weight, bias = r(cout, cin, 3, 3) / (cin * 9) ** 0.5, r(cout)
    noise = 0.5 * r(n, 1, 2 * h, 2 * w)  # one noise image per sample
    f = setup_filter([1, 3, 3, 1], dtype=torch.float64)
    layer = lambda x, s, skip, clamp=1.2: modulated_conv2d(x, weight, s, up=2, resample_filter=f, noise=noise,
                                                           bias=bias, act="lrelu", gain=2 ** 0.5, clamp=clamp,
                                                           skip=skip)
    inputs = [r(n, cin, h, w), r(n, cin) + 1, r(n, cout, h, w)]
    y, grads = _run("cpu", layer, inputs)
    want, want_grads = _run("reference", layer, inputs)
    unclamped, _ = _run("reference", lambda *a: layer(*a, clamp=None), inputs)
    assert ((want - unclamped).abs() > 1e-3).any() and (want == unclamped).any()  # clamp active in places only
    assert _rel(y, want) < 1e-10
    for g, wg in zip(grads, want_grads):
        assert _rel(g, wg) < 1e-10


@pytest.mark.parametrize("up", [1, 2])
def test_in_place_weight_change_invalidates_cached_derivatives(up):
    gen = torch.Generator().manual_seed(5)
    weight = torch.randn(6, 5, 3, 3, generator=gen)
    x, s = torch.randn(2, 5, 4, 4, generator=gen), torch.randn(2, 5, generator=gen) + 1
    f = setup_filter([1, 3, 3, 1])
    fn = lambda: modulated_conv2d(x, weight, s, up=up, resample_filter=f)
    for _ in range(2):
        with editgan_fast.use_backend("cpu"):
            got = fn()
        with editgan_fast.use_backend("reference"):
            want = fn()
        assert _rel(got, want) < 2e-5
        with torch.no_grad():
            weight.mul_(torch.rand(weight.shape, generator=gen) + 0.5)  # a frozen weight loaded anew, in place


def test_weights_are_frozen_and_get_no_gradient():
    gen = torch.Generator().manual_seed(6)
    weight = torch.randn(4, 3, 3, 3, generator=gen, requires_grad=True)
    x = torch.randn(1, 3, 5, 5, generator=gen, requires_grad=True)
    s = torch.randn(1, 3, generator=gen) + 1
    with editgan_fast.use_backend("cpu"):
        modulated_conv2d(x, weight, s).square().sum().backward()
    assert weight.grad is None and x.grad is not None and x.grad.abs().sum() > 0


@pytest.mark.parametrize("products", ["native", "fp32"])  # both bf16 branches, forced, on any CPU
@pytest.mark.parametrize("up,k,demodulate", [(1, 3, True), (2, 3, True), (1, 1, False)])
def test_bf16_mode_gradients_close_to_float64(up, k, demodulate, products):
    gen = torch.Generator().manual_seed(7 + up + k)
    cin, cout = 20, 12
    weight = torch.randn(cout, cin, k, k, generator=gen, dtype=torch.float64) / (cin * k * k) ** 0.5
    f = setup_filter([1, 3, 3, 1], dtype=torch.float64)
    fn = lambda x, s: modulated_conv2d(x, weight.to(x.dtype), s, demodulate=demodulate, up=up,
                                       resample_filter=f.to(x.dtype), act="lrelu")
    x = torch.randn(2, cin, 6, 5, generator=gen, dtype=torch.float64)
    s = torch.randn(2, cin, generator=gen, dtype=torch.float64) + 1
    want, want_grads = _run("reference", fn, [x, s])
    with cpu_settings(bf16_products=products):
        y, grads = _run("cpu", fn, [x.float(), s.float()], dtype=torch.bfloat16)
    assert y.dtype == torch.bfloat16
    assert _rel(y, want) < 3e-2
    for g, wg in zip(grads, want_grads):
        if products == "fp32":
            assert _rel(g, wg) < 3e-2
        else:
            # bf16 products round the layer's input and weight, so leaky ReLU's slope flips (1 <-> 0.2) where the
            # pre-activation is within that rounding of 0 (~0.5% of outputs): those entries move by most of their
            # size. Bound the relative L2 error (measured 4.7%; 0.4% with a linear activation) instead of the max.
            assert ((g.double() - wg).norm() / wg.norm()).item() < 0.1


@pytest.mark.parametrize("products", ["native", "fp32"])
def test_upfirdn2d_bf16_mode(products):
    gen = torch.Generator().manual_seed(8)
    x = torch.randn(2, 5, 9, 7, generator=gen)
    f = setup_filter([1, 3, 3, 1])
    fn = lambda x: upfirdn2d(x, f, up=2, padding=(2, 1, 2, 1), gain=4)
    with editgan_fast.use_backend("reference"):
        want = fn(x.double())
    with cpu_settings(bf16_products=products), editgan_fast.use_backend("cpu", dtype=torch.bfloat16):
        got = fn(x)
    assert got.dtype == torch.bfloat16 and got.shape == want.shape
    assert _rel(got, want) < 1e-2
