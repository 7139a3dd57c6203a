"""The CUDA kernels themselves, run on the CPU: csrc/cuda/*.cuh compiled as host C++ with a serial
one-thread-per-block shim (csrc/tests/host_cuda_shim.h, csrc/tests/cuda_emulation.cpp) and called through
ctypes on fresh random inputs, against the reference operators. This checks the kernels' tiling, indexing and
math on machines without a GPU (not races or speed: the `gpu` tests in test_cuda_backend.py do that on one).
The seg-head inputs are prepared by the backend's own Python (pack_members, project)."""
import ctypes
import os
import shutil
import subprocess

import pytest
import torch

from editgan_fast.ops import _cuda_backend as cb
from editgan_fast.ops.bias_act import bias_act_reference
from editgan_fast.ops.seg_head import crop_box, seg_head_reference
from editgan_fast.ops.upfirdn2d import output_size, upfirdn2d_reference

from cuda_cases import SEG_CASES, UPFIRDN_CASES, make_filter, seg_inputs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CXX = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
NVCC = shutil.which("nvcc")
CUDA_INCLUDE = next((p for p in ([os.path.join(os.path.dirname(os.path.dirname(os.path.realpath(NVCC))), "include")]
                                 if NVCC else []) + ["/usr/local/cuda/include"]
                     if os.path.exists(os.path.join(p, "cuda_fp16.h"))), None)

pytestmark = pytest.mark.skipif(CXX is None or CUDA_INCLUDE is None,
                                reason="needs a C++ compiler and the CUDA toolkit headers (cuda_fp16.h)")

f32p = ctypes.POINTER(ctypes.c_float)
I64, INT, FLT = ctypes.c_int64, ctypes.c_int, ctypes.c_float


@pytest.fixture(scope="module")
def lib(tmp_path_factory):
    so = tmp_path_factory.mktemp("cuda_emulation") / "cuda_emulation.so"
    subprocess.run([CXX, "-std=c++17", "-O2", "-shared", "-fPIC", f"-I{os.path.join(ROOT, 'csrc', 'include')}",
                    f"-I{CUDA_INCLUDE}", os.path.join(ROOT, "csrc", "tests", "cuda_emulation.cpp"), "-o", str(so)],
                   check=True, capture_output=True, text=True)
    return ctypes.CDLL(str(so))


def ptr(t):
    assert t.dtype == torch.float32 and t.is_contiguous()
    return ctypes.cast(t.data_ptr(), f32p)


def layout(x, b, dim):
    if b is None:
        return 1, 1, x.numel()
    outer = int(torch.tensor(x.shape[:dim]).prod()) if dim else 1
    return outer, x.shape[dim], x.numel() // (outer * x.shape[dim])


@pytest.mark.parametrize("act,clamp", [("linear", None), ("lrelu", None), ("lrelu", 0.7)])
@pytest.mark.parametrize("dim,with_bias", [(0, True), (1, True), (3, True), (1, False)])
def test_bias_act_kernels(lib, act, clamp, dim, with_bias):
    torch.manual_seed(5)
    x = torch.randn(3, 5, 4, 6, dtype=torch.float64)
    b = torch.randn(x.shape[dim], dtype=torch.float64) if with_bias else None
    gain = 1.3
    xr = x.clone().requires_grad_()
    ref = bias_act_reference(xr, b, dim=dim, act=act, gain=gain, clamp=clamp)
    dy = torch.randn_like(ref)
    (ref_dx,) = torch.autograd.grad(ref, xr, dy)
    xf, bf = x.float().contiguous(), (b.float().contiguous() if b is not None else None)
    dyf = dy.float().contiguous()  # kept alive: the kernels get raw pointers
    y, dx = torch.empty_like(xf), torch.empty_like(xf)
    args = (*[I64(v) for v in layout(x, b, dim)], INT(1 if act == "lrelu" else 0), FLT(0.2), FLT(gain),
            FLT(-1.0 if clamp is None else clamp))
    lib.emu_bias_act(ptr(xf), ptr(bf) if bf is not None else None, ptr(y), *args)
    lib.emu_bias_act_grad(ptr(dyf), ptr(xf), ptr(bf) if bf is not None else None, ptr(dx), *args)
    torch.testing.assert_close(y.double(), ref.detach(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(dx.double(), ref_dx, rtol=1e-6, atol=1e-6)


def run_upfirdn2d(lib, x, f, up, down, padding, flip, gain):
    """The kernel on a float32 [N, C, H, W] tensor, with the filter prepared as the backend prepares it."""
    g = cb.correlation_filter(f, flip, gain)
    px0, px1, py0, py1 = padding
    oh, ow = output_size(x.shape[2], x.shape[3], g.shape[0], g.shape[1], up, down, padding)
    y = torch.empty(x.shape[0], x.shape[1], oh, ow)
    rc = lib.emu_upfirdn2d(ptr(x), ptr(g), ptr(y), I64(x.shape[0] * x.shape[1]), INT(x.shape[2]), INT(x.shape[3]),
                           INT(oh), INT(ow), INT(g.shape[0]), INT(g.shape[1]), INT(up), INT(down), INT(px0),
                           INT(py0))
    assert rc == 0
    return y


@pytest.mark.parametrize("up,down,padding,spec,flip", UPFIRDN_CASES)
def test_upfirdn2d_kernel_forward_and_backward(lib, up, down, padding, spec, flip):
    torch.manual_seed(6)
    x = torch.randn(2, 3, 37, 45, dtype=torch.float64, requires_grad=True)  # several 32x32 output tiles
    f = make_filter(spec)
    ref = upfirdn2d_reference(x, f, up=up, down=down, padding=padding, flip_filter=flip, gain=1.3)
    got = run_upfirdn2d(lib, x.detach().float().contiguous(), f, up, down, padding, flip, 1.3)
    torch.testing.assert_close(got.double(), ref.detach(), rtol=1e-5, atol=1e-5)
    # The backward the backend runs: the same kernel with up/down swapped, flipped filter, grad padding.
    dy = torch.randn_like(ref)
    (ref_dx,) = torch.autograd.grad(ref, x, dy)
    f_hw = (f.shape[0], f.shape[0]) if f.ndim == 1 else tuple(f.shape)
    pad = cb.upfirdn2d_grad_padding(x.shape[2:], ref.shape[2:], f_hw, up, down, padding)
    got_dx = run_upfirdn2d(lib, dy.float().contiguous(), f, down, up, pad, not flip, 1.3)
    torch.testing.assert_close(got_dx.double(), ref_dx, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode,crop,use_region", SEG_CASES)
def test_seg_head_kernel(lib, mode, crop, use_region):
    features, members, out_size, region = seg_inputs(crop, use_region, "cpu")
    packed = cb.pack_members(members, torch.device("cpu"))
    proj = cb.project(features, packed["w1"], torch.float32)
    y0, y1, x0, x1 = crop_box(out_size, crop)
    index = region.reshape(-1).nonzero().reshape(-1).to(torch.int32) if region is not None else None
    num_pixels = index.numel() if index is not None else (y1 - y0) * (x1 - x0)
    n, classes = features[0].shape[0], members[0].num_classes
    e, h1 = packed["b1"].shape
    logits = torch.empty(n, classes, num_pixels)
    maps = (f32p * len(proj))(*[ptr(p) for p in proj])
    hs = (INT * len(proj))(*[p.shape[1] for p in proj])
    ws = (INT * len(proj))(*[p.shape[2] for p in proj])
    rc = lib.emu_seg_head(maps, hs, ws, INT(len(proj)), INT(n), INT(e), INT(h1), INT(packed["b2"].shape[1]),
                          INT(classes), *[ptr(packed[k]) for k in ("b1", "w2t", "b2", "w3t", "b3")],
                          INT(out_size[0]), INT(out_size[1]), INT(y0), INT(x0), INT(x1 - x0),
                          ctypes.cast(index.data_ptr(), ctypes.POINTER(ctypes.c_int32)) if index is not None else None,
                          I64(num_pixels), INT(mode == "bilinear"), ptr(logits))
    assert rc == 0
    ref = seg_head_reference([f.double() for f in features], [m.to(torch.float64) for m in members], out_size,
                             crop=crop, mode=mode, region=region)
    if region is None:
        logits = logits.reshape(n, classes, y1 - y0, x1 - x0)
    torch.testing.assert_close(logits.double(), ref, rtol=1e-4, atol=1e-4)
