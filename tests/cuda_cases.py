"""Inputs shared by the CUDA kernel tests (tests/test_cuda_backend.py on a GPU, tests/test_cuda_emulated.py on
the CPU): the upfirdn2d configurations and random segmentation-head problems."""
import itertools

import torch

from editgan_fast.ops.seg_head import PixelMLP
from editgan_fast.ops.upfirdn2d import setup_filter

UPFIRDN_CASES = [  # (up, down, padding (px0, px1, py0, py1), taps or 2-D shape, flip_filter)
    (1, 1, (1, 2, 1, 2), [1, 3, 3, 1], False),
    (2, 1, (2, 1, 2, 1), [1, 3, 3, 1], False),   # StyleGAN2's skip upsample
    (2, 1, (1, 1, 1, 1), [1, 3, 3, 1], False),   # the blur after the up conv (k=3)
    (1, 2, (1, 1, 1, 1), [1, 3, 3, 1], False),   # downsample
    (3, 2, (0, -1, 2, 1), [1, 2, 5, 2, 1], True),
    (2, 3, (-2, 3, 1, -1), (3, 4), False),
    (1, 1, (0, 0, 0, 0), (2, 5), True),
]

# (mode, crop, use_region) over an out_size of (40, 44).
SEG_CASES = list(itertools.product(["bilinear", "nearest"], [None, (5, 37, 3, 40)], [False, True]))


def make_filter(spec, dtype=torch.float64, device="cpu"):
    """A normalized 1-D filter from taps, or a random positive 2-D filter of the given shape."""
    if isinstance(spec, list):
        return setup_filter(spec, dtype=dtype, device=device)
    return torch.rand(spec, dtype=dtype, device=device) + 0.1


def random_members(dim, classes, count, h1, h2, device):
    r = lambda *s: torch.randn(s, device=device)
    return [PixelMLP(weights=(r(h1, dim) / dim ** 0.5, r(h2, h1) / h1 ** 0.5, r(classes, h2) / h2 ** 0.5),
                     biases=(r(h1), r(h2), r(classes)), bn_mean=(r(h1), r(h2)),
                     bn_var=(torch.rand(h1, device=device) + 0.5, torch.rand(h2, device=device) + 0.5),
                     bn_weight=(r(h1), r(h2)), bn_bias=(r(h1), r(h2))) for _ in range(count)]


def seg_inputs(crop, use_region, device, seed=4):
    """Features at StyleGAN2-like sizes (two maps per resolution, one map at a size that is not a power of two
    and one at the output height), 3 members with hidden sizes that are not multiples of the warp size."""
    torch.manual_seed(seed)
    out_size = (40, 44)
    sizes, channels = [4, 4, 8, 8, 16, 16, 40, 40], [12, 12, 10, 10, 6, 6, 4, 4]
    features = [torch.randn(2, c, s, s + 4 * (s == 40), device=device) for s, c in zip(sizes, channels)]
    members = random_members(sum(channels), classes=5, count=3, h1=40, h2=12, device=device)
    h = (crop[1] - crop[0]) if crop else out_size[0]
    w = (crop[3] - crop[2]) if crop else out_size[1]
    region = (torch.rand(h, w, device=device) < 0.3) if use_region else None
    return features, members, out_size, region
