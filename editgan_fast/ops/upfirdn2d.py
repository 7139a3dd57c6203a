"""upfirdn2d: upsample by zero insertion, pad, convolve with a FIR filter, downsample.

Semantics follow StyleGAN2 (rosinality and stylegan2-ada-pytorch agree):
  out[.., y, x] = gain * sum_ij f[i, j] * u[.., y*down + fh-1-i, x*down + fw-1-j]   (true convolution)
where u is x upsampled by `up` (zeros between samples, H*up rows) then padded by `padding`
(px0, px1, py0, py1; negative values crop). `f` is 1-D (separable, applied along both axes, the gain
split between them) or 2-D. Output size: (H*up + py0 + py1 - fh) // down + 1.
The reference does exactly that, zero insertion included; fast backends work polyphase.
"""
import torch
import torch.nn.functional as F

from .. import backend
from . import _library
from ._checks import check_tensor


def setup_filter(taps, device="cpu", dtype=torch.float32):
    """Normalized 1-D filter from taps, e.g. [1, 3, 3, 1] -> [1, 3, 3, 1] / 8."""
    f = torch.as_tensor(taps, dtype=dtype, device=device)
    if f.ndim != 1 or f.numel() == 0:
        raise ValueError("filter taps must be a non-empty 1-D sequence")
    return f / f.sum()


def parse_padding(padding):
    if isinstance(padding, int):
        return padding, padding, padding, padding
    if len(padding) == 2:
        return padding[0], padding[0], padding[1], padding[1]
    if len(padding) != 4:
        raise ValueError(f"padding must be an int, (px, py) or (px0, px1, py0, py1), got {padding!r}")
    return tuple(int(p) for p in padding)


def output_size(h, w, fh, fw, up, down, padding):
    px0, px1, py0, py1 = parse_padding(padding)
    return (h * up + py0 + py1 - fh) // down + 1, (w * up + px0 + px1 - fw) // down + 1


def upfirdn2d_reference(x, f, up=1, down=1, padding=0, flip_filter=False, gain=1.0):
    px0, px1, py0, py1 = parse_padding(padding)
    n, c, h, w = x.shape
    f = f.to(x.dtype)
    # Zero insertion.
    x = x.reshape(n, c, h, 1, w, 1)
    x = F.pad(x, [0, up - 1, 0, 0, 0, up - 1])
    x = x.reshape(n, c, h * up, w * up)
    # Pad (positive) then crop (negative).
    x = F.pad(x, [max(px0, 0), max(px1, 0), max(py0, 0), max(py1, 0)])
    x = x[:, :, max(-py0, 0): x.shape[2] - max(-py1, 0), max(-px0, 0): x.shape[3] - max(-px1, 0)]
    # Convolution = correlation with the flipped filter.
    if not flip_filter:
        f = f.flip(list(range(f.ndim)))
    x = x.reshape(n * c, 1, x.shape[2], x.shape[3])
    if f.ndim == 1:
        g = f * (gain ** 0.5)
        x = F.conv2d(x, g.reshape(1, 1, 1, -1))
        x = F.conv2d(x, g.reshape(1, 1, -1, 1))
    else:
        x = F.conv2d(x, (f * gain).reshape(1, 1, *f.shape))
    x = x.reshape(n, c, x.shape[2], x.shape[3])
    return x[:, :, ::down, ::down]


backend.register_reference("upfirdn2d", upfirdn2d_reference)


def upfirdn2d(x, f, up=1, down=1, padding=0, flip_filter=False, gain=1.0):
    check_tensor("x", x, ndim=4)
    check_tensor("f", f, device=x.device)
    if f.ndim not in (1, 2):
        raise ValueError(f"filter must be 1-D (separable) or 2-D, got shape {tuple(f.shape)}")
    if up < 1 or down < 1:
        raise ValueError(f"up and down must be >= 1, got up={up}, down={down}")
    fh, fw = (f.shape[0], f.shape[0]) if f.ndim == 1 else f.shape
    oh, ow = output_size(x.shape[2], x.shape[3], fh, fw, up, down, padding)
    if oh < 1 or ow < 1:
        raise ValueError(f"upfirdn2d output would be empty ({oh}x{ow}) for input {tuple(x.shape)}")
    name = backend.resolve_name("upfirdn2d", x)
    if _library.traced(name):
        op = _library.for_trace(_library.upfirdn2d)
        return op(x, f, up, down, list(parse_padding(padding)), flip_filter, float(gain), backend.current().dtype)
    return backend.implementation("upfirdn2d", name)(x, f, up=up, down=down, padding=padding,
                                           flip_filter=flip_filter, gain=gain)


def upsample2d(x, f, up=2, gain=None):
    """Upsample by `up` with filter `f`, keeping the size exactly H*up (StyleGAN2's skip-path upsampler)."""
    fw = f.shape[-1]
    p = fw - up
    pad0, pad1 = (p + 1) // 2 + up - 1, p // 2
    return upfirdn2d(x, f, up=up, padding=(pad0, pad1, pad0, pad1), gain=up * up if gain is None else gain)
