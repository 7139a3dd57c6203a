"""StyleGAN2 generator with rosinality/stylegan2-pytorch's architecture and state-dict keys (EditGAN uses it).

Equations (rosinality's model.py; equalized learning rate everywhere):
- mapping: z -> PixelNorm -> n_mlp x EqualLinear(lr_mul=0.01) with fused leaky ReLU (bias * lr_mul, slope 0.2,
  gain sqrt 2);
- synthesis: constant 4x4 input; conv1 (styled 3x3 conv) and to_rgb1; then per resolution an upsampling styled
  conv, a styled conv and a ToRGB whose output adds the [1,3,3,1]-upsampled previous image (skip);
- styled conv: modulated 3x3 conv (weight * 1/sqrt(Cin*9), styles from an EqualLinear with bias init 1),
  demodulation, + noise_strength * noise, fused leaky ReLU with a per-channel bias;
- ToRGB: modulated 1x1 conv without demodulation, + bias.
w+ index per layer: conv1 0, to_rgb1 1, then for block b (b = 0, 1, ...): up-conv 2b+1, conv 2b+2, ToRGB 2b+3.

Every synthesis layer is ONE `ops.modulated_conv2d` call (noise, bias, activation, clamp and ToRGB's skip
upsampling inside), so fast backends fuse the whole layer. Weights are frozen: the equalized-lr-scaled weight
and wsq = sum_k W^2 (for demodulation from a mat-vec) are computed once and cached.

Features for the segmenter, in EditGAN's order: the constant input, conv1's output, then every following
conv's output: 2 + 2 * (log2(size) - 2) maps.
"""
from __future__ import annotations

import hashlib
import math

import torch
import torch.nn.functional as F

from .. import ops
from ..errors import InputValueError
from ..ops.upfirdn2d import setup_filter

NOISE_MODES = ("const", "random", "none")
# Not part of the generator's identity: the mean latent is a statistic (stored or estimated), and editing vectors
# recorded fingerprints before it was in the state dict.
FINGERPRINT_EXCLUDES = ("latent_avg",)


def default_channels(channel_multiplier: int = 2) -> dict[int, int]:
    cm = channel_multiplier
    return {4: 512, 8: 512, 16: 512, 32: 512, 64: 256 * cm, 128: 128 * cm, 256: 64 * cm, 512: 32 * cm,
            1024: 16 * cm}


class PixelNorm(torch.nn.Module):
    def forward(self, x):
        return x * torch.rsqrt(x.square().mean(dim=1, keepdim=True) + 1e-8)


class EqualLinear(torch.nn.Module):
    """Linear layer with equalized learning rate: y = x (W * scale)^T + b * lr_mul, optional fused lrelu."""

    def __init__(self, in_dim, out_dim, bias_init=0.0, lr_mul=1.0, activation=False):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(out_dim, in_dim) / lr_mul)
        self.bias = torch.nn.Parameter(torch.full((out_dim,), float(bias_init)))
        self.scale = lr_mul / math.sqrt(in_dim)
        self.lr_mul = lr_mul
        self.activation = activation

    def forward(self, x, bias=True):
        w = (self.weight * self.scale).to(x.dtype)
        b = (self.bias * self.lr_mul).to(x.dtype) if bias else None
        if self.activation:
            return ops.bias_act(F.linear(x, w), b, act="lrelu")
        return F.linear(x, w, b)


class _FrozenWeightCache:
    """Scaled weight and sum_k W^2 per dtype, keyed by the module's state: eager calls revalidate them against
    the parameter (identity, version, device, dtype), and the module rebuilds them for the parameter's dtype
    whenever load_state_dict or .to() changes it. Inside torch.compile/export the key is not traceable, so the
    cached value is read as it is: a graph input whose identity the cpu kernels' caches of derived weights
    recognize (computing it in the graph would hand them a new tensor, and a cache miss, every call). A
    parameter changed in place by other means is seen by the next eager call, not by a compiled graph."""

    def __init__(self):
        self.values = {}  # dtype -> (key, (weight, wsq))

    def clear(self):
        self.values = {}

    def get(self, weight, scale, dtype):
        if torch.compiler.is_compiling():
            hit = self.values.get(dtype)
            return hit[1] if hit is not None else self._build(weight, scale, dtype)
        key = (id(weight), weight._version, weight.device, weight.dtype)
        hit = self.values.get(dtype)
        if hit is None or hit[0] != key:
            hit = self.values[dtype] = (key, self._build(weight, scale, dtype))
        return hit[1]

    @staticmethod
    def _build(weight, scale, dtype):
        w = (weight.detach()[0] * scale).to(dtype)  # [Cout, Cin, k, k]
        return w, w.square().sum(dim=[2, 3])

    def __deepcopy__(self, memo):
        # Derived state: the copied module rebuilds it for its own weight (ModulatedConv2d.__setstate__).
        return _FrozenWeightCache()


class ModulatedConv2d(torch.nn.Module):
    def __init__(self, in_channel, out_channel, kernel_size, style_dim, demodulate=True, upsample=False,
                 blur_kernel=(1, 3, 3, 1)):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(1, out_channel, in_channel, kernel_size, kernel_size))
        self.modulation = EqualLinear(style_dim, in_channel, bias_init=1)
        self.scale = 1 / math.sqrt(in_channel * kernel_size * kernel_size)
        self.demodulate = demodulate
        self.upsample = upsample
        if upsample:
            self.blur = Blur(blur_kernel, factor=2)
        self._cache = _FrozenWeightCache()
        self._refresh_cache()
        self.register_load_state_dict_post_hook(ModulatedConv2d._refresh_cache)

    def frozen(self, dtype):
        return self._cache.get(self.weight, self.scale, dtype)

    def _refresh_cache(self, incompatible_keys=None):
        self._cache.clear()
        with torch.no_grad():
            self.frozen(self.weight.dtype)

    def _apply(self, fn, recurse=True):
        out = super()._apply(fn, recurse)
        self._refresh_cache()
        return out

    def __setstate__(self, state):  # a deep copy (the editor's) or an unpickled module: its cache starts empty
        super().__setstate__(state)
        self._refresh_cache()


class Blur(torch.nn.Module):
    """Holds rosinality's blur kernel buffer (2-D, sum factor^2); the op uses the normalized 1-D taps."""

    def __init__(self, taps, factor):
        super().__init__()
        f = setup_filter(taps)
        self.register_buffer("kernel", torch.outer(f, f) * factor ** 2)
        self.taps = tuple(taps)


class Upsample(Blur):
    pass


class NoiseInjection(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))


class FusedLeakyReLU(torch.nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.bias = torch.nn.Parameter(torch.zeros(channels))


class StyledConv(torch.nn.Module):
    def __init__(self, in_channel, out_channel, kernel_size, style_dim, upsample=False, blur_kernel=(1, 3, 3, 1)):
        super().__init__()
        self.conv = ModulatedConv2d(in_channel, out_channel, kernel_size, style_dim, upsample=upsample,
                                    blur_kernel=blur_kernel)
        self.noise = NoiseInjection()
        self.activate = FusedLeakyReLU(out_channel)


class ToRGB(torch.nn.Module):
    def __init__(self, in_channel, style_dim, upsample=True, blur_kernel=(1, 3, 3, 1)):
        super().__init__()
        if upsample:
            self.upsample = Upsample(blur_kernel, factor=2)
        self.conv = ModulatedConv2d(in_channel, 3, 1, style_dim, demodulate=False)
        self.bias = torch.nn.Parameter(torch.zeros(1, 3, 1, 1))


class ConstantInput(torch.nn.Module):
    def __init__(self, channel, size=4):
        super().__init__()
        self.input = torch.nn.Parameter(torch.randn(1, channel, size, size))


class Generator(torch.nn.Module):
    def __init__(self, size, style_dim=512, n_mlp=8, channel_multiplier=2, blur_kernel=(1, 3, 3, 1),
                 lr_mlp=0.01, channels: dict[int, int] | None = None, conv_clamp: float | None = None):
        super().__init__()
        log_size = int(math.log2(size)) if size >= 4 else 0
        if size < 8 or 2 ** log_size != size:
            raise ValueError(f"generator size must be a power of two >= 8, got {size}")
        self.resolution = size
        self.style_dim = style_dim
        self.n_mlp = n_mlp
        self.conv_clamp = conv_clamp
        self.channels = dict(default_channels(channel_multiplier))
        if channels:
            self.channels.update({int(k): int(v) for k, v in channels.items()})
        self.channels = {r: c for r, c in self.channels.items() if r <= size}
        missing = [2 ** r for r in range(2, log_size + 1) if 2 ** r not in self.channels]
        if missing:
            raise ValueError(f"channels has no entry for resolutions {missing}")
        self.blur_kernel = tuple(blur_kernel)
        self.register_buffer("resample_filter", setup_filter(blur_kernel), persistent=False)

        self.style = torch.nn.Sequential(
            PixelNorm(), *[EqualLinear(style_dim, style_dim, lr_mul=lr_mlp, activation=True) for _ in range(n_mlp)])
        ch = self.channels
        self.input = ConstantInput(ch[4])
        self.conv1 = StyledConv(ch[4], ch[4], 3, style_dim, blur_kernel=blur_kernel)
        self.to_rgb1 = ToRGB(ch[4], style_dim, upsample=False)
        self.convs = torch.nn.ModuleList()
        self.to_rgbs = torch.nn.ModuleList()
        self.noises = torch.nn.Module()
        num_layers = (log_size - 2) * 2 + 1
        for i in range(num_layers):
            r = 2 ** ((i + 5) // 2)
            self.noises.register_buffer(f"noise_{i}", torch.randn(1, 1, r, r))
        in_ch = ch[4]
        for lvl in range(3, log_size + 1):
            out_ch = ch[2 ** lvl]
            self.convs.append(StyledConv(in_ch, out_ch, 3, style_dim, upsample=True, blur_kernel=blur_kernel))
            self.convs.append(StyledConv(out_ch, out_ch, 3, style_dim, blur_kernel=blur_kernel))
            self.to_rgbs.append(ToRGB(out_ch, style_dim, blur_kernel=blur_kernel))
            in_ch = out_ch
        self.num_ws = log_size * 2 - 2
        self.num_layers = num_layers
        # Persistent (a state dict round trip keeps it); all zeros means "not known yet" (StyleGAN2-ADA's w_avg
        # starts at zero too). Optional when loading: rosinality's g_ema state dicts keep it outside.
        self.register_buffer("latent_avg", torch.zeros(1, style_dim))
        self._has_latent_avg = False

    # ----------------------------------------------------------------------------------------------- latents
    @property
    def feature_channels(self) -> list[int]:
        return [self.channels[4], self.channels[4]] + [c.conv.weight.shape[1] for c in self.convs]

    def mapping(self, z):
        if not isinstance(z, torch.Tensor) or z.ndim != 2 or z.shape[1] != self.style_dim:
            raise ValueError(f"z must be [N, {self.style_dim}], got {_describe(z)}")
        self._check_latent_dtype(z)
        return self.style(z)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        key = prefix + "latent_avg"
        if key not in state_dict:
            state_dict[key] = torch.zeros_like(self.latent_avg)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        self._has_latent_avg = bool(self.latent_avg.any())

    def set_mean_latent(self, w):
        """Use a checkpoint's stored mean latent (rosinality latent_avg, StyleGAN2-ADA w_avg)."""
        self.latent_avg = w.detach().reshape(1, self.style_dim).to(self.latent_avg)
        self._has_latent_avg = True

    @torch.no_grad()
    def mean_latent(self, n=4096, seed=0):
        if not self._has_latent_avg:
            g = torch.Generator().manual_seed(seed)
            z = torch.randn(n, self.style_dim, generator=g).to(self.latent_avg)
            self.set_mean_latent(self.mapping(z).mean(0, keepdim=True))
        return self.latent_avg.clone()

    def truncate(self, w, psi, mean=None):
        mean = self.mean_latent() if mean is None else mean
        return mean.to(w) + psi * (w - mean.to(w))

    def _check_latent_dtype(self, t):
        if not t.is_floating_point():
            raise TypeError(f"latents must be floating point, got {t.dtype}")
        if t.device != self.input.input.device:
            raise ValueError(f"latent is on {t.device} but the generator is on {self.input.input.device}")

    def _as_wplus(self, wplus):
        if not isinstance(wplus, torch.Tensor):
            raise TypeError(f"w+ must be a torch.Tensor, got {type(wplus).__name__}")
        if wplus.ndim == 2:
            wplus = wplus[None]
        if wplus.ndim != 3 or wplus.shape[1:] != (self.num_ws, self.style_dim):
            raise ValueError(f"w+ must be [N, {self.num_ws}, {self.style_dim}] (or [{self.num_ws}, "
                             f"{self.style_dim}]), got {tuple(wplus.shape)}")
        self._check_latent_dtype(wplus)
        return wplus

    def forward(self, latent, truncation: float = 1.0, noise_mode="const", return_features=False):
        """The image [N, 3, H, W] of z [N, style_dim] (mapped, then truncated towards the mean latent by
        `truncation`, and broadcast to every layer) or of w+ [N, num_ws, style_dim] (used as is)."""
        if isinstance(latent, torch.Tensor) and latent.ndim == 2:
            w = self.mapping(latent)
            if truncation != 1:
                w = self.truncate(w, truncation)
            latent = w[:, None].expand(-1, self.num_ws, -1)
        elif not isinstance(latent, torch.Tensor) or latent.ndim != 3:
            raise InputValueError(f"the generator takes z [N, {self.style_dim}] or w+ [N, {self.num_ws}, "
                             f"{self.style_dim}], got {_describe(latent)}")
        return self.synthesis(latent, noise_mode, return_features)

    # -------------------------------------------------------------------------------------------- synthesis
    def _layers(self):
        """(module, w+ index, kind) in execution order; kind is 'conv' or 'rgb'."""
        out = [(self.conv1, 0, "conv"), (self.to_rgb1, 1, "rgb")]
        for b, rgb in enumerate(self.to_rgbs):
            out += [(self.convs[2 * b], 2 * b + 1, "conv"), (self.convs[2 * b + 1], 2 * b + 2, "conv"),
                    (rgb, 2 * b + 3, "rgb")]
        return out

    def styles(self, wplus, bias=True):
        """Per-layer modulation coefficients, in execution order. Affine in w+, so
        styles(w + d) == styles(w) + styles(d, bias=False): the editor caches both terms."""
        wplus = self._as_wplus(wplus)
        return [layer.conv.modulation(wplus[:, idx], bias=bias) for layer, idx, _ in self._layers()]

    def synthesis(self, wplus, noise_mode="const", return_features=False):
        return self.synthesis_from_styles(self.styles(wplus), noise_mode, return_features)

    def _noise(self, i, n, noise_mode, like):
        buf = getattr(self.noises, f"noise_{i}")
        if noise_mode == "const":
            return buf.to(like.dtype)
        if noise_mode == "random":
            return torch.randn(n, 1, *buf.shape[2:], device=like.device, dtype=like.dtype)
        return None

    def synthesis_from_styles(self, styles, noise_mode="const", return_features=False):
        if noise_mode not in NOISE_MODES:
            raise ValueError(f"noise_mode must be one of {NOISE_MODES}, got {noise_mode!r}")
        layers = self._layers()
        if len(styles) != len(layers):
            raise ValueError(f"expected {len(layers)} style tensors, got {len(styles)}")
        n = styles[0].shape[0]
        dtype = styles[0].dtype
        x = self.input.input.to(dtype).expand(n, -1, -1, -1)
        features = [x]
        skip = None
        noise_index = 0
        f = self.resample_filter.to(dtype)
        for (layer, _, kind), s in zip(layers, styles):
            w, wsq = layer.conv.frozen(dtype)
            if kind == "conv":
                noise = self._noise(noise_index, n, noise_mode, x)
                if noise is not None:
                    noise = noise * layer.noise.weight.to(dtype)
                noise_index += 1
                x = ops.modulated_conv2d(
                    x, w, s, demodulate=True, up=2 if layer.conv.upsample else 1, resample_filter=f, wsq=wsq,
                    noise=noise, bias=layer.activate.bias.to(dtype), act="lrelu", clamp=self.conv_clamp)
                features.append(x)
            else:
                skip = ops.modulated_conv2d(
                    x, w, s, demodulate=False, resample_filter=f, wsq=wsq, bias=layer.bias.reshape(-1).to(dtype),
                    act="linear", clamp=self.conv_clamp, skip=skip)
        return (skip, features) if return_features else skip

    # ----------------------------------------------------------------------------------------------- identity
    def fingerprint(self) -> str:
        """Short stable hash of the architecture and weights (editing vectors record it)."""
        h = hashlib.sha256(f"{self.resolution}/{self.style_dim}/{self.num_ws}/{self.conv_clamp}".encode())
        for name, t in sorted(self.state_dict().items()):
            if name in FINGERPRINT_EXCLUDES:
                continue
            h.update(name.encode())
            h.update(t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
        return h.hexdigest()[:16]


def _describe(t) -> str:
    return str(tuple(t.shape)) if isinstance(t, torch.Tensor) else type(t).__name__
