"""modulated_conv2d: StyleGAN2's styled convolution with its whole epilogue.

    y = epilogue( conv_up( x, weight * styles[n, None, :, None, None] ) * d[n, o] )
    d[n, o] = rsqrt( sum_{i,k} (weight[o, i, k] * styles[n, i])^2 + eps )      (if demodulate, else 1)
    epilogue(v) = clamp(act(v + noise + bias) * gain) (+ upsample2d(skip) when skip is given)

- `weight` [Cout, Cin, k, k] is the frozen weight *already multiplied by its equalized-lr scale*.
- `styles` [N, Cin] are the per-sample modulation coefficients (the affine layer's output).
- `up=2` is StyleGAN2's upsampling conv: a stride-2 transposed convolution followed by the FIR blur
  `resample_filter` (1-D taps, normalized, e.g. [1,3,3,1]/8) with gain 4, output exactly 2H x 2W.
- `wsq` [Cout, Cin] = sum_k weight^2 may be passed precomputed (weights are frozen); fast backends then get
  demodulation as one matrix-vector product per sample. The reference builds per-sample weights (the oracle).
- `noise` is already scaled by the layer's noise strength, broadcastable to [N, 1, H', W'].
- `skip` [N, Cout, H'/2, W'/2] is the previous ToRGB output, upsampled with `resample_filter` and added last.
"""
import torch
import torch.nn.functional as F

from .. import backend
from . import _library
from ._checks import check_tensor
from .bias_act import bias_act_reference, _defaults
from .upfirdn2d import upfirdn2d_reference


def up_blur_padding(kernel_size, filter_taps, up=2):
    """(pad0, pad1) of the blur after the stride-`up` transposed conv (rosinality's formula)."""
    p = (filter_taps - up) - (kernel_size - 1)
    return (p + 1) // 2 + up - 1, p // 2 + 1


def skip_padding(filter_taps, up=2):
    p = filter_taps - up
    return (p + 1) // 2 + up - 1, p // 2


def modulated_conv2d_reference(x, weight, styles, demodulate=True, up=1, resample_filter=None, wsq=None,
                               noise=None, bias=None, act="linear", alpha=None, gain=None, clamp=None,
                               skip=None, eps=1e-8):
    n, cin, h, w_ = x.shape
    cout, _, kh, kw = weight.shape
    wt = weight.to(x.dtype)[None] * styles.to(x.dtype)[:, None, :, None, None]  # [N, Cout, Cin, k, k]
    if demodulate:
        wt = wt * torch.rsqrt(wt.square().sum(dim=[2, 3, 4], keepdim=True) + eps)
    xg = x.reshape(1, n * cin, h, w_)
    if up == 1:
        y = F.conv2d(xg, wt.reshape(n * cout, cin, kh, kw), padding=kh // 2, groups=n)
    else:
        wt_t = wt.transpose(1, 2).reshape(n * cin, cout, kh, kw)
        y = F.conv_transpose2d(xg, wt_t, stride=up, padding=0, groups=n)
        y = y.reshape(n, cout, y.shape[2], y.shape[3])
        p0, p1 = up_blur_padding(kh, resample_filter.shape[0], up)
        y = upfirdn2d_reference(y, resample_filter, padding=(p0, p1, p0, p1), gain=up * up)
    y = y.reshape(n, cout, y.shape[-2], y.shape[-1])
    if noise is not None:
        y = y + noise.to(y.dtype)
    y = bias_act_reference(y, bias, act=act, alpha=alpha, gain=gain, clamp=clamp)
    if skip is not None:
        p0, p1 = skip_padding(resample_filter.shape[0])
        y = y + upfirdn2d_reference(skip.to(y.dtype), resample_filter, up=2, padding=(p0, p1, p0, p1), gain=4)
    return y


backend.register_reference("modulated_conv2d", modulated_conv2d_reference)


def modulated_conv2d(x, weight, styles, demodulate=True, up=1, resample_filter=None, wsq=None, noise=None,
                     bias=None, act="linear", alpha=None, gain=None, clamp=None, skip=None, eps=1e-8):
    check_tensor("x", x, ndim=4)
    check_tensor("weight", weight, ndim=4, device=x.device)
    check_tensor("styles", styles, ndim=2, device=x.device)
    n, cin = x.shape[:2]
    cout, wcin, kh, kw = weight.shape
    if wcin != cin or styles.shape != (n, cin):
        raise ValueError(f"modulated_conv2d: x {tuple(x.shape)}, weight {tuple(weight.shape)} and styles "
                         f"{tuple(styles.shape)} disagree (need weight [Cout, {cin}, k, k], styles [{n}, {cin}])")
    if kh != kw or kh % 2 != 1:
        raise ValueError(f"kernel must be square with odd size, got {kh}x{kw}")
    if up not in (1, 2):
        raise ValueError(f"up must be 1 or 2, got {up}")
    if (up == 2 or skip is not None) and resample_filter is None:
        raise ValueError("up=2 and skip need resample_filter (e.g. setup_filter([1, 3, 3, 1]))")
    if wsq is not None and tuple(wsq.shape) != (cout, cin):
        raise ValueError(f"wsq must be [{cout}, {cin}], got {tuple(wsq.shape)}")
    alpha, gain = _defaults(act, alpha, gain)
    oh, ow = x.shape[2] * up, x.shape[3] * up
    if skip is not None and tuple(skip.shape) != (n, cout, oh // 2, ow // 2) or skip is not None and oh % 2:
        raise ValueError(f"skip must be [{n}, {cout}, {oh // 2}, {ow // 2}] (half the {oh}x{ow} output, which "
                         f"must be even), got {tuple(skip.shape)}")
    if bias is not None and tuple(bias.shape) != (cout,):
        raise ValueError(f"bias must be [{cout}], got {tuple(bias.shape)}")
    name = backend.resolve_name("modulated_conv2d", x)
    if _library.traced(name):
        op = _library.for_trace(_library.modulated_conv2d)
        return op(x, weight, styles, resample_filter, wsq, noise, bias, skip, demodulate, up, act, alpha, gain,
                  None if clamp is None else float(clamp), eps, backend.current().dtype)
    return backend.implementation("modulated_conv2d", name)(
        x, weight, styles, demodulate=demodulate, up=up, resample_filter=resample_filter, wsq=wsq, noise=noise,
        bias=bias, act=act, alpha=alpha, gain=gain, clamp=clamp, skip=skip, eps=eps)
