"""Modulated convolution as an implicit GEMM, with StyleGAN2's whole epilogue fused.

Forward, per sample n (M = output pixels of one phase, N = Cout, K = Cin * T * T):
    out[n, o, UP*y + py, UP*x + px] = epi( d[n, o] * sum_{i, ty, tx} Wp[py, px, ty, tx, i, o]
                                                   * s[n, i] * x[n, i, y + OFF + ty, x + OFF + tx] )
- s (styles) scales the input tile as it is loaded, so no per-sample weight is ever built;
- d = rsqrt(sum_i wsq[o, i] s[n, i]^2 + eps) is demodulation from the precomputed wsq = sum_k W^2 (one
  [N, Cin] x [Cin, Cout] product, done by the caller), applied to the accumulator;
- epi(v) = clamp(act(v + noise + bias) * gain) (+ the 2x upsampled skip, ToRGB's fused skip path).
For up=1, Wp is W itself (T = k, OFF = -k//2). For up=2 (transposed stride-2 conv, then the 4-tap blur with
gain 4) both steps are linear, so they fuse into one kernel Keff = W (*) blur of size k + ft - 1 (6 for k=3);
each of the 4 output phases (py, px) uses every other tap of Keff: a 3x3 conv at low resolution with weight
Wp[py, px] precomputed once from the frozen weight. No zero-inserted tap is ever multiplied.

Backward (weights are frozen; gradients for x, styles, noise, bias and skip):
    gv = dL/dpre (bias_act's backward kernel),  h[n, i, z] = sum_{o, t} Wp[..] gv[n, o, ..] d[n, o]
is the same GEMM on gv with the weight transposed and flipped (up=2: gv split into its 4 phases, 4*Cout
input channels), so this kernel computes it too, with in-scale d and out-scale s:  dL/dx = h * s,
dL/ds (direct) = sum_z x * h, accumulated in the epilogue (STYLE_GRAD). The demodulation term
dL/ds[n, i] -= s[n, i] sum_o wsq[o, i] d^3 sum_p gv (pre - noise - bias) / d is small and done by the caller.

Cost at 512 px (Cin = Cout = 512 at 64 px ... 64 at 512 px): FLOPs = 2 * N * OH * OW * Cout * Cin * k^2
(up=2: the same count, the blur is free); minimum bytes = read x + write out + weight once. At Cin=Cout=128,
512x512, k=3 that is 77 GFLOP and ~130 MiB bf16: ~0.1 ms compute-bound on an H100 at ~790 TFLOP/s bf16.
"""
import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from . import tile
from .bias_act import act_fwd, add
from .upfirdn2d import polyphase_sample

BLOCK_P, BLOCK_CI, BLOCK_CO = tile(64, 256), 32, 64


@triton.jit
def modconv_kernel(x_ptr, w_ptr, in_scale_ptr, out_scale_ptr, noise_ptr, bias_ptr, skip_ptr, c_ptr,
                   out_ptr, pre_ptr, xds_ptr, ds_ptr,
                   CIN, COUT, H, W, noise_stride_n, skip_py0, skip_px0, alpha, gain, clamp,
                   TAPS: tl.constexpr, OFFSET: tl.constexpr, UP: tl.constexpr,
                   HAS_IN_SCALE: tl.constexpr, HAS_OUT_SCALE: tl.constexpr, HAS_NOISE: tl.constexpr,
                   HAS_BIAS: tl.constexpr, ACT: tl.constexpr, HAS_CLAMP: tl.constexpr,
                   HAS_SKIP: tl.constexpr, FT: tl.constexpr, SAVE_PRE: tl.constexpr,
                   STYLE_GRAD: tl.constexpr, DOT_FP32: tl.constexpr,
                   BLOCK_P: tl.constexpr, BLOCK_CI: tl.constexpr, BLOCK_CO: tl.constexpr):
    n = tl.program_id(2).to(tl.int64)
    phase = tl.program_id(0) % (UP * UP)
    ptile = tl.program_id(0) // (UP * UP)
    py = phase // UP
    px = phase % UP
    p = ptile * BLOCK_P + tl.arange(0, BLOCK_P)
    co = tl.program_id(1) * BLOCK_CO + tl.arange(0, BLOCK_CO)
    pmask = p < H * W
    cmask = co < COUT
    y = p // W
    x = p % W

    acc = tl.full((BLOCK_P, BLOCK_CO), 0.0, tl.float32)
    x_base = x_ptr + n * CIN * H * W
    w_base = w_ptr + phase * TAPS * TAPS * CIN * COUT
    for t in range(TAPS * TAPS):  # one K loop over (tap, input-channel block): the implicit GEMM
        ty = t // TAPS
        tx = t % TAPS
        iy = y + OFFSET + ty
        ix = x + OFFSET + tx
        ok = pmask & (iy >= 0) & (iy < H) & (ix >= 0) & (ix < W)
        for ci0 in range(0, CIN, BLOCK_CI):
            ci = ci0 + tl.arange(0, BLOCK_CI)
            kmask = ci < CIN
            a = tl.load(x_base + ci[None, :] * H * W + (iy * W + ix)[:, None],
                        mask=ok[:, None] & kmask[None, :], other=0.0)
            if HAS_IN_SCALE:  # the style, applied as the tile is loaded
                s = tl.load(in_scale_ptr + n * CIN + ci, mask=kmask, other=0.0)
                a = (a.to(tl.float32) * s[None, :]).to(a.dtype)
            b = tl.load(w_base + (t * CIN + ci[:, None]) * COUT + co[None, :],
                        mask=kmask[:, None] & cmask[None, :], other=0.0)
            if DOT_FP32:  # fp32 storage (tf32x3: ~fp32 accuracy), or the interpreter, whose bf16 dot is wrong
                acc += tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="tf32x3")
            else:
                acc += tl.dot(a.to(b.dtype), b)

    oy = y * UP + py
    ox = x * UP + px
    OW = W * UP
    plane = (n * COUT + co[None, :]) * (H * UP * OW)
    opix = (oy * OW + ox)[:, None]
    omask = pmask[:, None] & cmask[None, :]
    if STYLE_GRAD:  # dL/ds[n, co] += sum over pixels of x * h (h = acc, before the out-scale s)
        xv = tl.load(xds_ptr + plane + opix, mask=omask, other=0.0).to(tl.float32)
        tl.atomic_add(ds_ptr + n * COUT + co, tl.reduce(xv * acc, 0, add), mask=cmask)
    v = acc
    if HAS_OUT_SCALE:
        v = v * tl.load(out_scale_ptr + n * COUT + co, mask=cmask, other=0.0)[None, :]
    if HAS_NOISE:
        v = v + tl.load(noise_ptr + n * noise_stride_n + oy * OW + ox, mask=pmask, other=0.0).to(tl.float32)[:, None]
    if HAS_BIAS:
        v = v + tl.load(bias_ptr + co, mask=cmask, other=0.0).to(tl.float32)[None, :]
    if SAVE_PRE:
        tl.store(pre_ptr + plane + opix, v, mask=omask)
    v = act_fwd(v, ACT, alpha, gain, clamp, HAS_CLAMP)
    if HAS_SKIP:  # ToRGB: + upsample2d(skip), read straight from the half-resolution skip image
        sh = H * UP // 2
        sw = OW // 2
        v += polyphase_sample(skip_ptr + (n * COUT + co[None, :]) * sh * sw, oy[:, None], ox[:, None], sh, sw,
                              c_ptr, FT, FT, 2, 1, skip_py0, skip_px0, omask)
    tl.store(out_ptr + plane + opix, v.to(out_ptr.dtype.element_ty), mask=omask)


def up_phase_weights(weight, resample_filter, blur_pad0):
    """Per-phase weights of the fused up=2 conv + blur: ([4, T, T, Cin, Cout], T, OFF), fp32.

    Keff = full 2-D convolution of each k x k kernel with the blur (gain 4). Output row 2y + ph reads input
    rows y + dy with Keff tap m = c - 2 dy, c = ph + ft - 1 - blur_pad0 (from out[Y] = sum_y x[y] Keff[Y + ft
    - 1 - pad0 - 2y]); T covers the dy of both phases, missing taps are zero."""
    cout, cin, k, _ = weight.shape
    f = resample_filter.float()
    ft = f.shape[0]
    g = torch.outer(f, f) * 4
    keff = F.conv2d(weight.float().reshape(cout * cin, 1, k, k), g.flip([0, 1])[None, None], padding=ft - 1)
    length = k + ft - 1
    keff = F.pad(keff.reshape(cout, cin, length, length), [0, 1, 0, 1])  # index `length` reads a zero
    cs = [ph + ft - 1 - blur_pad0 for ph in (0, 1)]
    dys = [dy for c in cs for dy in range(-length, length + 1) if 0 <= c - 2 * dy < length]
    off, taps = min(dys), max(dys) - min(dys) + 1
    idx = torch.tensor([[c - 2 * (off + j) if 0 <= c - 2 * (off + j) < length else length for j in range(taps)]
                        for c in cs], device=weight.device)  # [phase, tap] -> Keff index
    w = keff[:, :, idx[:, None, :, None], idx[None, :, None, :]]  # [Cout, Cin, phy, phx, T, T]
    return w.permute(2, 3, 4, 5, 1, 0).reshape(4, taps, taps, cin, cout), taps, off


def pack_weights(weight, up, resample_filter, blur_pad0, dtype):
    """Forward and input-gradient weights of one layer (precomputed once per frozen weight).

    Returns dict(fwd=[PH, T, T, Cin, Cout], bwd=[1, T, T, PH*Cout, Cin], taps, off, bwd_off)."""
    cout, cin, k, _ = weight.shape
    if up == 1:
        w, taps, off = weight.float().permute(2, 3, 1, 0)[None], k, -(k // 2)
    else:
        w, taps, off = up_phase_weights(weight, resample_filter, blur_pad0)
    # dL/dx[z] = sum_{ph, t} Wp[ph, t] g_ph[z - off - t]: flip the taps, phases become input channels.
    bwd = w.flip([1, 2]).permute(1, 2, 0, 4, 3).reshape(1, taps, taps, w.shape[0] * cout, cin)
    return dict(fwd=w.to(dtype).contiguous(), bwd=bwd.to(dtype).contiguous(), taps=taps, off=off,
                bwd_off=-off - (taps - 1))


def launch(x, packed, up, in_scale=None, out_scale=None, noise=None, bias=None, act="linear", alpha=0.2,
           gain=1.0, clamp=None, skip=None, skip_kernel=None, skip_pad0=0, save_pre=False, style_grad_x=None,
           dot_fp32=True, backward=False, out_dtype=None):
    """One launch of modconv_kernel. x [N, Cin, H, W] contiguous; returns (out, pre or None, ds or None).

    backward=True uses packed["bwd"] (x is then the phase-split gradient) and, given style_grad_x (the
    forward input), also returns sum_z x * h per (n, channel)."""
    n, cin, h, w_ = x.shape
    wt = packed["bwd"] if backward else packed["fwd"]
    taps, off = packed["taps"], packed["bwd_off"] if backward else packed["off"]
    cout = wt.shape[-1]
    oh, ow = h * up, w_ * up
    out = torch.empty((n, cout, oh, ow), dtype=out_dtype or x.dtype, device=x.device)
    pre = torch.empty((n, cout, oh, ow), dtype=torch.float32, device=x.device) if save_pre else None
    ds = torch.zeros((n, cout), dtype=torch.float32, device=x.device) if style_grad_x is not None else None
    has_clamp = clamp is not None and clamp >= 0
    noise_stride = 0
    if noise is not None:  # broadcastable to [N, 1, OH, OW]: one plane shared by all samples, or one each
        per_sample = noise.ndim == 4 and noise.shape[0] == n and n > 1
        noise = noise.expand(n, 1, oh, ow)
        noise = noise.contiguous() if per_sample else noise[:1].contiguous()
        noise_stride = oh * ow if per_sample else 0
    dummy = x
    grid = (triton.cdiv(h * w_, BLOCK_P) * up * up, triton.cdiv(cout, BLOCK_CO), n)
    modconv_kernel[grid](
        x, wt, in_scale if in_scale is not None else dummy, out_scale if out_scale is not None else dummy,
        noise if noise is not None else dummy, bias if bias is not None else dummy,
        skip if skip is not None else dummy, skip_kernel if skip_kernel is not None else dummy,
        out, pre if pre is not None else dummy, style_grad_x if style_grad_x is not None else dummy,
        ds if ds is not None else dummy,
        cin, cout, h, w_, noise_stride, skip_pad0, skip_pad0, float(alpha), float(gain),
        float(clamp) if has_clamp else 0.0,
        TAPS=taps, OFFSET=off, UP=up, HAS_IN_SCALE=in_scale is not None, HAS_OUT_SCALE=out_scale is not None,
        HAS_NOISE=noise is not None, HAS_BIAS=bias is not None, ACT=1 if act == "lrelu" else 0,
        HAS_CLAMP=has_clamp, HAS_SKIP=skip is not None,
        FT=skip_kernel.shape[0] if skip_kernel is not None else 1, SAVE_PRE=save_pre,
        STYLE_GRAD=style_grad_x is not None, DOT_FP32=dot_fp32,
        BLOCK_P=BLOCK_P, BLOCK_CI=BLOCK_CI, BLOCK_CO=BLOCK_CO)
    return out, pre, ds
