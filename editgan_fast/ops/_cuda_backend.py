"""The `cuda` backend: hand-written CUDA kernels (csrc/cuda, built as editgan_fast._cuda, reached as
torch.ops.editgan_fast_cuda.*) behind autograd Functions with the reference signatures.

- bias_act: forward kernel; its backward is the derivative-mask kernel (dx = dy * act'(x + b)), db a sum.
- upfirdn2d: polyphase kernel; its backward is upfirdn2d itself with up/down swapped, the filter flipped and
  the padding from `upfirdn2d_grad_padding`, so it is differentiable to any order.
- seg_head: the tile kernel after one projection GEMM per feature map. Gradients (the refinement step) go to
  the next backend (triton), whose head has a backward; the kernel here serves inference (`apply`).
Operators this backend lacks (modulated_conv2d) fall back to triton through backend.py. The kernels store
float32, float16 or bfloat16 (the backend's compute dtype, else the input's) and accumulate in fp32;
float64 inputs (gradcheck) go to the next backend.
"""
import importlib

import torch

from .. import backend, native
from ._derived import DerivedCache, member_tensors

DEVICES = {"cuda"}
_KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _extension_error():
    mismatch = native.torch_mismatch()  # checked first: importing a binary of another ABI may crash
    if mismatch:
        return mismatch
    try:
        importlib.import_module("editgan_fast._cuda")
    except ImportError as e:
        return (f"the CUDA extension is not built ({e}); it builds when torch has CUDA and nvcc is present "
                f"(`make setup` on such a machine)")
    return None


def unavailable_reason():
    reason = _extension_error()
    if reason is None and not torch.cuda.is_available():
        reason = "no CUDA device"
    return reason


def upfirdn2d_grad_padding(in_hw, out_hw, f_hw, up, down, padding):
    """Padding (px0, px1, py0, py1) of the upfirdn2d that maps the output gradient back to the input:
    upfirdn2d(dy, f, up=down, down=up, padding=this, flip_filter=not flip_filter, gain=gain).
    The transposed operator reads the taps mirrored, so the leading pad becomes f - 1 - pad0, and the
    trailing pad is whatever makes the result exactly in_hw."""
    px0, _, py0, _ = padding
    (ih, iw), (oh, ow), (fh, fw) = in_hw, out_hw, f_hw
    return (fw - px0 - 1, iw * up - ow * down + px0 - up + 1,
            fh - py0 - 1, ih * up - oh * down + py0 - up + 1)


def correlation_filter(f, flip_filter, gain):
    """The 2-D fp32 filter the kernel correlates with: separable filters expanded (the reference splits the
    gain as sqrt per axis; the product is the same), true convolution turned into correlation by a flip."""
    f = f.float()
    g = torch.outer(f, f) * gain if f.ndim == 1 else f * gain
    return g.contiguous() if flip_filter else g.flip([0, 1]).contiguous()


def _storage(x):
    return backend.current().dtype or x.dtype


def _next_backend_op(op):
    """The implementation the fallback chain gives `op` after this backend (triton, else the reference)."""
    name = "triton" if backend.available("triton") else "reference"
    with backend.use_backend(name):
        return backend.resolve(op, torch.empty(0, device="cuda"))


def pack_members(members, device):
    """Members folded (BatchNorm into the next Linear) and stacked: W1 [E*H1, D] for the projection and the
    tile kernel's b1 [E,H1], w2t [E,H1,H2], b2 [E,H2], w3t [E,H2,C], b3 [E,C] (dense weights k-major, so a
    warp's output units read consecutive addresses), all fp32 on `device`."""
    folded = [[(w.to(device, torch.float32), b.to(device, torch.float32)) for w, b in m.folded()] for m in members]
    stack = lambda layer, k: torch.stack([f[layer][k] for f in folded]).contiguous()
    return {"w1": torch.cat([f[0][0] for f in folded]).contiguous(), "b1": stack(0, 1),
            "w2t": stack(1, 0).transpose(1, 2).contiguous(), "b2": stack(1, 1),
            "w3t": stack(2, 0).transpose(1, 2).contiguous(), "b3": stack(2, 1)}


def project(features, w1, dtype):
    """The first layer of every member applied at each map's own resolution, summed over the maps that share a
    resolution (resampling is linear, so their sum resamples as one map: half the kernel's gathers for
    StyleGAN2's two maps per resolution). A list of [N, h, w, E*H1] fp32, one per distinct size."""
    by_size, start = {}, 0
    for f in features:
        n, c, h, w = f.shape
        wm = w1[:, start:start + c].to(dtype)
        start += c
        pixels = f.to(dtype).permute(0, 2, 3, 1).reshape(n, h * w, c)
        p = torch.matmul(pixels, wm.t()).float().reshape(n, h, w, -1)
        by_size[(h, w)] = by_size[(h, w)] + p if (h, w) in by_size else p
    return [p.contiguous() for p in by_size.values()]


_packed_ensembles = DerivedCache()  # every member tensor and the device -> the packed ensemble, while they live


def _packed(members, device):
    return _packed_ensembles.get(member_tensors(members), (device, tuple(m.bn_eps for m in members)),
                                 lambda: pack_members(members, device))


OPS = {}
if unavailable_reason() is None:
    from .bias_act import _defaults
    from .seg_head import crop_box
    from .upfirdn2d import parse_padding

    _ops = torch.ops.editgan_fast_cuda
    _ACT_CODES = {"linear": 0, "lrelu": 1}

    # ---------------------------------------------------------------- bias_act
    class _BiasAct(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, b, dim, act, alpha, gain, clamp):
            x = x.contiguous()
            b = b.to(x.dtype).contiguous() if b is not None else None
            ctx.save_for_backward(x, b)
            ctx.args = (dim, act, alpha, gain, clamp)
            return _ops.bias_act(x, b, dim, act, alpha, gain, clamp)

        @staticmethod
        @torch.autograd.function.once_differentiable
        def backward(ctx, dy):
            x, b = ctx.saved_tensors
            dim, act, alpha, gain, clamp = ctx.args
            dx = _ops.bias_act_grad(dy.to(x.dtype).contiguous(), x, b, dim, act, alpha, gain, clamp)
            db = None
            if b is not None and ctx.needs_input_grad[1]:
                db = dx.float().sum([i for i in range(dx.ndim) if i != dim]).to(b.dtype)
            return dx, db, None, None, None, None, None

    def bias_act(x, b=None, dim=1, act="linear", alpha=None, gain=None, clamp=None):
        dtype = _storage(x)
        if dtype not in _KERNEL_DTYPES:
            return _next_backend_op("bias_act")(x, b, dim=dim, act=act, alpha=alpha, gain=gain, clamp=clamp)
        alpha, gain = _defaults(act, alpha, gain)
        clamp = -1.0 if clamp is None or clamp < 0 else float(clamp)
        return _BiasAct.apply(x.to(dtype), b, dim if b is not None else 1, _ACT_CODES[act], alpha, gain, clamp)

    # ---------------------------------------------------------------- upfirdn2d
    class _Upfirdn2d(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, f, up, down, padding, flip_filter, gain):
            ctx.args = (f, up, down, padding, flip_filter, gain, tuple(x.shape[2:]))
            g = correlation_filter(f, flip_filter, gain)
            px0, px1, py0, py1 = padding
            return _ops.upfirdn2d(x.contiguous(), g, up, down, px0, px1, py0, py1)

        @staticmethod
        def backward(ctx, dy):
            f, up, down, padding, flip_filter, gain, in_hw = ctx.args
            f_hw = (f.shape[0], f.shape[0]) if f.ndim == 1 else tuple(f.shape)
            pad = upfirdn2d_grad_padding(in_hw, tuple(dy.shape[2:]), f_hw, up, down, padding)
            dx = _Upfirdn2d.apply(dy, f, down, up, pad, not flip_filter, gain)
            return dx, None, None, None, None, None, None

    def upfirdn2d(x, f, up=1, down=1, padding=0, flip_filter=False, gain=1.0):
        dtype = _storage(x)
        if dtype not in _KERNEL_DTYPES:
            return _next_backend_op("upfirdn2d")(x, f, up=up, down=down, padding=padding,
                                                  flip_filter=flip_filter, gain=gain)
        return _Upfirdn2d.apply(x.to(dtype), f, int(up), int(down), parse_padding(padding), bool(flip_filter),
                                float(gain))

    # ---------------------------------------------------------------- seg_head
    def seg_head(features, members, out_size, crop=None, mode="bilinear", region=None):
        dtype = _storage(features[0])
        needs_grad = torch.is_grad_enabled() and any(f.requires_grad for f in features)
        if needs_grad or dtype not in _KERNEL_DTYPES or len({f.shape[2:] for f in features}) > 32:
            return _next_backend_op("seg_head")(features, members, out_size, crop=crop, mode=mode, region=region)
        y0, y1, x0, x1 = crop_box(out_size, crop)
        packed = _packed(members, features[0].device)
        proj = project(features, packed["w1"], dtype)
        index = None
        num_pixels = (y1 - y0) * (x1 - x0)
        if region is not None:
            index = region.reshape(-1).nonzero().reshape(-1).to(torch.int32)
            num_pixels = index.numel()
        logits = _ops.seg_head(proj, packed["b1"], packed["w2t"], packed["b2"], packed["w3t"], packed["b3"],
                               out_size[0], out_size[1], y0, x0, y1 - y0, x1 - x0, index, num_pixels,
                               mode == "bilinear")
        if region is None:
            logits = logits.reshape(logits.shape[0], logits.shape[1], y1 - y0, x1 - x0)
        return logits.to(features[0].dtype)

    OPS = {"bias_act": bias_act, "upfirdn2d": upfirdn2d, "seg_head": seg_head}
