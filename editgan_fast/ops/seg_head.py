"""seg_head: DatasetGAN/EditGAN's pixel-classifier ensemble over the generator's feature maps.

    stack  = concat_m crop(upsample(features[m], out_size, mode))          [N, D, h, w]
    logits = mean_e  MLP_e(stack[n, :, y, x])                               [N, C, h, w]
    MLP_e  = Linear(D,H1) ReLU BN(H1) Linear(H1,H2) ReLU BN(H2) Linear(H2,C)   (BatchNorm in eval mode)

`mode` is "bilinear" (align_corners=False, what EditGAN segments with) or "nearest" (its editing loss).
`crop` = (y0, y1, x0, x1) in output pixels (EditGAN's car model: (64, 448, 0, 512)).
`region`, a bool mask [h, w] of the (cropped) output, asks for the logits of those pixels only: the result is
then [N, C, P] with P = region.sum(), pixels in row-major order. Fast backends evaluate only what is needed.
`region` may also be those pixels' flat row-major indices (int64 [P], sorted, unique): the form to pass inside
torch.compile, where turning a mask into indices is data-dependent (a graph break).

The reference materializes the stack (it is the oracle) and refuses, with `MemoryBudgetExceeded`, when it would
exceed `reference_memory_budget()` bytes (EDITGAN_FAST_REFERENCE_MEMORY_GB, 8 GiB by default). Fast backends
never build it: the first linear layer commutes with the (linear, per-channel) upsampling, so they project each
map at its own resolution first.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .. import backend
from . import _library
from ..errors import LimitExceeded
from ._checks import check_tensor

MODES = ("bilinear", "nearest")


class MemoryBudgetExceeded(LimitExceeded, RuntimeError):
    """The reference segmentation head would materialize more memory than allowed."""


def reference_memory_budget() -> int:
    return int(float(os.environ.get("EDITGAN_FAST_REFERENCE_MEMORY_GB", "8")) * 2**30)


@dataclass(frozen=True)
class PixelMLP:
    """One ensemble member, eval mode. weights/biases: the three Linear layers; bn_*: the two BatchNorm1d."""
    weights: tuple   # ([H1, D], [H2, H1], [C, H2])
    biases: tuple    # ([H1], [H2], [C])
    bn_mean: tuple   # ([H1], [H2])
    bn_var: tuple
    bn_weight: tuple
    bn_bias: tuple
    bn_eps: float = 1e-5

    @property
    def in_features(self):
        return self.weights[0].shape[1]

    @property
    def num_classes(self):
        return self.weights[2].shape[0]

    def folded(self):
        """[(W, b)] x 3 with each BatchNorm folded into the Linear layer after it (exact in eval mode):
        BN(h) = h * s + t with s = gamma / sqrt(var + eps), t = beta - mean * s, so W (h s + t) + b =
        (W diag(s)) h + (W t + b)."""
        w1, w2, w3 = self.weights
        b1, b2, b3 = self.biases
        out = [(w1, b1)]
        for i, (w, b) in enumerate(((w2, b2), (w3, b3))):
            s = self.bn_weight[i] * torch.rsqrt(self.bn_var[i] + self.bn_eps)
            t = self.bn_bias[i] - self.bn_mean[i] * s
            out.append((w * s[None, :], b + w @ t))
        return out

    def to(self, *args, **kwargs):
        conv = lambda ts: tuple(t.to(*args, **kwargs) for t in ts)
        return PixelMLP(conv(self.weights), conv(self.biases), conv(self.bn_mean), conv(self.bn_var),
                        conv(self.bn_weight), conv(self.bn_bias), self.bn_eps)


def mlp_reference(m: PixelMLP, h):
    """h [P, D] -> logits [P, C], layer by layer as torch.nn would compute it."""
    for i in range(3):
        h = F.linear(h, m.weights[i].to(h.dtype), m.biases[i].to(h.dtype))
        if i < 2:
            h = F.relu(h)
            h = F.batch_norm(h, m.bn_mean[i].to(h.dtype), m.bn_var[i].to(h.dtype), m.bn_weight[i].to(h.dtype),
                             m.bn_bias[i].to(h.dtype), training=False, eps=m.bn_eps)
    return h


def upsample_feature(f, out_size, mode):
    if tuple(f.shape[-2:]) == tuple(out_size):
        return f
    if mode == "bilinear":
        return F.interpolate(f, size=out_size, mode="bilinear", align_corners=False)
    return F.interpolate(f, size=out_size, mode="nearest")


def crop_box(out_size, crop):
    h, w = out_size
    y0, y1, x0, x1 = (0, h, 0, w) if crop is None else crop
    if not (0 <= y0 < y1 <= h and 0 <= x0 < x1 <= w):
        raise ValueError(f"crop {crop} does not fit inside the output size {h}x{w}")
    return y0, y1, x0, x1


def seg_head_reference(features, members, out_size, crop=None, mode="bilinear", region=None,
                       pixel_chunk=65536):
    n = features[0].shape[0]
    y0, y1, x0, x1 = crop_box(out_size, crop)
    dtype = features[0].dtype
    dim = sum(f.shape[1] for f in features)
    need = n * dim * (y1 - y0) * (x1 - x0) * dtype.itemsize
    budget = reference_memory_budget()
    if need > budget:
        raise MemoryBudgetExceeded(
            f"the reference segmentation head would materialize a {need / 2**30:.1f} GiB feature stack "
            f"(budget {budget / 2**30:.1f} GiB, EDITGAN_FAST_REFERENCE_MEMORY_GB); use a fast backend "
            f"(cpu/triton/cuda), which never builds it")
    stack = torch.cat([upsample_feature(f, out_size, mode)[:, :, y0:y1, x0:x1] for f in features], dim=1)
    pixels = stack.permute(0, 2, 3, 1)  # [N, h, w, D]
    if region is not None:
        pixels = pixels[:, region] if region.dtype == torch.bool else pixels.flatten(1, 2)[:, region]  # [N, P, D]
    flat = pixels.reshape(-1, dim)
    out = [flat.new_zeros(0, members[0].num_classes)]  # an empty region gives [N, C, 0]
    for start in range(0, flat.shape[0], pixel_chunk):
        chunk = flat[start:start + pixel_chunk]
        out.append(sum(mlp_reference(m, chunk) for m in members) / len(members))
    logits = torch.cat(out).reshape(*pixels.shape[:-1], members[0].num_classes)  # [N, h, w, C] or [N, P, C]
    return logits.movedim(-1, 1)


backend.register_reference("seg_head", seg_head_reference)


def seg_head(features, members, out_size, crop=None, mode="bilinear", region=None):
    if not features:
        raise ValueError("seg_head needs at least one feature map")
    x = features[0]
    for i, f in enumerate(features):
        check_tensor(f"features[{i}]", f, ndim=4, device=x.device)
        if f.shape[0] != x.shape[0]:
            raise ValueError(f"features[{i}] has batch {f.shape[0]}, features[0] has {x.shape[0]}")
    if not members:
        raise ValueError("seg_head needs at least one ensemble member")
    dim = sum(f.shape[1] for f in features)
    for i, m in enumerate(members):
        if m.in_features != dim:
            raise ValueError(f"classifier {i} expects {m.in_features} feature channels, the generator's "
                             f"feature maps have {dim}")
        if m.num_classes != members[0].num_classes:
            raise ValueError(f"classifier {i} has {m.num_classes} classes, classifier 0 has "
                             f"{members[0].num_classes}")
    if mode not in MODES:
        raise ValueError(f"upsample mode must be one of {MODES}, got {mode!r}")
    out_size = (int(out_size), int(out_size)) if isinstance(out_size, int) else tuple(int(s) for s in out_size)
    box = crop_box(out_size, crop)
    if region is not None:
        region = _checked_region(region, box).to(x.device)
    name = backend.resolve_name("seg_head", x)
    if _library.traced(name):
        pixels = None if region is None else region.flatten().nonzero()[:, 0] if region.dtype == torch.bool \
            else region
        tensors, eps = _library.flatten_members(members)
        op = _library.for_trace(_library.seg_head)
        return op(list(features), tensors, eps, list(out_size), None if crop is None else list(crop), mode, pixels,
                  backend.current().dtype)
    if region is not None and region.dtype != torch.bool and not torch.compiler.is_compiling():
        region = _library.region_mask(region, box, x.device)  # what every backend takes in eager mode
    return backend.implementation("seg_head", name)(features, members, out_size, crop=crop, mode=mode,
                                                    region=region)


def _checked_region(region, box):
    y0, y1, x0, x1 = box
    shape = (y1 - y0, x1 - x0)
    if region.dtype == torch.bool and tuple(region.shape) == shape:
        return region
    if region.dtype != torch.int64 or region.ndim != 1:
        raise ValueError(f"region must be a bool mask of shape {shape} or int64 flat pixel indices, got "
                         f"{region.dtype} {tuple(region.shape)}")
    # Checking indices reads them on the host: done eagerly, not inside a compiled graph.
    if not torch.compiler.is_compiling() and region.numel() and (
            region.min() < 0 or region.max() >= shape[0] * shape[1] or (region.diff() <= 0).any()):
        raise ValueError(f"region indices must be sorted, unique and inside the {shape[0]}x{shape[1]} output")
    return region
