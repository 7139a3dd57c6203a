"""modulated_conv2d, upfirdn2d and bias_act on the `cpu` backend.

The exact algebra, with the heavy products in ATen's oneDNN convolutions (they run at matmul rate) and every
element-wise step in one native pass (csrc/cpu/epilogue.cpp):
- styles are folded into the input: conv(x, W * s) == conv(x * s, W), so ONE convolution with the shared frozen
  weight serves the whole batch, never a per-sample weight;
- demodulation d[n, o] = rsqrt(sum_i wsq[o, i] s[n, i]^2 + eps) is one small matrix product, applied after the
  convolution (it only scales output channels);
- up=2 is the stride-2 transposed convolution itself (9 products per input pixel; it never multiplies inserted
  zeros), then the [1,3,3,1] blur as one native separable pass (csrc/cpu/fir.cpp). (Folding the blur into
  per-phase 3x3 weights would also skip the zeros but costs 36 products per input pixel.)
- layers with enough channels (WINOGRAD_MIN_CHANNELS) run their 3x3 products as tile transforms
  (csrc/cpu/winograd.cpp, batched matrix products, exact up to rounding), the style scaling folded into the
  input transform: F(4x4, 3x3) for the "same" convolution (4x fewer products; its input gradient is the same
  kernel with the adjoint weight) and F(2, 2) per phase for the transposed one (1.44x fewer);
- ToRGB (1x1) is one batched matrix product with the per-sample [3, C] weight (the style folded into the tiny
  weight, not into the input); its skip is upsampled by the native separable FIR, polyphase (fir_upsample: no
  product with an inserted zero), and added inside the epilogue pass;
- the epilogue (demodulation, noise, bias, leaky ReLU, gain, clamp, skip) is one native pass forward and one
  backward (recomputing the pre-activation instead of storing it); without gradients it runs inside the kernel
  that writes the layer's output (the Winograd output transform, the blur pass), row by row while in cache.
Gradients flow to the input and the styles (autograd through the convolutions, the native epilogue backward);
weights, biases and filters are frozen and get none.

The bf16 mode (backend dtype torch.bfloat16) stores layer outputs in bf16 and accumulates in fp32. Its products
(the convolutions) run as the switch EDITGAN_FAST_BF16_PRODUCTS says (ops/_cpu_isa.py; by default: in bf16 on
CPUs where oneDNN has native bf16, in fp32 on bf16-stored values elsewhere, e.g. AVX2 machines, where oneDNN's
bf16 convolution is ~500x slower than fp32). With bf16 products the boundary to fp32 is the convolution's output:
oneDNN returns bf16, the blur (fir_separable) reads bf16 and writes fp32, and the epilogue, ToRGB's skip and the
gradients' element-wise steps work in fp32; the layer stores its result in bf16. The Winograd kernels stay fp32
(oneDNN's bf16 convolution is the bf16 product path).
"""
from __future__ import annotations

import dataclasses
import functools
import math
import weakref

import torch
import torch.nn.functional as F

from .. import backend
from . import _function
from ._cpu_isa import native_bf16_products
from .bias_act import _defaults
from .modulated_conv2d import skip_padding, up_blur_padding
from .upfirdn2d import parse_padding

_ACT = {"linear": 0, "lrelu": 1}


def _native():
    return torch.ops.editgan_fast


class _Epilogue(torch.autograd.Function):
    """out = bias_act(y * d + noise, bias) + residual, natively; grads for y, d and residual."""

    generate_vmap_rule = True  # the native kernels have vmap rules (ops/_native_ops.py)

    @staticmethod
    def forward(y, d, noise, bias, residual, act, alpha, gain, clamp):
        return _native().epilogue_forward(y, d, noise, bias, residual, act, alpha, gain, clamp)

    @staticmethod
    def setup_context(ctx, inputs, output):
        y, d, noise, bias, _, *params = inputs
        ctx.save_for_backward(y, d, noise, bias)
        ctx.params = tuple(params)

    @staticmethod
    def backward(ctx, grad_out):
        y, d, noise, bias = ctx.saved_tensors
        grad_y, grad_d = _native().epilogue_backward(grad_out.contiguous(), y, d, noise, bias, *ctx.params)
        return (grad_y, grad_d if d is not None and ctx.needs_input_grad[1] else None, None, None,
                grad_out if ctx.needs_input_grad[4] else None, None, None, None, None)


def _cast(t, dtype):
    """t in dtype, without a dispatch when it already is (Tensor.to costs ~2.5 us even then, and a layer makes a
    dozen such calls: at the real-time path's one image per call that is a visible share of a frame)."""
    return t if t.dtype == dtype else t.to(dtype)


def _epilogue_args(shape, dtype, d=None, noise=None, bias=None, act="linear", alpha=None, gain=None, clamp=None):
    """(d, noise, bias, act, alpha, gain, clamp) as the native kernels take them for an output of `shape`."""
    alpha, gain = _defaults(act, alpha, gain)
    prep = lambda t: None if t is None else _cast(t.detach(), dtype).contiguous()
    if noise is not None:
        noise = noise.reshape(-1, 1, *shape[2:])  # [1 | N, 1, H, W]
    if d is not None:
        d = _cast(d, dtype).contiguous()  # not detached: the autograd epilogue differentiates it
    return d, prep(noise), prep(bias), _ACT[act], alpha, gain, -1.0 if clamp is None or clamp < 0 else float(clamp)


def _epilogue(y, d=None, noise=None, bias=None, residual=None, act="linear", alpha=None, gain=None, clamp=None):
    d, noise, bias, *params = _epilogue_args(y.shape, y.dtype, d, noise, bias, act, alpha, gain, clamp)
    if residual is not None:
        residual = _cast(residual, y.dtype).contiguous()
    return _function.call(_Epilogue, y.contiguous(), d, noise, bias, residual, *params)


class SeparableFir(torch.autograd.Function):
    """Native separable FIR with zero padding (csrc/cpu/fir.cpp); its adjoint is itself, taps reversed.
    A bf16 x gives a float32 result (taps float32); its gradient is returned in bf16."""

    generate_vmap_rule = True  # the native kernels have vmap rules (ops/_native_ops.py)

    @staticmethod
    def forward(x, taps, pad0, pad1):
        return _native().fir_separable(x, taps, pad0, pad1)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, taps, pad0, pad1 = inputs
        ctx.save_for_backward(taps)
        ctx.pads, ctx.x_dtype = (pad0, pad1), x.dtype

    @staticmethod
    def backward(ctx, grad):
        (taps,) = ctx.saved_tensors
        n = taps.shape[0]
        pad0, pad1 = ctx.pads
        grad_x = _function.call(SeparableFir, grad.to(taps.dtype).contiguous(), taps.flip(0), n - 1 - pad0,
                                n - 1 - pad1)
        return grad_x.to(ctx.x_dtype), None, None, None


class UpsampleFir(torch.autograd.Function):
    """Native polyphase FIR upsampling by `up` (fir_upsample: no product with an inserted zero). Its
    adjoint is the up = 1 kernel with the taps reversed, sampled every up-th output: grad_x[j] =
    sum_t g[t] grad[up j + pad0 - t], i.e. pad (taps - 1 - pad0) before, enough after. pad0 <= taps - 1."""

    generate_vmap_rule = True  # the native kernel has a vmap rule (ops/_native_ops.py)

    @staticmethod
    def forward(x, taps, pad0, pad1, up):
        return _native().fir_upsample(x, taps, up, pad0, pad1)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, taps, pad0, pad1, up = inputs
        ctx.save_for_backward(taps)
        ctx.pad0, ctx.up, ctx.x_shape, ctx.x_dtype = pad0, up, x.shape, x.dtype

    @staticmethod
    def backward(ctx, grad):
        (taps,) = ctx.saved_tensors
        n, up = taps.shape[0], ctx.up
        h, w = ctx.x_shape[2:]
        before = n - 1 - ctx.pad0
        # The sampled outputs reach (size - 1) * up: pad after so that the full output covers it on both axes.
        after = max(0, max((h - 1) * up - grad.shape[2], (w - 1) * up - grad.shape[3]) + n - before)
        full = _function.call(SeparableFir, grad.to(taps.dtype).contiguous(), taps.flip(0), before, after)
        grad_x = full[:, :, :(h - 1) * up + 1:up, :(w - 1) * up + 1:up].contiguous()  # NCHW, as x
        return grad_x.to(ctx.x_dtype), None, None, None, None


def _constant(fn):
    """Memoize a small constant tensor built from Python values. It is built with functorch's transforms disabled:
    built inside torch.func.grad/vmap, it would be that transform's wrapper, storage-less once the transform ends,
    and every later call would get the dead wrapper."""
    @functools.lru_cache(maxsize=64)
    @functools.wraps(fn)
    def build(*args):
        with torch._C._DisableFuncTorch():
            return fn(*args)
    return build


@_constant
def _eps(eps, dtype):
    """demodulation's epsilon as a tensor, so it is added inside the product (addmm) instead of by one more op."""
    return torch.tensor(eps, dtype=dtype)


@_constant
def _blur_taps(taps, dtype, gain=4.0):
    """1-D taps for a true convolution with the normalized filter, each axis carrying sqrt(gain)."""
    f = torch.tensor(taps, dtype=torch.float64)
    return (f / f.sum() * gain ** 0.5).flip(0).to(dtype)


# ------------------------------------------------------------------------------------------ frozen-weight caches
class _PerWeightCache:
    """Derived tensors of frozen weights, keyed by the weight tensor's identity and version."""

    def __init__(self, build, size=256):
        self.build, self.size, self.entries = build, size, {}

    def get(self, weight, *extra):
        key = (id(weight), weight._version, weight.dtype, *extra)
        hit = self.entries.get(key)
        if hit is not None and hit[0]() is weight:
            return hit[1]
        value = self.build(weight.detach(), *extra)
        if len(self.entries) >= self.size:
            self.entries.pop(next(iter(self.entries)))
        # An entry goes with its weight (a temporary weight must not pin its derived tensors until eviction).
        self.entries[key] = (weakref.ref(weight, lambda _, key=key: self.entries.pop(key, None)), value)
        return value


# A frozen weight in the compute dtype (bf16 products, or a bf16 generator computing in fp32): one converted tensor
# per weight, so the caches below keyed by identity keep hitting.
_in_dtype = _PerWeightCache(lambda w, dtype: w.to(dtype))
_transposed = _PerWeightCache(lambda w: w.transpose(0, 1).contiguous())  # [Cin, Cout, k, k] for conv_transpose
_sum_squares = _PerWeightCache(lambda w: w.square().sum(dim=[2, 3]))

# ------------------------------------------------------------------------------- Winograd-style convolutions
@dataclasses.dataclass(frozen=True)
class WinogradSet:
    """Per-axis transforms of a tile convolution (csrc/cpu/winograd.cpp): out_tile outputs per tile from a
    `window`-sample input window, `alpha` products; out = A^T [(G g G^T) . (B^T d B)] A in 2-D."""
    bt: tuple     # [alpha][window]
    g: tuple      # [alpha][3]: kernel taps -> transformed taps
    at: tuple     # [out_tile][alpha]
    up: int

    @property
    def alpha(self):
        return len(self.bt)

    @functools.cached_property
    def native_args(self):
        """(B^T flat, window, A^T flat, out_tile, up): the kernel's transform arguments, built once."""
        flat = lambda m: [float(v) for row in m for v in row]
        return flat(self.bt), len(self.bt[0]), flat(self.at), len(self.at), self.up


# F(4x4, 3x3) (Lavin & Gray's points 0, +-1, +-2, infinity): the 3x3 "same" convolution, 36 products per 4x4
# output tile instead of 144, 2.25 transformed values per pixel. Its coefficients reach 8 (F(2x2, 3x3)'s are
# +-1), so its float32 error is ~10x larger (measured ~3e-6 relative), still far below bf16's.
SAME_3X3 = WinogradSet(
    bt=((4, 0, -5, 0, 1, 0), (0, -4, -4, 1, 1, 0), (0, 4, -4, -1, 1, 0), (0, -2, -1, 2, 1, 0), (0, 2, -1, -2, 1, 0),
        (0, 4, 0, -5, 0, 1)),
    g=((1 / 4, 0, 0), (-1 / 6, -1 / 6, -1 / 6), (-1 / 6, 1 / 6, -1 / 6), (1 / 24, 1 / 12, 1 / 6),
       (1 / 24, -1 / 12, 1 / 6), (0, 0, 1)),
    at=((1, 1, 1, 1, 1, 0), (0, 1, -1, 2, -2, 0), (0, 1, 1, 4, 4, 0), (0, 1, -1, 8, -8, 1)), up=1)
# The stride-2 transposed 3x3 convolution t[2q] = x[q] w0 + x[q-1] w2, t[2q+1] = x[q] w1 per axis, over windows
# d = x[2m-1 .. 2m+1] giving t[4m .. 4m+3]: the even phase by F(2, 2) (products (d0-d1) w2, d1 (w0+w2),
# (d2-d1) w0), the odd phase directly (d1 w1, d2 w1): 25 products per 4 input pixels instead of 36.
TRANSPOSED_3X3_UP2 = WinogradSet(
    bt=((1, -1, 0), (0, 1, 0), (0, -1, 1), (0, 1, 0), (0, 0, 1)),
    g=((0, 0, 1), (1, 0, 1), (1, 0, 0), (0, 1, 0), (0, 1, 0)),
    at=((1, 1, 0, 0, 0), (0, 0, 0, 1, 0), (0, 1, 1, 0, 0), (0, 0, 0, 0, 1)), up=2)


def winograd_weight(w, spec=SAME_3X3):
    """U [alpha^2, K, C] = G g G^T per (output k, input c) 3x3 kernel g = w[k, c], computed in float64."""
    g = torch.tensor(spec.g, dtype=torch.float64)
    u = torch.einsum("ia,kcab,jb->ijkc", g, w.double(), g)
    return u.reshape(spec.alpha ** 2, w.shape[0], w.shape[1]).to(w.dtype).contiguous()


def winograd_conv(x, u, spec, scale=None, epilogue=()):
    """The tile convolution of x * scale[:, :, None, None] (scale optional, [N, C]) with transformed weight u;
    output H*up (+1 for the transposed convolution's full output). `epilogue`: _epilogue_args, applied to each
    output row as it is written (no gradient)."""
    h, w = x.shape[2] * spec.up, x.shape[3] * spec.up
    extra = 0 if spec.up == 1 else 1
    return _native().winograd_conv(x, u, scale, *spec.native_args, h + extra, w + extra, *epilogue)


# Layers with at least this many input and output channels take the Winograd path, per `up`. Below it the
# transforms, which are memory-bound, cost what they save (measured at 2 threads: F(4x4, 3x3) 1.5x faster than
# oneDNN at 64 channels, 2.5x at 512; the transposed set 1.0x at 64 output channels, 1.3x at 256, and at 64
# its output comes from the native output pool: no 67 MB fresh allocation per call).
WINOGRAD_MIN_CHANNELS = {1: 64, 2: 64}
# ... and at least this many input pixels per image, per `up`: on small maps a tile row is a few tiles, the
# transforms' loops are that short, and oneDNN wins (measured 2026-12-02, 2 threads, N = 1 / 16: 96 channels at
# 16 px 0.93 / 14.6 ms vs 0.66 / 5.4; 128 and 256 channels at 16 px 1.2-1.3x slower, at 32 px even; up=2 from
# 16 and 32 px 1.1-1.5x slower below 512 channels, from 64 px 0.8-0.9x) ...
WINOGRAD_MIN_PIXELS = {1: 1024, 2: 4096}
# ... except for wide layers, whose products dominate from 16 px on (512 channels: 4 px 10.2 ms vs 2.4 direct,
# 8 px 10.4 vs 6.4, 16 px 10.4 vs 18.6; up=2 from 4 px 11.6 vs 3.2, from 8 px 11.5 vs 9.0, from 16 px equal).
WINOGRAD_WIDE_CHANNELS, WINOGRAD_WIDE_MIN_PIXELS = 512, 256
_winograd_u = {spec: _PerWeightCache(functools.partial(winograd_weight, spec=spec))
               for spec in (SAME_3X3, TRANSPOSED_3X3_UP2)}
# conv2d's input gradient is the 3x3 "same" convolution with the adjoint weight (in/out swapped, flipped).
_winograd_u_adjoint = _PerWeightCache(lambda w: winograd_weight(w.transpose(0, 1).flip([2, 3])))


class Winograd3x3(torch.autograd.Function):
    """conv2d(x * s, w, padding=1) (up=1) or conv_transpose2d(x * s, w^T, stride=2) (up=2) by the tile
    transforms, s [N, C] scaling the input channels inside the input transform. The gradient of x * s comes from
    Winograd with the adjoint weight (up=1) or the stride-2 convolution (up=2). w is frozen."""

    generate_vmap_rule = True  # the native kernels have vmap rules (ops/_native_ops.py)

    @staticmethod
    def forward(x, s, w, up):
        spec = SAME_3X3 if up == 1 else TRANSPOSED_3X3_UP2
        return winograd_conv(x, _winograd_u[spec].get(w), spec, scale=s)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, s, w, up = inputs
        ctx.save_for_backward(x, s)
        ctx.weight, ctx.up = w, up

    @staticmethod
    def backward(ctx, grad):
        x, s = ctx.saved_tensors
        grad = grad.contiguous()
        if ctx.up == 1:
            grad_xs = winograd_conv(grad, _winograd_u_adjoint.get(ctx.weight), SAME_3X3)
        else:
            grad_xs = F.conv2d(grad, _transposed.get(ctx.weight), stride=2)
        grad_x = grad_xs * s[:, :, None, None] if ctx.needs_input_grad[0] else None
        grad_s = (grad_xs * x).sum([2, 3]) if ctx.needs_input_grad[1] else None
        return grad_x, grad_s, None, None


def _use_winograd(x, w, up):
    channels, pixels = min(w.shape[0], w.shape[1]), x.shape[2] * x.shape[3]
    return w.shape[-1] == 3 and channels >= WINOGRAD_MIN_CHANNELS[up] and x.dtype in (torch.float32, torch.float64) \
        and (pixels >= WINOGRAD_MIN_PIXELS[up] or channels >= WINOGRAD_WIDE_CHANNELS and
             pixels >= WINOGRAD_WIDE_MIN_PIXELS)


def _scaled(x, s):
    return x * s[:, :, None, None]


def _fold_into_weight(x, w):
    """One image whose input is larger than the weight: scaling the weight's input channels instead of the
    input costs less and allocates no scaled copy of x (the 512 px layers: 8M input values, 74K weights)."""
    return x.shape[0] == 1 and w.numel() < x.numel()


def _conv_same(x, s, w):
    """conv2d(x * s, w, padding=k // 2) with the frozen weight w (the same tensor on every call: its transforms
    are cached by identity)."""
    if w.shape[-1] == 1:  # ToRGB: a per-sample [K, C] weight is tiny, so the style goes into it, not into x
        n, c, h, width = x.shape
        return torch.bmm(w.detach()[None, :, :, 0, 0] * s[:, None, :], x.reshape(n, c, h * width)).view(
            n, -1, h, width)
    if _use_winograd(x, w, 1):
        return _function.call(Winograd3x3, x, s, w, 1)
    if _fold_into_weight(x, w):
        return F.conv2d(x, w.detach() * s[0][None, :, None, None], padding=w.shape[-1] // 2)
    return F.conv2d(_scaled(x, s), w.detach(), padding=w.shape[-1] // 2)


def _conv_transpose_up2(x, s, w):
    """The stride-2 transposed convolution of x * s with w [Cout, Cin, k, k] (its full output, (H-1)*2 + k)."""
    if _use_winograd(x, w, 2):
        return _function.call(Winograd3x3, x, s, w, 2)
    if _fold_into_weight(x, w):
        return F.conv_transpose2d(x, _transposed.get(w) * s[0][:, None, None, None], stride=2)
    return F.conv_transpose2d(_scaled(x, s), _transposed.get(w), stride=2)


# ------------------------------------------------------------------------------------------------------- ops
def _storage_dtype(x):
    return torch.bfloat16 if backend.compute_dtype(x.dtype) == torch.bfloat16 else x.dtype


def modulated_conv2d_cpu(x, weight, styles, demodulate=True, up=1, resample_filter=None, wsq=None, noise=None,
                         bias=None, act="linear", alpha=None, gain=None, clamp=None, skip=None, eps=1e-8):
    k = weight.shape[-1]
    taps = None if resample_filter is None else tuple(resample_filter.tolist())
    store = _storage_dtype(x)
    bf16_products = store == torch.bfloat16 and native_bf16_products()
    compute = torch.bfloat16 if bf16_products else (torch.float32 if x.dtype == torch.bfloat16 else x.dtype)
    w = weight if weight.dtype == compute else _in_dtype.get(weight, compute)
    xc, sc = _cast(x, compute), _cast(styles, compute)
    y_dtype = torch.float32 if compute == torch.bfloat16 else compute
    d = None
    if demodulate:
        sq = _cast(wsq.detach() if wsq is not None else _sum_squares.get(weight), y_dtype)
        d = torch.rsqrt(torch.addmm(_eps(eps, y_dtype), _cast(styles, y_dtype).square(), sq.t()))
    # Without gradients (generation, apply) the epilogue runs inside the kernel that writes the layer's output
    # ([N, Cout, H * up, W * up]), on each row while it is in cache: one pass less over the largest tensors.
    fused = None
    if skip is None and not (torch.is_grad_enabled() and (x.requires_grad or styles.requires_grad)):
        fused = _epilogue_args((x.shape[0], w.shape[0], x.shape[2] * up, x.shape[3] * up), y_dtype, d, noise,
                               bias, act, alpha, gain, clamp)
    out = None
    if up == 1:
        if fused and _use_winograd(xc, w, 1):
            out = winograd_conv(xc, _winograd_u[SAME_3X3].get(w), SAME_3X3, scale=sc, epilogue=fused)
        else:
            y = _conv_same(xc, sc, w)
    else:
        # Transposed conv (9 taps per input pixel, no inserted zeros), then the blur as one native separable pass:
        # 4x fewer products than the equivalent 3x3 conv per output phase at low resolution (36 taps per pixel).
        p0, p1 = up_blur_padding(k, len(taps))
        t = _conv_transpose_up2(xc, sc, w)
        blur = _blur_taps(taps, y_dtype)  # a bf16 t is read as bf16, filtered in fp32
        if fused:
            out = _native().fir_separable(t, blur, p0, p1, *fused)
        else:
            y = _function.call(SeparableFir, t, blur, p0, p1)
    if out is None:
        y = _cast(y, y_dtype)
        residual = None
        if skip is not None:  # ToRGB's skip, upsampled 2x with the filter (gain 4), polyphase
            p0, p1 = skip_padding(len(taps))
            residual = _function.call(UpsampleFir, _cast(skip, y.dtype), _blur_taps(taps, y.dtype), p0, p1, 2)
        out = _epilogue(y, d, noise, bias, residual, act, alpha, gain, clamp)
    return out.to(store) if store != out.dtype else out


def bias_act_cpu(x, b=None, dim=1, act="linear", alpha=None, gain=None, clamp=None):
    shape = x.shape
    outer = math.prod(shape[:dim])
    channels = shape[dim] if x.ndim else 1
    inner = math.prod(shape[dim + 1:])
    if b is not None and b.requires_grad:
        raise ValueError("the cpu backend treats biases as frozen; use the reference backend to train them")
    store = _storage_dtype(x)
    xv = x.reshape(outer, channels, inner, 1)
    if xv.dtype == torch.bfloat16:
        xv = xv.float()
    out = _epilogue(xv, None, None, b, None, act, alpha, gain, clamp).reshape(shape)
    return out.to(store) if store != out.dtype else out


def _native_fir(x, f, up, down, pads, gain):
    """upfirdn2d by the native separable kernels when they apply: a 1-D filter, no downsampling, the same pads
    on both axes within the filter's reach (their adjoints' pads, taps - 1 - pad, stay >= 0), a positive gain.
    `f` is already the correlation filter in the compute dtype. None otherwise."""
    px0, px1, py0, py1 = pads
    taps = f.shape[0]
    if f.ndim != 1 or down != 1 or (px0, px1) != (py0, py1) or not (0 <= px0 < taps and 0 <= px1 < taps) \
            or gain <= 0:
        return None
    g = f * gain ** 0.5  # per axis
    if up == 1:
        return _function.call(SeparableFir, x.contiguous(), g, px0, px1)
    return _function.call(UpsampleFir, x.contiguous(), g, px0, px1, up)


def upfirdn2d_cpu(x, f, up=1, down=1, padding=0, flip_filter=False, gain=1.0):
    """Polyphase: a separable filter without downsampling runs in the native FIR kernels (fir_separable,
    fir_upsample); otherwise up > 1 is a stride-`up` transposed convolution (it never multiplies inserted zeros),
    then the padding is applied as a crop/pad of its full output, and down > 1 is a strided convolution."""
    px0, px1, py0, py1 = parse_padding(padding)
    n, c, h, w = x.shape
    dtype = torch.float32 if x.dtype == torch.bfloat16 else x.dtype
    f = f.detach().to(dtype)
    if not flip_filter:
        f = f.flip(list(range(f.ndim)))  # true convolution = correlation with the flipped filter
    store = _storage_dtype(x)
    out = _native_fir(x, f, up, down, (px0, px1, py0, py1), gain)  # the kernels read bf16, write fp32
    if out is not None:
        return out.to(store) if store != out.dtype else out
    if f.ndim == 1:
        f = torch.outer(f, f) * gain
    else:
        f = f * gain
    fh, fw = f.shape
    xx = _cast(x, dtype)
    if up > 1:
        # conv_transpose(x, g)[q] = sum_j x[j] g[q - up*j] and out[p] = that at q = p + F - 1 - pad0 with g = the
        # unflipped filter: crop/pad the full output accordingly, then stride by `down`.
        g = f.flip([0, 1])
        full = F.conv_transpose2d(xx, g.expand(c, 1, fh, fw).contiguous(), stride=up, groups=c)
        oh, ow = h * up + py0 + py1 - fh + 1, w * up + px0 + px1 - fw + 1
        top, left = fh - 1 - py0, fw - 1 - px0
        full = F.pad(full, [-left, ow - (full.shape[3] - left), -top, oh - (full.shape[2] - top)])
        out = full[:, :, ::down, ::down]
    else:
        xx = F.pad(xx, [px0, px1, py0, py1])
        out = F.conv2d(xx, f.expand(c, 1, fh, fw).contiguous(), stride=down, groups=c)
    return out.to(store) if store != out.dtype else out


OPS = {"modulated_conv2d": modulated_conv2d_cpu, "bias_act": bias_act_cpu, "upfirdn2d": upfirdn2d_cpu}
