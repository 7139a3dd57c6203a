"""Random files in the formats the segmenter, LPIPS and encoder loaders read, for tests.

Weights are random but never trivial: BatchNorm running statistics and affine parameters are far from their
identity defaults, so a loader that drops or misplaces them changes the result.
"""
from __future__ import annotations

from pathlib import Path

import torch


def editgan_widths(num_classes: int) -> tuple[int, int]:
    """EditGAN's pixel_classifier hidden widths: (256, 128) for >= 32 classes, else (128, 32)."""
    return (256, 128) if num_classes >= 32 else (128, 32)


def random_classifier_state_dict(dim: int, num_classes: int, seed: int, widths=None) -> dict[str, torch.Tensor]:
    """State dict of EditGAN's pixel_classifier (keys `layers.{0..6}.*`, no `module.` prefix)."""
    g = torch.Generator().manual_seed(seed)
    h1, h2 = widths or editgan_widths(num_classes)
    sd = {}
    for i, (fan_in, fan_out) in zip((0, 3, 6), ((dim, h1), (h1, h2), (h2, num_classes))):
        sd[f"layers.{i}.weight"] = torch.randn(fan_out, fan_in, generator=g) / fan_in ** 0.5
        sd[f"layers.{i}.bias"] = 0.1 * torch.randn(fan_out, generator=g)
    for i, width in zip((2, 5), (h1, h2)):
        sd[f"layers.{i}.weight"] = 1 + 0.3 * torch.randn(width, generator=g)
        sd[f"layers.{i}.bias"] = 0.2 * torch.randn(width, generator=g)
        sd[f"layers.{i}.running_mean"] = 0.5 * torch.rand(width, generator=g)
        sd[f"layers.{i}.running_var"] = 0.2 + 2 * torch.rand(width, generator=g)
        sd[f"layers.{i}.num_batches_tracked"] = torch.tensor(1000, dtype=torch.long)
    return sd


def write_classifier(path, dim: int, num_classes: int, seed: int, data_parallel: bool = True,
                     widths=None) -> Path:
    """One classifier file as EditGAN saves it: {'model_state_dict': sd} with DataParallel's `module.`."""
    prefix = "module." if data_parallel else ""
    sd = random_classifier_state_dict(dim, num_classes, seed, widths)
    torch.save({"model_state_dict": {prefix + k: v for k, v in sd.items()}}, path)
    return Path(path)


def write_classifiers(directory, count: int, dim: int, num_classes: int, seed: int = 0) -> list[Path]:
    directory = Path(directory)
    return [write_classifier(directory / f"model_{i}.pth", dim, num_classes, seed + i) for i in range(count)]


def feature_resolutions(resolution: int) -> list[int]:
    """Resolutions of the generator's feature maps in EditGAN order: const 4, conv1 4, then two per level."""
    levels = resolution.bit_length() - 3  # log2(resolution) - 2
    return [4, 4] + [4 << (i // 2 + 1) for i in range(2 * levels)]


class StubGenerator:
    """Just what the segmenter and encoder loaders ask of a generator: feature channels, resolution, w+ shape."""

    def __init__(self, resolution=16, feature_channels=(8, 8, 6, 6, 4, 4), style_dim=512):
        self.resolution = resolution
        self.feature_channels = list(feature_channels)
        assert len(self.feature_channels) == len(feature_resolutions(resolution))
        self.num_ws = 2 * (resolution.bit_length() - 1) - 2
        self.style_dim = style_dim

    def random_features(self, n: int, seed: int, dtype=torch.float32) -> list[torch.Tensor]:
        g = torch.Generator().manual_seed(seed)
        return [torch.randn(n, c, r, r, generator=g).to(dtype)
                for c, r in zip(self.feature_channels, feature_resolutions(self.resolution))]


VGG16_CONFIG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


def write_vgg16(path, seed: int) -> Path:
    """A torchvision-format VGG16 state dict (`features.{i}.*` and `classifier.*`), He-scaled random weights."""
    g = torch.Generator().manual_seed(seed)
    sd, cin, index = {}, 3, 0
    for v in VGG16_CONFIG:
        if v == "M":
            index += 1
            continue
        sd[f"features.{index}.weight"] = torch.randn(v, cin, 3, 3, generator=g) * (2 / (9 * cin)) ** 0.5
        sd[f"features.{index}.bias"] = 0.05 * torch.randn(v, generator=g)
        cin, index = v, index + 2  # the conv and its ReLU
    sd["classifier.0.weight"] = torch.randn(8, 8, generator=g)  # torchvision's head: present, unused by LPIPS
    torch.save(sd, path)
    return Path(path)


def write_lpips_lin(path, seed: int, channels=(64, 128, 256, 512, 512)) -> Path:
    """The lpips package's lin weights file: `lin{k}.model.1.weight` [1, C_k, 1, 1], non-negative."""
    g = torch.Generator().manual_seed(seed)
    torch.save({f"lin{k}.model.1.weight": torch.rand(1, c, 1, 1, generator=g) / c ** 0.5
                for k, c in enumerate(channels)}, path)
    return Path(path)


def editgan_encoder_shapes(num_ws=16, stem=64, planes=(64, 128, 256, 512), blocks=(3, 4, 6, 3), expansion=4,
                           feature_dim=512, style_dim=512, head_convs=(5, 6, 7)) -> dict[str, tuple]:
    """Key -> shape of EditGAN's FPNEncoder state dict (defaults: its ResNet-50 encoder, 16 w+ entries)."""
    shapes = {}

    def bn(prefix, c):
        shapes.update({f"{prefix}.weight": (c,), f"{prefix}.bias": (c,), f"{prefix}.running_mean": (c,),
                       f"{prefix}.running_var": (c,), f"{prefix}.num_batches_tracked": ()})

    def conv(prefix, cout, cin, k, bias):
        shapes[f"{prefix}.weight"] = (cout, cin, k, k)
        if bias:
            shapes[f"{prefix}.bias"] = (cout,)

    conv("FPN_module.conv1", stem, 3, 7, False)
    bn("FPN_module.bn1", stem)
    cin, outs = stem, []
    for k, (p, count) in enumerate(zip(planes, blocks)):
        for j in range(count):
            b = f"FPN_module.layer{k + 1}.{j}"
            conv(f"{b}.conv1", p, cin, 1, False)
            bn(f"{b}.bn1", p)
            conv(f"{b}.conv2", p, p, 3, False)
            bn(f"{b}.bn2", p)
            conv(f"{b}.conv3", p * expansion, p, 1, False)
            bn(f"{b}.bn3", p * expansion)
            if j == 0 and (k > 0 or cin != p * expansion):  # projection shortcut
                conv(f"{b}.shortcut.0", p * expansion, cin, 1, False)
                bn(f"{b}.shortcut.1", p * expansion)
            cin = p * expansion
        outs.append(cin)
    conv("FPN_module.toplayer", feature_dim, outs[3], 1, True)
    for i in (1, 2, 3):
        conv(f"FPN_module.smooth{i}", feature_dim, feature_dim, 3, True)
    for i, c in zip((1, 2, 3), (outs[2], outs[1], outs[0])):
        conv(f"FPN_module.latlayer{i}", feature_dim, c, 1, True)
    for group, count, n_convs in zip(("course_styles", "medium_styles", "fine_styles"), (3, 4, num_ws - 7),
                                     head_convs):
        for h in range(count):
            for i in range(n_convs):
                conv(f"{group}.{h}.convs.{2 * i}", style_dim, feature_dim if i == 0 else style_dim, 3, True)
            shapes[f"{group}.{h}.linear.weight"] = (style_dim, style_dim)
            shapes[f"{group}.{h}.linear.bias"] = (style_dim,)
    return shapes


def write_encoder(path, seed: int, **arch) -> Path:
    """A random EditGAN encoder checkpoint {'model_state_dict': ...}; BatchNorm statistics are not identity."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for key, shape in editgan_encoder_shapes(**arch).items():
        if key.endswith("num_batches_tracked"):
            sd[key] = torch.tensor(100)
        elif key.endswith("running_var"):
            sd[key] = 0.5 + torch.rand(shape, generator=g)
        elif len(shape) > 1:  # conv / linear weight, fan-in scaled
            fan_in = 1
            for s in shape[1:]:
                fan_in *= s
            sd[key] = torch.randn(shape, generator=g) * (2 / fan_in) ** 0.5
        elif key.endswith(".weight"):  # BatchNorm gamma
            sd[key] = 1 + 0.2 * torch.randn(shape, generator=g)
        else:
            sd[key] = 0.1 * torch.randn(shape, generator=g)
    torch.save({"model_state_dict": sd}, path)
    return Path(path)
