"""The cpu backend's forced branches (ops/_cpu_isa.py): every ISA build of the native loops this CPU can execute,
and both bf16-product branches, against the reference on fresh random inputs.

- ISA builds (avx512 / avx2 / portable): the FIR blur, the epilogue forward and backward, both Winograd sets
  (fused epilogue included) and the seg head's gathers (fp32 and bf16 projections) in float32, bound 1e-4
  relative to the largest reference value (F(4x4, 3x3)'s coefficients reach 8: ~10x float32's rounding at 64
  channels; gradients 5e-4, a product of two such outputs), seg head 2e-5. A build
  the CPU cannot execute is skipped, naming the CPU's widest: AVX-512 code needs an AVX-512 machine.
- bf16 products (native: oneDNN bf16 with fp32 accumulation; fp32: products on bf16-stored values): a whole
  synthesis of a small generator and a bf16 generator (`Generator.to(torch.bfloat16)`) against the float64
  reference, bound 5e-2 relative (bf16's 8-bit mantissa, ~4e-3 per rounding, over a few layers). Native bf16
  runs on every CPU (oneDNN emulates it on AVX2, slowly: small shapes).
- the switches: environment variables, bad values, refusing a build the CPU lacks.
"""
import os
import subprocess
import sys

import pytest
import torch

import editgan_fast
from editgan_fast import backend
from editgan_fast.errors import BackendUnavailable, InputValueError

pytestmark = pytest.mark.skipif(not backend.available("cpu"), reason="native extension not built")

if backend.available("cpu"):
    from editgan_fast.ops import _cpu_isa
    from editgan_fast.ops import modulated_conv2d, setup_filter, upfirdn2d
    from editgan_fast.ops.seg_head import seg_head

ISA_ORDER = ("portable", "avx2", "avx512")


def _rel(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


@pytest.fixture(params=ISA_ORDER)
def isa(request):
    best = _cpu_isa.best_cpu_isa()
    if ISA_ORDER.index(request.param) > ISA_ORDER.index(best):
        pytest.skip(f"this CPU cannot execute the {request.param} build (its widest is {best})")
    with _cpu_isa.cpu_settings(isa=request.param):
        assert _cpu_isa.cpu_isa() == request.param
        yield request.param


def _layer_cases():
    """(x, weight, styles, kwargs) exercising FIR (up=2), Winograd F(4x4, 3x3) and the transposed set, the
    fused and the separate epilogue."""
    gen = torch.Generator().manual_seed(21)
    r = lambda *s: torch.randn(*s, generator=gen)
    f = setup_filter([1, 3, 3, 1])
    for up, c, size in ((1, 64, 16), (2, 64, 16), (2, 6, 5)):  # 64 channels x 256 px: the Winograd path
        kw = dict(up=up, resample_filter=f, noise=0.3 * r(1, 1, size * up, size * up), bias=r(c), act="lrelu",
                  gain=2 ** 0.5, clamp=1.5)
        yield r(2, c, size, size), r(c, c, 3, 3) / (9 * c) ** 0.5, r(2, c) + 1, kw


def test_isa_builds_match_reference(isa, monkeypatch):
    from editgan_fast.ops import _cpu_layers
    monkeypatch.setattr(_cpu_layers, "WINOGRAD_MIN_PIXELS", {1: 256, 2: 256})  # the 16 px cases take Winograd
    for x, weight, s, kw in _layer_cases():
        fn = lambda x, s: modulated_conv2d(x, weight, s, **kw)
        with editgan_fast.use_backend("reference"):
            want = fn(x.double(), s.double())
        for grad in (False, True):  # fused epilogue; separate epilogue forward + backward
            leaves = [t.clone().requires_grad_(grad) for t in (x, s)]
            with editgan_fast.use_backend("cpu"):
                got = fn(*leaves)
            assert _rel(got, want) < 1e-4, (isa, kw["up"], grad)
            if grad:
                got.square().sum().backward()
                ref = [t.double().requires_grad_(True) for t in (x, s)]
                with editgan_fast.use_backend("reference"):
                    fn(*ref).square().sum().backward()
                for a, b in zip(leaves, ref):
                    assert _rel(a.grad, b.grad) < 5e-4, (isa, kw["up"])


@pytest.mark.parametrize("up", [1, 2, 3])
def test_isa_builds_fir_match_reference(isa, up, monkeypatch):
    """The native FIR kernels per ISA build (fir_separable at up=1, polyphase fir_upsample above), through the
    upfirdn2d op: forward and gradient against the float64 reference."""
    from editgan_fast.ops import _cpu_layers
    native = []  # what each upfirdn2d call's native route returned (None: ATen's fallback ran)
    fir = _cpu_layers._native_fir

    def recorded(*args):
        native.append(fir(*args))
        return native[-1]
    monkeypatch.setattr(_cpu_layers, "_native_fir", recorded)
    gen = torch.Generator().manual_seed(30 + up)
    x = torch.randn(2, 3, 9, 7, generator=gen)
    f = setup_filter([1, 3, 3, 1])
    fn = lambda x: upfirdn2d(x, f, up=up, padding=(2, 1, 2, 1), gain=up * up)
    ref = x.double().requires_grad_(True)
    with editgan_fast.use_backend("reference"):
        want = fn(ref)
    want.square().sum().backward()
    leaf = x.clone().requires_grad_(True)
    with editgan_fast.use_backend("cpu"):
        got = fn(leaf)
    got.square().sum().backward()
    assert native and all(out is not None for out in native)  # the native kernels ran, not ATen's fallback
    assert got.shape == want.shape and _rel(got, want) < 1e-5, isa
    assert _rel(leaf.grad, ref.grad) < 1e-5, isa


def test_isa_builds_seg_head_packed_layers(isa):
    """The packed linear+ReLU layers per ISA build (block 16 or 32: widths 32), the second one skipping the units
    off in a whole block (sparse members), 20 units (a scan tail on every lane width): logits and feature
    gradients against the float64 reference."""
    from test_cpu_seg import feature_grads, random_case, reference64, sparse_members
    feats, mlps = random_case((4, 8, 16), (7, 9, 5), batch=2, members=2, widths=(32, 32))
    for members in (sparse_members(mlps), sparse_members(random_case((4, 8, 16), (7, 9, 5), batch=1, members=2,
                                                                      widths=(20, 32))[1])):
        want = reference64(feats, members, 16, crop=(2, 15, 0, 15))
        with editgan_fast.use_backend("cpu"):
            got = seg_head(feats, members, 16, crop=(2, 15, 0, 15))
        assert _rel(got, want) < 2e-5, isa
        weight = torch.randn(want.shape, generator=torch.Generator().manual_seed(3))
        ref = feature_grads("reference", feats, members, 16, weight, torch.float64, crop=(2, 15, 0, 15))
        for g, r in zip(feature_grads("cpu", feats, members, 16, weight, crop=(2, 15, 0, 15)), ref):
            assert _rel(g, r) < 1e-4, isa


@pytest.mark.parametrize("bf16", [False, True])
def test_isa_builds_seg_head_gathers(isa, bf16):
    from test_cpu_seg import random_case, reference64
    # Channel counts with K % 64 and % 16 tails for the gathers; the last layer (mean_logits) with E*H2 = 18 (a
    # tail of 2 or 10 lanes), 8 classes (blocks of 6 and 2) and an odd pixel count (13 x 15: a lone last pixel).
    feats, mlps = random_case((4, 8, 16), (70, 9, 130), batch=1, members=2, widths=(40, 9), classes=8)
    want = reference64(feats, mlps, 16, crop=(2, 15, 0, 15))
    with editgan_fast.use_backend("cpu", dtype=torch.bfloat16 if bf16 else None):
        got = seg_head(feats, mlps, 16, crop=(2, 15, 0, 15))
    assert _rel(got, want) < (2e-2 if bf16 else 2e-5)


@pytest.mark.parametrize("products", ["native", "fp32"])
def test_bf16_products_synthesis(products):
    from factories import small_generator
    g = small_generator(size=16)
    w = torch.randn(2, g.num_ws, g.style_dim, generator=torch.Generator().manual_seed(4))
    with editgan_fast.use_backend("reference"):
        want = g.double().synthesis(w.double())
    g.float()
    with _cpu_isa.cpu_settings(bf16_products=products):
        with editgan_fast.use_backend("cpu", dtype=torch.bfloat16):
            got = g.synthesis(w)
        assert got.dtype == torch.bfloat16 and _rel(got, want) < 5e-2
        g16 = g.to(torch.bfloat16)  # a bf16 generator under the default backend selection
        try:
            got16 = g16.synthesis(w.to(torch.bfloat16))
        finally:
            g.float()
        assert got16.dtype == torch.bfloat16 and _rel(got16, want) < 5e-2


def test_upfirdn2d_reads_bf16_with_native_products():
    x = torch.randn(2, 3, 7, 6, generator=torch.Generator().manual_seed(9)).to(torch.bfloat16)
    f = setup_filter([1, 3, 3, 1])
    with editgan_fast.use_backend("reference"):
        want = upfirdn2d(x.double(), f.double(), up=2, padding=(2, 1, 2, 1), gain=4)
    with _cpu_isa.cpu_settings(bf16_products="native"), editgan_fast.use_backend("cpu", dtype=torch.bfloat16):
        got = upfirdn2d(x, f, up=2, padding=(2, 1, 2, 1), gain=4)
    assert got.dtype == torch.bfloat16 and _rel(got, want) < 1e-2


def test_fir_reads_bf16_and_writes_fp32():
    x = torch.randn(2, 3, 9, 8, generator=torch.Generator().manual_seed(3))
    taps = torch.tensor([0.25, 0.75, 0.75, 0.25])
    got = torch.ops.editgan_fast.fir_separable(x.to(torch.bfloat16), taps, 2, 1)
    want = torch.ops.editgan_fast.fir_separable(x.to(torch.bfloat16).float(), taps, 2, 1)
    assert got.dtype == torch.float32 and torch.equal(got, want)  # the same fp32 arithmetic on the widened input
    with pytest.raises(RuntimeError, match="taps"):
        torch.ops.editgan_fast.fir_separable(x.to(torch.bfloat16), taps.to(torch.bfloat16), 2, 1)


def test_switch_values_and_refusals():
    with pytest.raises(InputValueError, match="EDITGAN_FAST_CPU_ISA"):
        _cpu_isa.set_cpu_isa("sse9")
    with pytest.raises(InputValueError, match="EDITGAN_FAST_BF16_PRODUCTS"):
        _cpu_isa.set_bf16_products("fast")
    if _cpu_isa.best_cpu_isa() != "avx512":
        with pytest.raises(BackendUnavailable, match="cannot run the avx512"):
            _cpu_isa.set_cpu_isa("avx512")
    assert _cpu_isa.cpu_isa() == _cpu_isa.best_cpu_isa()  # a refused setting changes nothing
    with _cpu_isa.cpu_settings(isa="portable", bf16_products="native"):
        info = _cpu_isa.describe()
        assert info["isa"]["running"] == "portable" and info["bf16_products"]["running"] == "native"
    assert _cpu_isa.cpu_isa() == _cpu_isa.best_cpu_isa()


def test_environment_forces_both_switches():
    code = ("from editgan_fast import backend; backend.available('cpu');"
            "from editgan_fast.ops import _cpu_isa; d = _cpu_isa.describe();"
            "print(d['isa']['running'], d['bf16_products']['running'])")
    env = dict(os.environ, EDITGAN_FAST_CPU_ISA="portable", EDITGAN_FAST_BF16_PRODUCTS="native")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["portable", "native"]


def test_auto_warns_once_when_the_native_backend_cannot_load(monkeypatch):
    monkeypatch.setattr(backend, "_failed", {"cpu": "backend 'cpu' is not available: built for another torch"})
    monkeypatch.setattr(backend, "_loaded", {})
    monkeypatch.setattr(backend, "_warned_slow", set())
    x = torch.randn(2, 3)
    with pytest.warns(RuntimeWarning, match="slow reference backend on cpu: .*another torch"):
        assert backend.backend_name_for(x) == "reference"
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert backend.backend_name_for(x) == "reference"  # once
