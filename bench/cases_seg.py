"""Benchmark cases for the segmentation head in EditGAN's car configuration (issue 4).

512 px config-f generator: 16 feature maps / 6016 channels (4..32 px: 512 channels, 64: 512, 128: 256,
256: 128, 512: 64, two maps per resolution), output 512x512 cropped to rows 64:448 (384x512), 32 classes,
10 ensemble members with EditGAN's layout for >= 32 classes (Linear 6016->256, 256->128, 128->32), batch 1.
Random members and features (no checkpoint needed). Each case is a plain function returning a zero-argument
callable that runs the head once, so any harness can time it; `CASES` lists them with their MAC counts.

MACs per image (h, w = 384, 512 crop; E*H1 = 2560):
- naive (the reference): project the full-resolution stack, 196608 px * 6016 * 2560 = 3028 GMAC, plus the
  MLP tail 196608 * 10 * (256*128 + 128*32) = 72 GMAC;
- per-map projection at native resolution, whole maps: 164 GMAC (the 512 px maps alone 86);
- cpu plan: maps below output size projected at their own resolution over only the source rows the crop
  reads (~60 GMAC: 256 px maps 32.5, 128 px 16.4, 64 px 8.4, lower ~2.6); the 512 px maps, whose projection
  IS the full-resolution work, resampled-and-projected per tile over the crop only (196608 * 128 * 2560 =
  64 GMAC); the MLP tail (72 GMAC, inherent: it is per pixel and nonlinear); bilinear gathers of the
  projections (7 resolutions * 4 taps * 2560 * 196608 = 14 G multiply-adds, cache-bound). ~196 GMAC in all:
  ~2.9 s at the machine's 134 GFLOP/s fp32 matmul rate, so the 3 s target needs near-peak GEMMs.
Memory (RSS high-water mark above the inputs, measured with the 256-pixel default tiles): cpu fp32 ~390 MiB,
bf16 ~340 MiB.
"""
from __future__ import annotations

import os
import sys

import torch

import editgan_fast
from editgan_fast.ops.seg_head import seg_head

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
from test_cpu_seg import random_case  # noqa: E402

CAR_SIZES = (4, 4, 8, 8, 16, 16, 32, 32, 64, 64, 128, 128, 256, 256, 512, 512)
CAR_CHANNELS = (512,) * 10 + (256, 256, 128, 128, 64, 64)
CAR_OUT, CAR_CROP = 512, (64, 448, 0, 512)
CAR_CLASSES, CAR_MEMBERS, CAR_H1, CAR_H2 = 32, 10, 256, 128  # EditGAN's net for >= 32 classes


def car_inputs(seed=0):
    """Random car-configuration maps and members (the tests' factory: EditGAN classifier checkpoints)."""
    return random_case(CAR_SIZES, CAR_CHANNELS, batch=1, members=CAR_MEMBERS, widths=(CAR_H1, CAR_H2),
                       classes=CAR_CLASSES, seed=seed)


def _crop_pixels():
    y0, y1, x0, x1 = CAR_CROP
    return (y1 - y0) * (x1 - x0)


def naive_macs():
    e_h1 = CAR_MEMBERS * CAR_H1
    tail = CAR_MEMBERS * (CAR_H1 * CAR_H2 + CAR_H2 * CAR_CLASSES)
    return _crop_pixels() * (sum(CAR_CHANNELS) * e_h1 + tail)


def seg_head_forward(backend_name, dtype=None, mode="bilinear"):
    """The car head, logits for the whole crop (what `apply`/`predict` run)."""
    feats, members = car_inputs()

    def run():
        with torch.no_grad(), editgan_fast.use_backend(backend_name, dtype=dtype):
            return seg_head(feats, members, CAR_OUT, crop=CAR_CROP, mode=mode)
    return run


def seg_head_region_backward(backend_name, dtype=None, fraction=0.25):
    """What one refinement step runs: nearest-mode logits inside a region (a box covering `fraction` of the
    crop), cross-entropy, and dL/dfeatures."""
    feats, members = car_inputs()
    feats = [f.requires_grad_() for f in feats]
    y0, y1, x0, x1 = CAR_CROP
    region = torch.zeros(y1 - y0, x1 - x0, dtype=torch.bool)
    side = int((fraction ** 0.5) * (y1 - y0))
    region[:side, :side * (x1 - x0) // (y1 - y0)] = True
    target = torch.randint(0, CAR_CLASSES, (1, int(region.sum())), generator=torch.Generator().manual_seed(1))

    def run():
        with editgan_fast.use_backend(backend_name, dtype=dtype):
            logits = seg_head(feats, members, CAR_OUT, crop=CAR_CROP, mode="nearest", region=region)
            loss = torch.nn.functional.cross_entropy(logits, target)
            return torch.autograd.grad(loss, feats)
    return run


# (name, backend, dtype, factory, naive MACs for a GFLOP/s column). The reference rows need ~6 GB and about a
# minute each: run them once per table.
CASES = [
    ("seg_head car fwd fp32", "reference", None, lambda: seg_head_forward("reference"), naive_macs()),
    ("seg_head car fwd fp32", "cpu", None, lambda: seg_head_forward("cpu"), naive_macs()),
    ("seg_head car fwd bf16", "cpu", torch.bfloat16, lambda: seg_head_forward("cpu", torch.bfloat16),
     naive_macs()),
    ("seg_head car region fwd+bwd", "reference", None, lambda: seg_head_region_backward("reference"), None),
    ("seg_head car region fwd+bwd", "cpu", None, lambda: seg_head_region_backward("cpu"), None),
]
