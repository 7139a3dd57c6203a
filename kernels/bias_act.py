"""bias_act: y = clamp(act(x + b[c]) * gain, -clamp, clamp), element-wise, and its input gradient.

Algebra (the same as csrc/include/editgan/elementwise.h, so every backend agrees bit for bit in fp32):
    s = x + b[c],  act = identity or leaky ReLU (slope alpha for s <= 0),  y = clamp(act(s) * gain)
    dy/dx = gain * (alpha if act is lrelu and s <= 0 else 1), zero where |act(s) * gain| > clamp.
The channel of flat element i is (i // inner) % C, with inner = prod(shape[dim+1:]).

Cost per element: 4 FLOPs, bytes = read x + write y (2 x itemsize) forward; backward reads x and dy and
writes dx (3 x itemsize). Purely bandwidth bound: on an H100 (~3 TB/s) a 512x512x64 bf16 map takes ~22 us.
"""
import triton
import triton.language as tl

from . import tile

LINEAR, LRELU = 0, 1
BLOCK = tile(1024, 4096)


@triton.jit
def add(a, b):
    """The combine function of sums (tl.reduce(x, axis, add) instead of tl.sum; see kernels/__init__.py)."""
    return a + b


@triton.jit
def act_fwd(s, ACT: tl.constexpr, alpha, gain, clamp, HAS_CLAMP: tl.constexpr):
    """clamp(act(s) * gain) for an fp32 tile; shared by the conv epilogue."""
    if ACT == 1:
        s = tl.where(s > 0, s, s * alpha)
    s = s * gain
    if HAS_CLAMP:
        s = tl.minimum(tl.maximum(s, -clamp), clamp)
    return s


@triton.jit
def act_grad(s, ACT: tl.constexpr, alpha, gain, clamp, HAS_CLAMP: tl.constexpr):
    """d act_fwd / ds at the pre-activation s (torch's conventions at the kinks)."""
    g = tl.full(s.shape, 1.0, tl.float32) * gain
    if ACT == 1:
        g = tl.where(s > 0, g, g * alpha)
    if HAS_CLAMP:
        y = s * g
        g = tl.where((y < -clamp) | (y > clamp), 0.0, g)
    return g


@triton.jit
def bias_act_kernel(x_ptr, b_ptr, y_ptr, gy_ptr, numel, inner, C, alpha, gain, clamp,
                    HAS_BIAS: tl.constexpr, ACT: tl.constexpr, HAS_CLAMP: tl.constexpr,
                    BACKWARD: tl.constexpr, BLOCK: tl.constexpr):
    """Forward: y = act(x + b). Backward (BACKWARD=True): y = gy * act'(x + b), i.e. dL/dx."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    s = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        c = (offs // inner) % C
        s += tl.load(b_ptr + c, mask=mask, other=0.0).to(tl.float32)
    if BACKWARD:
        gy = tl.load(gy_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        out = gy * act_grad(s, ACT, alpha, gain, clamp, HAS_CLAMP)
    else:
        out = act_fwd(s, ACT, alpha, gain, clamp, HAS_CLAMP)
    tl.store(y_ptr + offs, out.to(y_ptr.dtype.element_ty), mask=mask)


def launch(x, b, dim, act, alpha, gain, clamp, grad_y=None):
    """x contiguous; returns act(x + b) or, given grad_y (contiguous, like x), dL/dx. Output dtype = x's."""
    import torch
    out = torch.empty_like(x)
    numel = x.numel()
    if numel == 0:
        return out
    inner = 1
    for s in x.shape[dim + 1:]:
        inner *= s
    has_clamp = clamp is not None and clamp >= 0
    bias_act_kernel[(triton.cdiv(numel, BLOCK),)](
        x, b if b is not None else x, out, grad_y if grad_y is not None else x, numel, inner,
        x.shape[dim] if b is not None else 1, float(alpha), float(gain), float(clamp) if has_clamp else 0.0,
        HAS_BIAS=b is not None, ACT=LRELU if act == "lrelu" else LINEAR, HAS_CLAMP=has_clamp,
        BACKWARD=grad_y is not None, BLOCK=BLOCK)
    return out
