"""LPIPS (Zhang et al. 2018), VGG16 "lin" variant v0.1, the perceptual loss EditGAN optimizes with.

    x' = (x - shift) / scale                      x in [-1, 1], shift/scale per RGB channel
    f_k = VGG16 activations relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 of x' (and of y')
    d_k = (f_k(x) / (|f_k(x)|_c + eps) - f_k(y) / (|f_k(y)|_c + eps))^2       unit-normalized over channels
    lpips(x, y) = sum_k mean_{h,w} (w_k . d_k)                                  w_k >= 0: the 1x1 "lin" layer

Weights come from two files the user provides (nothing is downloaded): a torchvision VGG16 state dict
(`features.{i}.weight/bias`, e.g. vgg16-397923af.pth) and the lpips package's lin weights
(`lin{k}.model.1.weight` [1, C_k, 1, 1], weights/v0.1/vgg.pth).

`mask` (our extension): the spatial mean of each layer becomes a mean weighted by the mask, area-resized to
that layer's resolution, so distances outside the mask do not count. VGG's receptive field still reaches
across the mask border; EditGAN instead multiplies both images by the mask before LPIPS
(`lpips(x * m, y * m)`), which callers wanting its exact loss can do themselves.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from .checks import check_state_dict, torch_load
from .errors import CheckpointError

# torchvision's vgg16().features: 3x3 convs (padding 1) each followed by an in-place ReLU, "M" = MaxPool2d(2).
_VGG16_CONFIG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
# LPIPS taps the ReLU after these features indices (relu1_2, relu2_2, relu3_3, relu4_3, relu5_3).
_TAPS = (3, 8, 15, 22, 29)
_CHANNELS = (64, 128, 256, 512, 512)
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)
_NORM_EPS = 1e-10


def _vgg16_features() -> torch.nn.Sequential:
    layers, cin = [], 3
    for v in _VGG16_CONFIG:
        if v == "M":
            layers.append(torch.nn.MaxPool2d(2, 2))
        else:
            layers += [torch.nn.Conv2d(cin, v, 3, padding=1), torch.nn.ReLU()]
            cin = v
    return torch.nn.Sequential(*layers[:_TAPS[-1] + 1])


class _LinLayer(torch.nn.Module):
    """The lpips package's NetLinLayer: Dropout then a bias-free 1x1 conv; its file keys are `model.1.weight`.
    Dropout is inactive at inference, so slot 0 is an Identity."""

    def __init__(self, channels):
        super().__init__()
        self.model = torch.nn.Sequential(torch.nn.Identity(), torch.nn.Conv2d(channels, 1, 1, bias=False))


def _load_file(path, what):
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} file {path} does not exist (LPIPS weights are never downloaded; "
                              f"pass local files)")
    # The lpips package's files were saved from CUDA tensors: torch_load maps them to the CPU.
    obj = torch_load(path, f"{what} file")
    if not isinstance(obj, dict):
        raise CheckpointError(f"{what} file {path} holds a {type(obj).__name__}, not a state dict")
    tensors = {k.removeprefix("module."): v for k, v in obj.items()
               if isinstance(k, str) and isinstance(v, torch.Tensor)}
    return check_state_dict(tensors, f"{what} file {path}")


def _take(sd, module: torch.nn.Module, prefix: str, path, what):
    """Load module's tensors from sd[prefix + name], every one present with its exact shape."""
    own = module.state_dict()
    missing = [prefix + k for k in own if prefix + k not in sd]
    if missing:
        raise CheckpointError(f"{what} file {path} lacks keys {missing[:6]}{' ...' if len(missing) > 6 else ''}")
    for k, v in own.items():
        got = sd[prefix + k]
        if got.shape != v.shape:
            raise CheckpointError(f"{what} file {path}: {prefix + k} has shape {tuple(got.shape)}, expected "
                                  f"{tuple(v.shape)}")
    module.load_state_dict({k: sd[prefix + k].float() for k in own}, strict=True)


class LPIPS(torch.nn.Module):
    """Frozen LPIPS-VGG; `lpips(x, y, mask=None) -> [N]`, differentiable with respect to x and y."""

    def __init__(self):
        super().__init__()
        self.features = _vgg16_features()
        for k, c in enumerate(_CHANNELS):
            self.add_module(f"lin{k}", _LinLayer(c))
        self.requires_grad_(False)
        self.eval()

    @classmethod
    def from_files(cls, vgg_path, lin_path, map_location="cpu") -> "LPIPS":
        """vgg_path: torchvision VGG16 state dict (`features.*`; `classifier.*` ignored).
        lin_path: lpips v0.1 VGG lin weights (`lin{0..4}.model.1.weight`)."""
        model = cls()
        _take(_load_file(vgg_path, "VGG16"), model.features, "features.", vgg_path, "VGG16")
        lin = _load_file(lin_path, "LPIPS lin")
        for k in range(len(_CHANNELS)):
            _take(lin, getattr(model, f"lin{k}"), f"lin{k}.", lin_path, "LPIPS lin")
        return model.to(map_location)

    def _taps(self, x):
        out, start = [], 0
        for end in _TAPS:
            x = self.features[start:end + 1](x)
            out.append(x)
            start = end + 1
        return out

    def forward(self, x, y, mask=None):
        if x.ndim != 4 or x.shape[1] != 3 or x.shape != y.shape:
            raise ValueError(f"LPIPS compares two image batches [N, 3, H, W] of one shape, got "
                             f"{tuple(x.shape)} and {tuple(y.shape)}")
        if x.shape[-2] < 16 or x.shape[-1] < 16:
            raise ValueError(f"LPIPS-VGG needs images of at least 16x16 pixels (4 poolings), got {tuple(x.shape)}")
        n = x.shape[0]
        weight = self.features[0].weight
        # The scaling constants are made at the compute dtype so that float64 uses their exact decimal values.
        shift, scale = (torch.tensor(c, dtype=weight.dtype, device=weight.device).view(1, 3, 1, 1)
                        for c in (_SHIFT, _SCALE))
        both = (torch.cat([x, y]).to(weight.dtype) - shift) / scale
        mask = None if mask is None else self._check_mask(mask, x).to(weight.dtype)
        total = 0
        for k, f in enumerate(self._taps(both)):
            f = f / (f.square().sum(1, keepdim=True).sqrt() + _NORM_EPS)
            d = getattr(self, f"lin{k}").model((f[:n] - f[n:]).square())  # [N, 1, h, w]
            if mask is None:
                total = total + d.mean((1, 2, 3))
            else:
                m = F.interpolate(mask, size=d.shape[-2:], mode="area")
                total = total + (d * m).sum((1, 2, 3)) / m.sum((1, 2, 3)).clamp_min(1e-8)
        return total

    @staticmethod
    def _check_mask(mask, x):
        """[H, W], [N, H, W] or [N, 1, H, W] weights in [0, 1] (bool accepted) -> [N, 1, H, W]."""
        n, _, h, w = x.shape
        m = mask.to(x.device)
        m = m[None, None] if m.ndim == 2 else m[:, None] if m.ndim == 3 else m
        if m.ndim != 4 or m.shape[1] != 1 or m.shape[-2:] != (h, w) or m.shape[0] not in (1, n):
            raise ValueError(f"mask must be [H, W], [N, H, W] or [N, 1, H, W] with H, W = {h}, {w} and N = {n}, "
                             f"got {tuple(mask.shape)}")
        return m.expand(n, 1, h, w).float()
