"""EditGAN's image encoder (`FPNEncoder` in github:nv-tlabs/editGAN_release models/encoder/encoder.py).

An image in [-1, 1] goes through a ResNet-50-style bottom-up path (Bottleneck blocks, stride on the 3x3 conv)
and an FPN top-down path giving p4 (1/16), p3 (1/8) and p2 (1/4 of the input). Each w+ entry has its own
"style code" head: stride-2 3x3 convs with LeakyReLU(0.01) down to 1x1, then a Linear. Entries 0-2 ("course",
EditGAN's spelling) read p4, entries 3-6 read p3, the remaining ones p2. Output: w+ [N, num_ws, style_dim].

Checkpoints are EditGAN's `{'model_state_dict': FPNEncoder.state_dict()}` with its key names. The widths,
block counts, head depths and number of w+ entries are read from the tensor shapes, so reduced encoders load
too; EditGAN's own is ResNet-50 widths with 5/6/7 convs per head. Its `only_last_layer` (W instead of W+) and
`same_view_code` options are not supported: the released configs do not use them.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from .checks import check_state_dict, torch_load
from .errors import CheckpointError

_GROUPS = ("course_styles", "medium_styles", "fine_styles")  # read p4, p3, p2 respectively


@dataclass(frozen=True)
class EncoderArch:
    """Everything that sets the encoder's tensor shapes (defaults: EditGAN's encoder for a 512 px model)."""
    in_channels: int = 3
    stem: int = 64
    planes: tuple = (64, 128, 256, 512)
    blocks: tuple = (3, 4, 6, 3)
    expansion: int = 4
    feature_dim: int = 512
    style_dim: int = 512
    heads: tuple = (3, 4, 9)     # style heads on p4, p3, p2 (sum = num_ws)
    head_convs: tuple = (5, 6, 7)

    @property
    def num_ws(self) -> int:
        return sum(self.heads)


class Bottleneck(torch.nn.Module):
    def __init__(self, cin, planes, expansion, stride):
        super().__init__()
        cout = planes * expansion
        self.conv1 = torch.nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(planes)
        self.conv2 = torch.nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = torch.nn.BatchNorm2d(planes)
        self.conv3 = torch.nn.Conv2d(planes, cout, 1, bias=False)
        self.bn3 = torch.nn.BatchNorm2d(cout)
        # An empty Sequential is the identity and has no keys, as in EditGAN.
        self.shortcut = torch.nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = torch.nn.Sequential(torch.nn.Conv2d(cin, cout, 1, stride=stride, bias=False),
                                                torch.nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        return F.relu(self.bn3(self.conv3(out)) + self.shortcut(x))


class FPN(torch.nn.Module):
    def __init__(self, a: EncoderArch):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(a.in_channels, a.stem, 7, stride=2, padding=3, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(a.stem)
        cin, widths = a.stem, []
        for k, (planes, count) in enumerate(zip(a.planes, a.blocks)):
            blocks = []
            for j in range(count):
                blocks.append(Bottleneck(cin, planes, a.expansion, 2 if (k > 0 and j == 0) else 1))
                cin = planes * a.expansion
            setattr(self, f"layer{k + 1}", torch.nn.Sequential(*blocks))
            widths.append(cin)
        d = a.feature_dim
        self.toplayer = torch.nn.Conv2d(widths[3], d, 1)
        for i in (1, 2, 3):
            setattr(self, f"smooth{i}", torch.nn.Conv2d(d, d, 3, padding=1))
        self.latlayer1 = torch.nn.Conv2d(widths[2], d, 1)
        self.latlayer2 = torch.nn.Conv2d(widths[1], d, 1)
        self.latlayer3 = torch.nn.Conv2d(widths[0], d, 1)

    @staticmethod
    def _upsample_add(top, lateral):
        # Bilinear to the lateral's size (not 2x nearest), so odd sizes work; as EditGAN does.
        return F.interpolate(top, size=lateral.shape[-2:], mode="bilinear", align_corners=False) + lateral

    def forward(self, x):
        c1 = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), kernel_size=3, stride=2, padding=1)
        c2 = self.layer1(c1)
        c3 = self.layer2(c2)
        c4 = self.layer3(c3)
        c5 = self.layer4(c4)
        p4 = self._upsample_add(self.toplayer(c5), self.latlayer1(c4))
        p3 = self._upsample_add(p4, self.latlayer2(c3))
        p2 = self._upsample_add(p3, self.latlayer3(c2))
        return self.smooth3(p2), self.smooth2(p3), self.smooth1(p4)


class ToStyleCode(torch.nn.Module):
    def __init__(self, n_convs, cin, dim):
        super().__init__()
        layers = []
        for i in range(n_convs):
            layers += [torch.nn.Conv2d(cin if i == 0 else dim, dim, 3, stride=2, padding=1), torch.nn.LeakyReLU()]
        self.convs = torch.nn.Sequential(*layers)
        self.linear = torch.nn.Linear(dim, dim)

    def forward(self, x):
        x = self.convs(x)
        if x.shape[-2:] != (1, 1):
            # EditGAN would silently fold the leftover pixels into the batch (x.view(-1, dim)).
            raise ValueError(f"the input image is too large for this encoder: a style head ends at "
                             f"{tuple(x.shape[-2:])} instead of 1x1")
        return self.linear(x.flatten(1))


class FPNEncoder(torch.nn.Module):
    """image [N, C, H, W] in [-1, 1] -> w+ [N, num_ws, style_dim]."""

    def __init__(self, arch: EncoderArch = EncoderArch()):
        super().__init__()
        self.arch = arch
        self.FPN_module = FPN(arch)
        for name, count, n_convs in zip(_GROUPS, arch.heads, arch.head_convs):
            setattr(self, name, torch.nn.ModuleList(
                ToStyleCode(n_convs, arch.feature_dim, arch.style_dim) for _ in range(count)))

    @property
    def num_ws(self) -> int:
        return self.arch.num_ws

    def forward(self, image):
        a = self.arch
        if image.ndim != 4 or image.shape[1] != a.in_channels:
            raise ValueError(f"the encoder takes images [N, {a.in_channels}, H, W], got {tuple(image.shape)}")
        if min(image.shape[-2:]) < 32:
            raise ValueError(f"the encoder needs images of at least 32x32 pixels, got {tuple(image.shape)}")
        p2, p3, p4 = self.FPN_module(image)
        styles = [head(p) for name, p in zip(_GROUPS, (p4, p3, p2)) for head in getattr(self, name)]
        return torch.stack(styles, dim=1)


def _count(sd, pattern) -> int:
    """How many consecutive indices i make `pattern.format(i)` a key of sd."""
    i = 0
    while pattern.format(i) in sd:
        i += 1
    return i


def arch_from_state_dict(sd) -> EncoderArch:
    """Read EncoderArch from an EditGAN encoder state dict; KeyError if a key it needs is absent."""
    conv1 = sd["FPN_module.conv1.weight"]
    planes = tuple(int(sd[f"FPN_module.layer{k}.0.conv1.weight"].shape[0]) for k in (1, 2, 3, 4))
    blocks = tuple(_count(sd, f"FPN_module.layer{k}.{{}}.conv1.weight") for k in (1, 2, 3, 4))
    expansion = int(sd["FPN_module.layer1.0.conv3.weight"].shape[0]) // planes[0]
    heads = tuple(_count(sd, f"{g}.{{}}.linear.weight") for g in _GROUPS)
    if 0 in heads:
        missing = [g for g, h in zip(_GROUPS, heads) if h == 0]
        raise KeyError(f"{missing[0]}.0.linear.weight")
    # Every weight in a ToStyleCode's `convs` belongs to a conv (its LeakyReLUs have none).
    head_convs = tuple(sum(1 for k in sd if re.fullmatch(rf"{g}\.0\.convs\.\d+\.weight", k)) for g in _GROUPS)
    return EncoderArch(in_channels=int(conv1.shape[1]), stem=int(conv1.shape[0]), planes=planes, blocks=blocks,
                       expansion=expansion, feature_dim=int(sd["FPN_module.toplayer.weight"].shape[0]),
                       style_dim=int(sd["course_styles.0.linear.weight"].shape[0]), heads=heads,
                       head_convs=head_convs)


def load_encoder(path, generator, map_location="cpu") -> FPNEncoder:
    """Load EditGAN's `{'model_state_dict': ...}` encoder checkpoint for `generator` (frozen, eval mode)."""
    path = Path(path)
    obj = torch_load(path, "encoder file")
    sd = obj.get("model_state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(sd, dict):
        raise CheckpointError(f"encoder file {path} holds no state dict (expected {{'model_state_dict': ...}})")
    sd = check_state_dict({k.removeprefix("module.") if isinstance(k, str) else k: v for k, v in sd.items()},
                          f"encoder file {path}")
    try:
        arch = arch_from_state_dict(sd)
    except KeyError as e:
        raise CheckpointError(f"encoder file {path} is not an EditGAN FPN encoder: missing key {e}") from None
    except (IndexError, ValueError, ZeroDivisionError) as e:
        raise CheckpointError(f"encoder file {path} is not an EditGAN FPN encoder: {type(e).__name__}: {e}") \
            from None
    if arch.num_ws != generator.num_ws:
        raise CheckpointError(f"encoder file {path} predicts {arch.num_ws} w+ entries, but the generator has "
                              f"num_ws = {generator.num_ws}: the encoder was trained for another resolution")
    if arch.style_dim != generator.style_dim:
        raise CheckpointError(f"encoder file {path} predicts {arch.style_dim}-d styles, but the generator's w has "
                              f"{generator.style_dim} dimensions")
    try:
        encoder = FPNEncoder(arch)
        encoder.load_state_dict(sd, strict=True)
    except (RuntimeError, ValueError, TypeError, IndexError) as e:
        raise CheckpointError(f"encoder file {path} does not match EditGAN's encoder layout: "
                              f"{' '.join(str(e).split())[:600]}") from None
    return encoder.requires_grad_(False).eval().to(map_location)
