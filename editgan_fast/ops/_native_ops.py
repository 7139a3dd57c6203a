"""Fake kernels and vmap rules of the native kernels below the cpu backend (csrc/cpu/*.cpp, torch.ops.editgan_fast).

The C++ files define and implement the ops for CPU only; here each gets
- a fake kernel (`torch.library.register_fake`): its outputs' shapes and dtypes, so FakeTensor, torch.compile and
  torch.export can trace a call of it (tests/test_custom_ops.py runs `torch.library.opcheck` on each);
- a vmap rule (`torch.library.register_vmap`): the vmapped dimension folded into the kernel's own batch
  (ops/_vmap.py), so torch.func.vmap over the cpu backend calls each kernel once, with or without gradients.
They have no autograd formula of their own: the cpu backend differentiates them in its autograd Functions
(ops/_cpu_layers.py, ops/_cpu_seg.py).

Ops without tensor arguments (seg_head_source_range, seg_head_packed_block, set_cpu_isa, cpu_isa_info) need
neither.
"""
from __future__ import annotations

import torch

from . import _vmap

_LIB = "editgan_fast::"


def _register(name, fake, sample=None):
    """Register `fake`, and (given `sample`) a vmap rule folding the arguments at positions `sample` (per-sample
    tensors or tensor lists) into the batch and unfolding every tensor result."""
    torch.library.register_fake(_LIB + name, fake)
    if sample is None:
        return

    def rule(info, in_dims, *args):
        args, n = _vmap.fold(info, in_dims, args, sample, name)
        out = getattr(torch.ops.editgan_fast, name)(*args)
        if isinstance(out, torch.Tensor):
            return _vmap.unfold(info, out, n), 0
        return type(out)(_vmap.unfold(info, t, n) for t in out), type(out)(0 for _ in out)

    torch.library.register_vmap(_LIB + name, rule)


def _epilogue_forward(y, d, noise, bias, residual, act, alpha, gain, clamp):
    torch._check(y.dim() == 4, lambda: "epilogue: y must be NCHW")
    return torch.empty_like(y, memory_format=torch.contiguous_format)


def _epilogue_backward(grad_out, y, d, noise, bias, act, alpha, gain, clamp):
    return torch.empty_like(y, memory_format=torch.contiguous_format), y.new_empty((y.shape[0], y.shape[1]))


def _fir_separable(x, taps, pad0, pad1, d=None, noise=None, bias=None, act=0, alpha=0.2, gain=1.0, clamp=-1.0):
    return _fir_upsample(x, taps, 1, pad0, pad1)


def _fir_upsample(x, taps, up, pad0, pad1):
    torch._check(x.dim() == 4 and taps.dim() == 1, lambda: "fir_separable/fir_upsample: x must be NCHW, taps 1-D")
    n, c, h, w = x.shape
    grow = pad0 + pad1 - taps.shape[0] + 1
    dtype = torch.float32 if x.dtype == torch.bfloat16 else x.dtype  # bf16 is read, filtered and written in fp32
    return x.new_empty((n, c, h * up + grow, w * up + grow), dtype=dtype)


def _winograd_conv(x, u, scale, bt, window, at, out_tile, up, out_h, out_w, d=None, noise=None, bias=None, act=0,
                   alpha=0.2, gain=1.0, clamp=-1.0):
    torch._check(x.dim() == 4 and u.dim() == 3, lambda: "winograd_conv: x must be NCHW, u [alpha^2, K, C]")
    return x.new_empty((x.shape[0], u.shape[1], out_h, out_w))


def _seg_head_forward(sources, direct, sizes, offsets, pix_y, pix_x, out_h, out_w, mode, b1, w2, b2, w3, b3,
                      tile_pixels=0, bf16_products=False, packed=True, separable=True, w1d_pack=None,
                      w2_pack=None):
    return b1.new_empty((sources[0].shape[0], w3.shape[1], pix_y.shape[0]))  # [N, C, P], w3 [E, C, H2]


def _seg_head_infer(sources, direct, maps, map_groups, group_weights, sizes, offsets, pix_y, pix_x, out_h, out_w,
                    mode, b1, w2, b2, w3, b3, tile_pixels=0, packed=True, separable=True, w1d_pack=None,
                    w2_pack=None):
    # The batch: a direct group's source [N, rows, cols, K] or a projected group's map [N, C, h, w] (the other
    # list holds empty placeholders).
    n = next(t.shape[0] for t in (*sources, *maps) if t.dim() == 4)
    return b1.new_empty((n, w3.shape[1], pix_y.shape[0]))


def _seg_head_backward(grad_out, sources, direct, sizes, offsets, pix_y, pix_x, out_h, out_w, mode, b1, w2, b2, w3,
                       b3, tile_pixels=0, bf16_products=False, packed=True, separable=True, w1d_pack=None,
                       w2_pack=None):
    return [b1.new_empty(s.shape) for s in sources]  # gradients in the compute dtype, bf16 sources included


_register("epilogue_forward", _epilogue_forward, sample=(0, 1, 2, 4))       # y, d, noise, residual
_register("epilogue_backward", _epilogue_backward, sample=(0, 1, 2, 3))     # grad_out, y, d, noise
_register("fir_separable", _fir_separable, sample=(0, 4, 5))                # x, d, noise
_register("fir_upsample", _fir_upsample, sample=(0,))                       # x
_register("winograd_conv", _winograd_conv, sample=(0, 2, 10, 11))           # x, scale, d, noise
_register("seg_head_forward", _seg_head_forward, sample=(0,))               # sources
_register("seg_head_infer", _seg_head_infer)  # inference only: torch.func's wrapped features take seg_head_forward
_register("seg_head_backward", _seg_head_backward, sample=(0, 1))           # grad_out, sources
