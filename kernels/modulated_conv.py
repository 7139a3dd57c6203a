"""Modulated convolution as an implicit GEMM, with StyleGAN2's whole epilogue fused.

Forward, per sample n (M = output pixels of one phase, N = Cout, K = Cin * T * T):
    out[n, o, UP*y + py, UP*x + px] = epi( d[n, o] * sum_{i, ty, tx} Wp[py, px, ty, tx, i, o]
                                                   * s[n, i] * x[n, i, y + OFF + ty, x + OFF + tx] )
- s (styles) scales the input as it is loaded (layout "nchw") or in a channel-contiguous pre-pass
  ("nhwc"), so no per-sample weight is ever built;
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

Tiling: a program computes BLOCK_P output pixels of one phase x BLOCK_CO output channels; its K loop runs over
input-channel blocks (outer) and taps (inner), each step one [BLOCK_P, BLOCK_CI] x [BLOCK_CI, BLOCK_CO] dot
(bf16/fp16 operands, fp32 accumulator; fp32 storage: tf32x3). Block sizes, warps, stages and the layout are
tuned per shape class on the device (Config, CANDIDATES, launch). Cost per layer (docs/gpu-performance.md):
FLOPs = 2 * N * OH * OW * Cout * Cin * k^2 (up=2: the same count, the blur is free); DRAM at least x once, out
once, the packed weight once (4 phases: 4x the weight for up=2); operand traffic into the SMs
T^2 * Cin * 2 bytes * (BLOCK_P + BLOCK_CO) per tile, i.e. every input element T^2 times per channel tile:
implicit GEMM without a shared-memory halo, which Triton cannot address.
"""
import functools
from typing import NamedTuple

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from . import INTERPRET
from .autotune import Tuner
from .bias_act import act_fwd, add
from .upfirdn2d import polyphase_sample


class Config(NamedTuple):
    """One launch configuration. layout "nchw": x is read as given (pixel-contiguous) and the style scales each
    loaded tile in registers; "nhwc": a pre-pass (`channels_last_kernel`) writes s * x channel-contiguous, so the
    style is applied once per input element and the conv's operand loads are 16-byte asynchronous copies
    straight into shared memory, pipelined over num_stages, at the price of one more read and write of x."""
    layout: str
    block_p: int   # output pixels per tile (GEMM M)
    block_co: int  # output channels per tile (GEMM N)
    block_ci: int  # input channels per K step (GEMM K, per tap)
    num_warps: int
    num_stages: int


# Candidates per (compute capability, storage element bytes), timed by the tuner on the device
# (kernels/autotune.py). bf16/fp16: shared memory per stage is (BLOCK_P + BLOCK_CO) * BLOCK_CI * 2 bytes, 16 KB
# (sm_80, K = 32) and 32 KB (sm_90, K = 64) for 128 x 128 tiles, so 3-4 stages fit in the 164 KB / 228 KB of
# an A100 / H100. fp32 storage multiplies in tf32x3 (each operand split into two tf32 halves in registers, three
# dots): K = 16 keeps that within the register file. The 64 x 64 tiles are for the small layers (4-16 px),
# where a 128-pixel tile is mostly masked and more tiles mean more SMs busy. Every candidate compiles for its
# capability with no register spills (kernels/aot.py, tests/test_triton_aot.py); a 128 x 128 nhwc tile on
# sm_90 spills (4 bytes at any stage count), so it is not one.
CANDIDATES = {
    (80, 2): (Config("nchw", 128, 128, 32, 8, 3), Config("nhwc", 128, 128, 32, 8, 3),
              Config("nhwc", 128, 64, 32, 4, 4), Config("nchw", 64, 64, 32, 4, 3)),
    (90, 2): (Config("nchw", 128, 128, 64, 8, 3), Config("nhwc", 128, 64, 64, 4, 4),
              Config("nhwc", 64, 128, 64, 4, 3), Config("nchw", 64, 64, 32, 4, 3)),
    (80, 4): (Config("nchw", 128, 128, 16, 8, 3), Config("nhwc", 128, 128, 16, 8, 3),
              Config("nhwc", 128, 64, 16, 4, 4), Config("nchw", 64, 64, 32, 4, 3)),
    (90, 4): (Config("nchw", 128, 128, 16, 8, 3), Config("nhwc", 128, 64, 16, 4, 4),
              Config("nhwc", 64, 128, 16, 4, 3), Config("nchw", 64, 64, 32, 4, 3)),
}
# The interpreter's cost is per program instance, so it gets large pixel tiles (as every kernel here does).
INTERPRETED = Config("nchw", 256, 64, 32, 4, 1)
PREPASS_P, PREPASS_C = 64, 64

TUNER = Tuner()


@functools.lru_cache(maxsize=None)
def _capability(device):
    major, _ = torch.cuda.get_device_capability(device)
    return 80 if major < 9 else 90


def candidates(device, dtype):
    """The candidates for the device and storage dtype: sm_8x gets sm_80's, sm_90 and newer sm_90's; the
    interpreter one."""
    if INTERPRET or device.type != "cuda":
        return (INTERPRETED,)
    return CANDIDATES[_capability(device), 4 if dtype == torch.float32 else 2]


def default_config(device, dtype):
    """Without timing (interpreter, tuning off, graph capture): the first candidate."""
    return candidates(device, dtype)[0]


def resolve(cfg, cin, cout):
    """The config as it runs on a layer: the channel tiles shrink to the channel count (at least 16, tl.dot's
    minimum), e.g. to 16 output channels for ToRGB's 3 and 16 input channels for its input gradient; a shrunk
    output tile runs at most 4 warps (at 8, ToRGB's 128 x 16 tile spills on sm_80 in fp16); and the nhwc layout
    needs whole 16-channel vectors (else its loads cannot be vectorized and the pre-pass buys nothing: nchw).
    At StyleGAN2's shapes only ToRGB and its gradient change (>= 64 channels elsewhere); kernels/aot.py compiles
    the resolved configs."""
    block_co = min(cfg.block_co, max(16, triton.next_power_of_2(cout)))
    return Config("nhwc" if cfg.layout == "nhwc" and cin % 16 == 0 else "nchw", cfg.block_p, block_co,
                  min(cfg.block_ci, max(16, triton.next_power_of_2(cin))),
                  cfg.num_warps if block_co == cfg.block_co else min(cfg.num_warps, 4), cfg.num_stages)


@triton.jit
def modconv_kernel(x_ptr, w_ptr, in_scale_ptr, out_scale_ptr, noise_ptr, bias_ptr, skip_ptr, c_ptr,
                   out_ptr, pre_ptr, xds_ptr, ds_ptr,
                   CIN, COUT, H, W, SX_C, SX_P, noise_stride_n, skip_py0, skip_px0, alpha, gain, clamp,
                   TAPS: tl.constexpr, OFFSET: tl.constexpr, UP: tl.constexpr,
                   HAS_IN_SCALE: tl.constexpr, HAS_OUT_SCALE: tl.constexpr, HAS_NOISE: tl.constexpr,
                   HAS_BIAS: tl.constexpr, ACT: tl.constexpr, HAS_CLAMP: tl.constexpr,
                   HAS_SKIP: tl.constexpr, FT: tl.constexpr, SAVE_PRE: tl.constexpr,
                   STYLE_GRAD: tl.constexpr, DOT_FP32: tl.constexpr, EVEN_CI: tl.constexpr,
                   BLOCK_P: tl.constexpr, BLOCK_CI: tl.constexpr, BLOCK_CO: tl.constexpr):
    """x[n, i, pixel] at x_ptr + (n * CIN * H * W) + i * SX_C + pixel * SX_P: NCHW (SX_P = 1) or NHWC (SX_C = 1;
    Triton specializes a stride of 1, so the loads along that axis are contiguous and, aligned, vectorized)."""
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
    # K loop: input-channel blocks outside, taps inside, so each block's style is loaded once and stays in
    # registers for all its taps. Each tap reads a shifted window of the input, a new tile (Triton has no
    # shifted views of a register tile), and that tile is scaled once as it is loaded; scaling each input
    # element exactly once needs the "nhwc" pre-pass, which the tuner weighs against its extra pass over x.
    for ci0 in range(0, CIN, BLOCK_CI):
        ci = ci0 + tl.arange(0, BLOCK_CI)
        kmask = ci < CIN
        if HAS_IN_SCALE:
            s = tl.load(in_scale_ptr + n * CIN + ci, mask=kmask, other=0.0)
        for t in range(TAPS * TAPS):
            ty = t // TAPS
            tx = t % TAPS
            iy = y + OFFSET + ty
            ix = x + OFFSET + tx
            ok = pmask & (iy >= 0) & (iy < H) & (ix >= 0) & (ix < W)
            a_ptrs = x_base + ci[None, :] * SX_C + (iy * W + ix)[:, None] * SX_P
            b_ptrs = w_base + (t * CIN + ci[:, None]) * COUT + co[None, :]
            if EVEN_CI:  # no mask along K: the channel-contiguous loads stay whole vectors
                a = tl.load(a_ptrs, mask=ok[:, None], other=0.0)
                b = tl.load(b_ptrs, mask=cmask[None, :], other=0.0)
            else:
                a = tl.load(a_ptrs, mask=ok[:, None] & kmask[None, :], other=0.0)
                b = tl.load(b_ptrs, mask=kmask[:, None] & cmask[None, :], other=0.0)
            if HAS_IN_SCALE:
                a = (a.to(tl.float32) * s[None, :]).to(a.dtype)
            if DOT_FP32:  # fp32 storage (tf32x3: ~fp32 accuracy), or the interpreter, whose bf16 dot is wrong
                acc += tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="tf32x3")
            else:  # bf16/fp16 operands, fp32 accumulator
                acc += tl.dot(a.to(b.dtype), b)

    oy = y * UP + py
    ox = x * UP + px
    OW = W * UP
    # Offsets inside the sample's output planes in int32 (COUT * OH * OW < 2^31 at any StyleGAN2 layer), from
    # one int64 base per sample: an int64 [BLOCK_P, BLOCK_CO] address tile would cost twice the registers,
    # and with the fp32 `pre` store beside `out` that spills at 128 x 128 tiles.
    plane = n * COUT * (H * UP * OW)
    opix = oy * OW + ox
    offs = co[None, :] * (H * UP * OW) + opix[:, None]
    omask = pmask[:, None] & cmask[None, :]
    if STYLE_GRAD:  # dL/ds[n, co] += sum over pixels of x * h (h = acc, before the out-scale s)
        xv = tl.load(xds_ptr + plane + offs, mask=omask, other=0.0).to(tl.float32)
        tl.atomic_add(ds_ptr + n * COUT + co, tl.reduce(xv * acc, 0, add), mask=cmask)
    v = acc
    if HAS_OUT_SCALE:
        v = v * tl.load(out_scale_ptr + n * COUT + co, mask=cmask, other=0.0)[None, :]
    if HAS_NOISE:
        v = v + tl.load(noise_ptr + n * noise_stride_n + opix, mask=pmask, other=0.0).to(tl.float32)[:, None]
    if HAS_BIAS:
        v = v + tl.load(bias_ptr + co, mask=cmask, other=0.0).to(tl.float32)[None, :]
    if SAVE_PRE:
        tl.store(pre_ptr + plane + offs, v, mask=omask)
    v = act_fwd(v, ACT, alpha, gain, clamp, HAS_CLAMP)
    if HAS_SKIP:  # ToRGB: + upsample2d(skip), read straight from the half-resolution skip image
        sh = H * UP // 2
        sw = OW // 2
        v += polyphase_sample(skip_ptr + (n * COUT + co[None, :]) * sh * sw, oy[:, None], ox[:, None], sh, sw,
                              c_ptr, FT, FT, 2, 1, skip_py0, skip_px0, omask)
    tl.store(out_ptr + plane + offs, v.to(out_ptr.dtype.element_ty), mask=omask)


@triton.jit
def channels_last_kernel(x_ptr, s_ptr, out_ptr, C, HW, HAS_SCALE: tl.constexpr,
                         BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    """out[n, pixel, c] = s[n, c] * x[n, c, pixel] (fp32 product, rounded to out's dtype as the in-kernel
    scaling rounds it): the "nhwc" layout's pre-pass. Loads run along pixels and stores along channels, both
    contiguous; Triton transposes the tile through shared memory."""
    n = tl.program_id(2).to(tl.int64)
    p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    m = (p < HW)[:, None] & (c < C)[None, :]
    v = tl.load(x_ptr + n * C * HW + c[None, :] * HW + p[:, None], mask=m, other=0.0)
    if HAS_SCALE:
        v = v.to(tl.float32) * tl.load(s_ptr + n * C + c, mask=c < C, other=0.0)[None, :]
    tl.store(out_ptr + n * C * HW + p[:, None] * C + c[None, :], v.to(out_ptr.dtype.element_ty), mask=m)


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
           dot_fp32=True, backward=False, out_dtype=None, config=None):
    """modconv_kernel on x [N, Cin, H, W] contiguous; returns (out, pre or None, ds or None).

    backward=True uses packed["bwd"] (x is then the phase-split gradient) and, given style_grad_x (the
    forward input), also returns sum_z x * h per (n, channel). `config` (a Config) defaults to the tuner's
    choice for this shape class, dtype and variant (timed on the first call on a CUDA device: a host sync)."""
    n, cin, h, w_ = x.shape
    wt = packed["bwd"] if backward else packed["fwd"]
    taps, off = packed["taps"], packed["bwd_off"] if backward else packed["off"]
    cout = wt.shape[-1]
    oh, ow = h * up, w_ * up
    if max(cin * h * w_, cout * oh * ow) >= 2**31:
        raise ValueError(f"modulated conv: a sample's planes ({cin}x{h}x{w_} in, {cout}x{oh}x{ow} out) reach 2^31 "
                         "elements, past the kernel's int32 offsets")
    has_clamp = clamp is not None and clamp >= 0
    noise_stride = 0
    if noise is not None:  # broadcastable to [N, 1, OH, OW]: one plane shared by all samples, or one each
        per_sample = noise.ndim == 4 and noise.shape[0] == n and n > 1
        noise = noise.expand(n, 1, oh, ow)
        noise = noise.contiguous() if per_sample else noise[:1].contiguous()
        noise_stride = oh * ow if per_sample else 0
    dtype = out_dtype or x.dtype

    def outputs():
        return (torch.empty((n, cout, oh, ow), dtype=dtype, device=x.device),
                torch.empty((n, cout, oh, ow), dtype=torch.float32, device=x.device) if save_pre else None,
                torch.zeros((n, cout), dtype=torch.float32, device=x.device) if style_grad_x is not None else None)

    def run(cfg, out, pre, ds):
        cfg = resolve(cfg, cin, cout)
        xin, scale, sx_c, sx_p = x, in_scale, h * w_, 1
        if cfg.layout == "nhwc":
            xin, scale, sx_c, sx_p = torch.empty((n, h, w_, cin), dtype=x.dtype, device=x.device), None, 1, cin
            channels_last_kernel[(triton.cdiv(h * w_, PREPASS_P), triton.cdiv(cin, PREPASS_C), n)](
                x, in_scale if in_scale is not None else x, xin, cin, h * w_, HAS_SCALE=in_scale is not None,
                BLOCK_P=PREPASS_P, BLOCK_C=PREPASS_C)
        dummy = x
        grid = (triton.cdiv(h * w_, cfg.block_p) * up * up, triton.cdiv(cout, cfg.block_co), n)
        modconv_kernel[grid](
            xin, wt, scale if scale is not None else dummy, out_scale if out_scale is not None else dummy,
            noise if noise is not None else dummy, bias if bias is not None else dummy,
            skip if skip is not None else dummy, skip_kernel if skip_kernel is not None else dummy,
            out, pre if pre is not None else dummy, style_grad_x if style_grad_x is not None else dummy,
            ds if ds is not None else dummy,
            cin, cout, h, w_, sx_c, sx_p, noise_stride, skip_pad0, skip_pad0, float(alpha), float(gain),
            float(clamp) if has_clamp else 0.0,
            TAPS=taps, OFFSET=off, UP=up, HAS_IN_SCALE=scale is not None, HAS_OUT_SCALE=out_scale is not None,
            HAS_NOISE=noise is not None, HAS_BIAS=bias is not None, ACT=1 if act == "lrelu" else 0,
            HAS_CLAMP=has_clamp, HAS_SKIP=skip is not None,
            FT=skip_kernel.shape[0] if skip_kernel is not None else 1, SAVE_PRE=save_pre,
            STYLE_GRAD=style_grad_x is not None, DOT_FP32=dot_fp32, EVEN_CI=cin % cfg.block_ci == 0,
            BLOCK_P=cfg.block_p, BLOCK_CI=cfg.block_ci, BLOCK_CO=cfg.block_co,
            num_warps=cfg.num_warps, num_stages=cfg.num_stages)

    if config is None:
        # One shape class per layer: the shapes, dtypes and every flag that selects a different compiled variant.
        key = (tuple(x.shape), cout, up, taps, backward, x.dtype, wt.dtype, dtype, in_scale is not None,
               out_scale is not None, noise is not None, noise_stride, bias is not None, act, has_clamp,
               skip is not None, save_pre, style_grad_x is not None, dot_fp32, x.device)
        scratch = []  # the timed runs write (and accumulate ds) here, allocated only if timing happens

        def trial(cfg):
            if not scratch:
                scratch.extend(outputs())
            run(cfg, *scratch)
        config = TUNER.choose(key, candidates(x.device, x.dtype), trial, default_config(x.device, x.dtype))
    out, pre, ds = outputs()
    run(config, out, pre, ds)
    return out, pre, ds
