"""The reference operators against independent naive float64 formulations (explicit loops), with gradients."""
import itertools
import math

import pytest
import torch

import editgan_fast
from editgan_fast.ops import bias_act, modulated_conv2d, setup_filter, upfirdn2d

D = torch.float64


def naive_upfirdn2d(x, f, up, down, pad, flip, gain):
    """Zero insertion, padding (negative crops), direct 2-D convolution loop, decimation."""
    px0, px1, py0, py1 = pad
    f2 = torch.outer(f, f) * gain if f.ndim == 1 else f * gain
    if not flip:
        f2 = f2.flip([0, 1])
    n, c, h, w = x.shape
    u = torch.zeros(n, c, h * up, w * up, dtype=D)
    u[:, :, ::up, ::up] = x
    hh, ww = h * up + py0 + py1, w * up + px0 + px1
    p = torch.zeros(n, c, hh, ww, dtype=D)
    for yy in range(hh):
        for xx in range(ww):
            sy, sx = yy - py0, xx - px0
            if 0 <= sy < h * up and 0 <= sx < w * up:
                p[:, :, yy, xx] = u[:, :, sy, sx]
    fh, fw = f2.shape
    out = torch.zeros(n, c, hh - fh + 1, ww - fw + 1, dtype=D)
    for yy in range(out.shape[2]):
        for xx in range(out.shape[3]):
            out[:, :, yy, xx] = (p[:, :, yy:yy + fh, xx:xx + fw] * f2).sum([2, 3])
    return out[:, :, ::down, ::down]


@pytest.mark.parametrize("up,down,pad,taps,flip,gain", [
    (1, 1, (1, 2, 0, 1), [1, 3, 3, 1], False, 1.0),
    (2, 1, (2, 1, 2, 1), [1, 3, 3, 1], False, 4.0),
    (1, 2, (1, 1, 2, 1), [1, 2, 1], True, 1.0),
    (3, 2, (-1, 2, 1, -2), [1, 4, 6, 4, 1], False, 3.0),
    (2, 1, (0, 0, 1, 1), "2d", True, 1.0),
])
def test_upfirdn2d_reference_vs_loops(up, down, pad, taps, flip, gain):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 5, 6, dtype=D)
    f = torch.randn(3, 2, dtype=D) if taps == "2d" else setup_filter(taps, dtype=D)
    with editgan_fast.use_backend("reference"):
        got = upfirdn2d(x, f, up=up, down=down, padding=pad, flip_filter=flip, gain=gain)
        torch.testing.assert_close(got, naive_upfirdn2d(x, f, up, down, pad, flip, gain), rtol=1e-12, atol=1e-12)
        assert torch.autograd.gradcheck(
            lambda x: upfirdn2d(x, f, up=up, down=down, padding=pad, flip_filter=flip, gain=gain),
            (x.requires_grad_(True),))


def naive_modconv(x, weight, styles, demod, up, noise, bias, act, clamp, skip):
    """Per-sample weights built explicitly; the convolution as an explicit sum over taps."""
    n, cin, h, w = x.shape
    cout, _, k, _ = weight.shape
    outs = []
    for i in range(n):
        wt = weight * styles[i][None, :, None, None]
        if demod:
            wt = wt / torch.sqrt((wt ** 2).sum([1, 2, 3], keepdim=True) + 1e-8)
        if up == 1:
            xp = torch.nn.functional.pad(x[i], [k // 2] * 4)
            y = torch.zeros(cout, h, w, dtype=D)
            for dy, dx in itertools.product(range(k), range(k)):
                y += torch.einsum("oi,ihw->ohw", wt[:, :, dy, dx], xp[:, dy:dy + h, dx:dx + w])
        else:
            # Transposed conv by scattering, then the blur on the result: both written out.
            t = torch.zeros(cout, 2 * h + k - 2, 2 * w + k - 2, dtype=D)
            for dy, dx in itertools.product(range(k), range(k)):
                t[:, dy:dy + 2 * h:2, dx:dx + 2 * w:2] += torch.einsum("oi,ihw->ohw", wt[:, :, dy, dx], x[i])
            y = naive_upfirdn2d(t[None], setup_filter([1, 3, 3, 1], dtype=D), 1, 1, (1, 1, 1, 1), False, 4.0)[0]
        outs.append(y)
    y = torch.stack(outs)
    if noise is not None:
        y = y + noise
    y = y + bias[None, :, None, None]
    if act == "lrelu":
        y = torch.where(y >= 0, y, 0.2 * y) * math.sqrt(2)
    if clamp is not None:
        y = y.clamp(-clamp, clamp)
    if skip is not None:
        y = y + naive_upfirdn2d(skip, setup_filter([1, 3, 3, 1], dtype=D), 2, 1, (2, 1, 2, 1), False, 4.0)
    return y


@pytest.mark.parametrize("k,up,demod,act,clamp,use_noise,use_skip", [
    (3, 1, True, "lrelu", None, True, False),
    (3, 2, True, "lrelu", 0.8, True, False),
    (1, 1, False, "linear", None, False, True),
    (3, 2, False, "linear", 1.0, False, False),
])
def test_modulated_conv2d_reference_vs_naive(k, up, demod, act, clamp, use_noise, use_skip):
    torch.manual_seed(1)
    n, cin, cout, h, w = 2, 3, 4, 4, 6
    x = torch.randn(n, cin, h, w, dtype=D)
    weight = torch.randn(cout, cin, k, k, dtype=D)
    styles = torch.randn(n, cin, dtype=D)
    noise = torch.randn(1, 1, h * up, w * up, dtype=D) if use_noise else None
    bias = torch.randn(cout, dtype=D)
    skip = torch.randn(n, cout, h * up // 2, w * up // 2, dtype=D) if use_skip else None
    f = setup_filter([1, 3, 3, 1], dtype=D)
    fn = lambda x, s: modulated_conv2d(x, weight, s, demodulate=demod, up=up, resample_filter=f, noise=noise,
                                       bias=bias, act=act, clamp=clamp, skip=skip)
    with editgan_fast.use_backend("reference"):
        torch.testing.assert_close(fn(x, styles), naive_modconv(x, weight, styles, demod, up, noise, bias, act,
                                                                clamp, skip), rtol=1e-10, atol=1e-10)
        probe = torch.randn(3, n, cout, h * up, w * up, dtype=D)  # gradcheck 3 random projections (speed)
        assert torch.autograd.gradcheck(lambda x, s: torch.einsum("nchw,knchw->k", fn(x, s), probe),
                                        (x.requires_grad_(True), styles.requires_grad_(True)))


def test_bias_act_reference_vs_formula():
    torch.manual_seed(2)
    x = torch.randn(3, 5, 4, dtype=D)
    b = torch.randn(5, dtype=D)
    s = x + b[None, :, None]
    with editgan_fast.use_backend("reference"):
        torch.testing.assert_close(bias_act(x, b, act="lrelu"), torch.where(s > 0, s, 0.2 * s) * 2 ** 0.5)
        torch.testing.assert_close(bias_act(x, b, act="linear", gain=3.0, clamp=1.0), (3 * s).clamp(-1, 1))
        assert torch.autograd.gradcheck(lambda x, b: bias_act(x, b, act="lrelu", clamp=0.9),
                                        (x.requires_grad_(True), b.requires_grad_(True)))


def test_op_argument_errors():
    x = torch.randn(1, 3, 4, 4)
    with pytest.raises(ValueError, match="disagree"):
        modulated_conv2d(x, torch.randn(2, 4, 3, 3), torch.randn(1, 3))
    with pytest.raises(TypeError, match="floating-point"):
        modulated_conv2d(x.long(), torch.randn(2, 3, 3, 3), torch.randn(1, 3))
    with pytest.raises(ValueError, match="resample_filter"):
        modulated_conv2d(x, torch.randn(2, 3, 3, 3), torch.randn(1, 3), up=2)
    with pytest.raises(ValueError, match="unknown activation"):
        bias_act(x, act="gelu")
    with pytest.raises(ValueError, match="bias has 2 entries"):
        bias_act(x, torch.randn(2))
    with pytest.raises(ValueError, match="empty"):
        upfirdn2d(x, setup_filter([1, 3, 3, 1]), padding=-3)
