"""Benchmark cases for modulated_conv2d, upfirdn2d, bias_act and the whole synthesis network (issue 4).

Sizes are StyleGAN2 config-f at 512 px with channel multiplier 2 (4..64 px: 512 channels, 128: 256, 256: 128,
512: 64), batch 1, random weights (no checkpoint needed). Case format: bench/harness.py.

MAC counts are the nominal algorithm's: a 3x3 convolution at the output resolution costs r^2 * 9 * Cin * Cout;
an up=2 layer costs what the stride-2 transposed convolution multiplies without its inserted zeros,
(r/2)^2 * 9 * Cin * Cout (the [1,3,3,1] blur after it is not counted); ToRGB r^2 * Cin * 3. Summed over the
512 px generator this is ~60 GMAC (~120 GFLOP) per image, the figure the issue's targets use.
"""
from __future__ import annotations

import functools

import torch

import editgan_fast
from editgan_fast.models.generator import Generator, default_channels
from editgan_fast.ops import bias_act, modulated_conv2d, setup_filter, upfirdn2d

CHANNELS = default_channels(2)
SIZE = 512


def _timed(backend, dtype, fn):
    def run():
        with torch.no_grad(), editgan_fast.use_backend(backend, dtype=dtype):
            return fn()
    return run


def _input(shape, dtype, gen):
    x = torch.randn(shape, generator=gen)
    return x.to(dtype) if dtype is not None else x


def conv_layer(backend, dtype, cin, cout, res, up=1, k=3, demodulate=True, rgb=False, seed=0):
    """One synthesis layer at output resolution `res`: StyledConv (noise, bias, lrelu) or ToRGB (k=1, no
    demodulation, bias, upsampled skip)."""
    gen = torch.Generator().manual_seed(seed)
    x = _input((1, cin, res // up, res // up), dtype, gen)
    weight = torch.randn(cout, cin, k, k, generator=gen) / (cin * k * k) ** 0.5
    styles = torch.randn(1, cin, generator=gen) + 1
    bias = 0.1 * torch.randn(cout, generator=gen)
    f = setup_filter([1, 3, 3, 1])
    if rgb:
        skip = _input((1, cout, res // 2, res // 2), dtype, gen)
        fn = lambda: modulated_conv2d(x, weight, styles, demodulate=False, resample_filter=f, bias=bias,
                                      skip=skip)
    else:
        noise = torch.randn(1, 1, res, res, generator=gen)
        wsq = weight.square().sum([2, 3])
        fn = lambda: modulated_conv2d(x, weight, styles, demodulate=demodulate, up=up, resample_filter=f,
                                      wsq=wsq, noise=noise, bias=bias, act="lrelu", gain=2 ** 0.5)
    return _timed(backend, dtype, fn)


def conv_macs(cin, cout, res, up=1, k=3):
    return (res // up) ** 2 * k * k * cin * cout


def upfirdn_case(backend, dtype, channels, res_in, up, padding, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = _input((1, channels, res_in, res_in), dtype, gen)
    f = setup_filter([1, 3, 3, 1])
    return _timed(backend, dtype, lambda: upfirdn2d(x, f, up=up, padding=padding, gain=up * up))


def upfirdn_macs(channels, res_in, up, taps=4):
    return (res_in * up) ** 2 * channels * (taps // up) ** 2  # nonzero taps only (polyphase)


def bias_act_case(backend, dtype, channels, res, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = _input((1, channels, res, res), dtype, gen)
    b = torch.randn(channels, generator=gen)
    return _timed(backend, dtype, lambda: bias_act(x, b, act="lrelu"))


@functools.lru_cache(maxsize=1)
def generator_512():
    """The 512 px config-f generator with random weights (built once, shared by the generator cases)."""
    torch.manual_seed(0)
    return Generator(SIZE, channel_multiplier=2).eval().requires_grad_(False)


def generator_macs(channels=CHANNELS, size=SIZE):
    in_ch = channels[4]
    total = conv_macs(in_ch, in_ch, 4) + 4 * 4 * in_ch * 3
    res = 8
    while res <= size:
        out_ch = channels[res]
        total += conv_macs(in_ch, out_ch, res, up=2) + conv_macs(out_ch, out_ch, res) + res * res * out_ch * 3
        in_ch, res = out_ch, res * 2
    return total


def generator_case(backend, dtype, seed=0):
    g = generator_512()
    wplus = torch.randn(1, g.num_ws, g.style_dim, generator=torch.Generator().manual_seed(seed))
    return _timed(backend, dtype, lambda: g.synthesis(wplus))


def _variants(name, make, macs, bf16=True):
    """reference fp32, cpu fp32 and (optionally) cpu bf16 rows of one case."""
    rows = [(f"{name} fp32", "reference", None, lambda: make("reference", None), macs),
            (f"{name} fp32", "cpu", None, lambda: make("cpu", None), macs)]
    if bf16:
        rows.append((f"{name} bf16", "cpu", torch.bfloat16, lambda: make("cpu", torch.bfloat16), macs))
    return rows


def _layer(name, cin, cout, res, up=1, k=3, rgb=False):
    make = lambda b, d: conv_layer(b, d, cin, cout, res, up=up, k=k, rgb=rgb)
    macs = res * res * cin * cout if rgb else conv_macs(cin, cout, res, up, k)
    return _variants(name, make, macs)


C = CHANNELS
CASES = [
    *_layer("modconv 64px 512->512", C[64], C[64], 64),
    *_layer("modconv up 128px 512->256", C[64], C[128], 128, up=2),
    *_layer("modconv 256px 128->128", C[256], C[256], 256),
    *_layer("modconv up 512px 128->64", C[256], C[512], 512, up=2),
    *_layer("modconv 512px 64->64", C[512], C[512], 512),
    *_layer("torgb+skip 512px 64->3", C[512], 3, 512, k=1, rgb=True),
    *_variants("upfirdn2d up2 skip 256->512 3ch", lambda b, d: upfirdn_case(b, d, 3, 256, 2, (2, 1, 2, 1)),
               upfirdn_macs(3, 256, 2)),
    *_variants("upfirdn2d blur 512px 64ch", lambda b, d: upfirdn_case(b, d, C[512], 512, 1, (2, 1, 2, 1)),
               upfirdn_macs(C[512], 512, 1)),
    *_variants("bias_act lrelu 512px 64ch", lambda b, d: bias_act_case(b, d, C[512], 512), None),
    *_variants("generator 512 config-f synthesis", generator_case, generator_macs()),
]
