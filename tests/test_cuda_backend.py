"""The `cuda` backend (csrc/cuda + editgan_fast/ops/_cuda_backend.py).

On any machine: the Python-side math the backend feeds its kernels (the upfirdn2d backward as another
upfirdn2d, the correlation filter), checked with the reference operator, and a clear error when the backend
cannot run. With a CUDA device and the extension built (`gpu` tests): every kernel against the reference on
fresh random inputs, forward and backward, per storage dtype.
"""
import os
import subprocess
import sys

import pytest
import torch

from editgan_fast import backend
from editgan_fast.ops import _cuda_backend as cb
from editgan_fast.ops.bias_act import bias_act_reference
from editgan_fast.ops.seg_head import seg_head_reference
from editgan_fast.ops.upfirdn2d import upfirdn2d_reference

from cuda_cases import SEG_CASES, UPFIRDN_CASES, make_filter, seg_inputs

# (dtype, relative tolerance): fp32 storage differs from the reference only by summation order.
TOLERANCES = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


@pytest.mark.parametrize("up,down,padding,spec,flip", UPFIRDN_CASES)
def test_upfirdn2d_backward_is_an_upfirdn2d(up, down, padding, spec, flip):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 7, 6, dtype=torch.float64, requires_grad=True)
    f = make_filter(spec)
    y = upfirdn2d_reference(x, f, up=up, down=down, padding=padding, flip_filter=flip, gain=1.7)
    dy = torch.randn_like(y)
    (expected,) = torch.autograd.grad(y, x, dy)
    f_hw = (f.shape[0], f.shape[0]) if f.ndim == 1 else tuple(f.shape)
    pad = cb.upfirdn2d_grad_padding(x.shape[2:], y.shape[2:], f_hw, up, down, padding)
    got = upfirdn2d_reference(dy, f, up=down, down=up, padding=pad, flip_filter=not flip, gain=1.7)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("up,down,padding,spec,flip", UPFIRDN_CASES)
def test_correlation_filter_reproduces_upfirdn2d(up, down, padding, spec, flip):
    torch.manual_seed(1)
    x = torch.randn(1, 2, 6, 5, dtype=torch.float64)
    f = make_filter(spec)
    g = cb.correlation_filter(f, flip, 2.5).double()
    expected = upfirdn2d_reference(x, f, up=up, down=down, padding=padding, flip_filter=flip, gain=2.5)
    got = upfirdn2d_reference(x, g, up=up, down=down, padding=padding, flip_filter=True, gain=1.0)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)  # g is fp32


@pytest.mark.skipif(backend.available("cuda"), reason="the cuda backend is available here")
def test_unavailable_backend_says_why():
    assert cb.unavailable_reason()
    with pytest.raises(backend.BackendUnavailable, match="cuda"):
        with backend.use_backend("cuda"):
            pass


# ------------------------------------------------------------------------------------------ on a GPU
REQUIRE_GPU = os.environ.get("EDITGAN_FAST_REQUIRE_GPU") == "1"  # bench/gpu_check.sh: a skip is a failure


def gpu(test):
    skip = pytest.mark.skipif(not backend.available("cuda") and not REQUIRE_GPU,
                              reason=f"cuda backend unavailable: {cb.unavailable_reason()}")
    return pytest.mark.gpu(skip(test))


def _assert_close(got, expected, dtype):
    tol = TOLERANCES[dtype]
    scale = expected.abs().max().clamp_min(1e-6)
    err = (got.double() - expected.double()).abs().max() / scale
    assert err <= tol, f"max error {err:.3g} relative to max |ref| exceeds {tol} for {dtype}"


@pytest.mark.parametrize("dtype", list(TOLERANCES))
@pytest.mark.parametrize("act,clamp", [("linear", None), ("lrelu", None), ("lrelu", 0.7)])
@pytest.mark.parametrize("dim", [0, 1, 3])
@gpu
def test_bias_act_matches_reference(dtype, act, clamp, dim):
    torch.manual_seed(2)
    x = torch.randn(3, 5, 4, 6, device="cuda").to(dtype).requires_grad_()
    b = torch.randn(x.shape[dim], device="cuda").to(dtype).requires_grad_()
    with backend.use_backend("cuda"):
        y = cb.OPS["bias_act"](x, b, dim=dim, act=act, clamp=clamp)
    ref = bias_act_reference(x.double(), b.double(), dim=dim, act=act, clamp=clamp)
    _assert_close(y, ref, dtype)
    dy = torch.randn_like(y)
    gx, gb = torch.autograd.grad(y, (x, b), dy)
    rx, rb = torch.autograd.grad(ref, (x, b), dy.double())
    _assert_close(gx, rx, dtype)
    _assert_close(gb, rb, dtype)


@pytest.mark.parametrize("dtype", list(TOLERANCES))
@pytest.mark.parametrize("up,down,padding,spec,flip", UPFIRDN_CASES)
@gpu
def test_upfirdn2d_matches_reference(dtype, up, down, padding, spec, flip):
    torch.manual_seed(3)
    x = torch.randn(2, 3, 37, 45, device="cuda").to(dtype).requires_grad_()  # spans several 32x32 tiles
    f = make_filter(spec, torch.float32, "cuda")
    with backend.use_backend("cuda"):
        y = cb.OPS["upfirdn2d"](x, f, up=up, down=down, padding=padding, flip_filter=flip, gain=1.3)
    ref = upfirdn2d_reference(x.double(), f.double(), up=up, down=down, padding=padding, flip_filter=flip,
                              gain=1.3)
    assert y.shape == ref.shape and y.dtype == dtype
    _assert_close(y, ref, dtype)
    dy = torch.randn_like(y)
    (gx,) = torch.autograd.grad(y, x, dy)
    (rx,) = torch.autograd.grad(ref, x, dy.double())
    _assert_close(gx, rx, dtype)


@pytest.mark.parametrize("mode,crop,use_region", SEG_CASES)
@gpu
def test_seg_head_matches_reference(mode, crop, use_region):
    features, members, out_size, region = seg_inputs(crop, use_region, "cuda")
    with backend.use_backend("cuda"):
        got = cb.OPS["seg_head"](features, members, out_size, crop=crop, mode=mode, region=region)
    ref = seg_head_reference([f.double() for f in features], [m.to(torch.float64) for m in members], out_size,
                             crop=crop, mode=mode, region=region)
    assert got.shape == ref.shape
    _assert_close(got, ref, torch.float32)


def _run_bench(*args):
    script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench", "gpu.py")
    return subprocess.run([sys.executable, script, *args], capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present: bench/gpu.py would run")
def test_gpu_bench_says_no_gpu_and_exits_0():
    run = _run_bench("--reps", "1")
    assert run.returncode == 0, run.stderr
    assert "no CUDA device" in run.stdout


def test_gpu_bench_roofline_plan():
    run = _run_bench("--roofline")
    assert run.returncode == 0, run.stderr
    lines = {line.split(":")[0]: line for line in run.stdout.splitlines() if "roofline" in line}
    assert {"apply roofline (built seg head)", "apply roofline (plan seg head)",
            "refinement step roofline (plan, bf16)"} <= set(lines), run.stdout
