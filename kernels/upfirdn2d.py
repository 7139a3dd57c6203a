"""upfirdn2d, polyphase: upsample by zero insertion, pad, FIR filter, downsample, without touching zero taps.

With c the correlation kernel (the flipped filter for a true convolution, gain folded in) and u the input
upsampled by `up` then padded by (py0, px0):
    out[y, x] = sum_{a, b} c[a, b] u[y*down + a, x*down + b],   u[p, q] = x[(p - py0)/up, (q - px0)/up]
where u is zero unless (p - py0) and (q - px0) are multiples of `up`. For output row y only the taps
a = a0(y) + t*up, t < ceil(fh/up), hit a real sample (a0 = the phase of y*down - py0), so each output reads
ceil(fh/up) x ceil(fw/up) inputs: 4 instead of 16 for StyleGAN2's up=2, 4-tap filter.

The input gradient is the same operation with up and down swapped, the kernel flipped and the padding
mirrored (see `backward_padding`), so one kernel serves both directions.

Cost per output: 2 * ceil(fh/up) * ceil(fw/up) FLOPs; minimum bytes = read x + write out (the filter is
cached). Bandwidth bound: an up=2 of a [1, 512, 256, 256] bf16 map (64 MiB out) is ~30 us on an H100.
"""
import triton
import triton.language as tl

from . import tile

BLOCK = tile(256, 4096)


@triton.jit
def polyphase_sample(base, y, x, H, W, c_ptr, FH: tl.constexpr, FW: tl.constexpr, UP: tl.constexpr,
                     DOWN: tl.constexpr, py0, px0, mask):
    """sum_{a,b} c[a,b] u[y*DOWN + a, x*DOWN + b] for a tile of output coordinates (fp32).

    base: pointer(s) to the [H, W] input plane(s), broadcastable against y and x. Also the fused skip-path
    upsampler of the ToRGB convolution."""
    by = y * DOWN - py0
    bx = x * DOWN - px0
    ay0 = (UP - ((by % UP) + UP) % UP) % UP  # first tap whose source row is a real (non-inserted) sample
    ax0 = (UP - ((bx % UP) + UP) % UP) % UP
    acc = tl.full(y.shape, 0.0, tl.float32) + tl.full(x.shape, 0.0, tl.float32)
    for ty in tl.static_range((FH + UP - 1) // UP):
        a = ay0 + ty * UP
        iy = (by + a) // UP
        ok_y = (a < FH) & (iy >= 0) & (iy < H)
        for tx in tl.static_range((FW + UP - 1) // UP):
            b = ax0 + tx * UP
            ix = (bx + b) // UP
            ok = ok_y & (b < FW) & (ix >= 0) & (ix < W) & mask
            w = tl.load(c_ptr + a * FW + b, mask=ok, other=0.0)
            v = tl.load(base + iy * W + ix, mask=ok, other=0.0).to(tl.float32)
            acc += w * v
    return acc


@triton.jit
def upfirdn2d_kernel(x_ptr, c_ptr, out_ptr, H, W, OH, OW, py0, px0,
                     FH: tl.constexpr, FW: tl.constexpr, UP: tl.constexpr, DOWN: tl.constexpr,
                     BLOCK: tl.constexpr):
    plane = tl.program_id(0).to(tl.int64)
    o = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = o < OH * OW
    y = o // OW
    x = o % OW
    acc = polyphase_sample(x_ptr + plane * H * W, y, x, H, W, c_ptr, FH, FW, UP, DOWN, py0, px0, mask)
    tl.store(out_ptr + plane * OH * OW + o, acc.to(out_ptr.dtype.element_ty), mask=mask)


def correlation_kernel(f, flip_filter, gain):
    """The fp32 2-D kernel c the kernels correlate with: the filter flipped unless flip_filter, times gain."""
    import torch
    f = f.float()
    c = torch.outer(f, f) if f.ndim == 1 else f
    if not flip_filter:
        c = c.flip([0, 1])
    return (c * gain).contiguous()


def backward_padding(h, w, oh, ow, fh, fw, up, down, padding):
    """Padding (px0, px1, py0, py1) of the transposed operation (dy -> dx): the forward's mirror image."""
    px0, _, py0, _ = padding
    return (fw - px0 - 1, w * up - ow * down + px0 - up + 1, fh - py0 - 1, h * up - oh * down + py0 - up + 1)


def launch(x, c, up, down, padding, out_hw):
    """x [N, C, H, W] contiguous, c the fp32 correlation kernel; returns [N, C, OH, OW] in x's dtype."""
    import torch
    n, ch, h, w = x.shape
    oh, ow = out_hw
    px0, _, py0, _ = padding
    out = torch.empty((n, ch, oh, ow), dtype=x.dtype, device=x.device)
    upfirdn2d_kernel[(n * ch, triton.cdiv(oh * ow, BLOCK))](
        x, c, out, h, w, oh, ow, py0, px0, FH=c.shape[0], FW=c.shape[1], UP=up, DOWN=down, BLOCK=BLOCK)
    return out
