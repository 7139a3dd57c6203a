"""The z a seed stands for. "torch" (ours): z ~ N(0, I) from torch.Generator(seed). "ada": stylegan2-ada's
`generate.py --seeds` convention, np.random.RandomState(seed).randn(1, z_dim) (used there at truncation 1.0),
so a seed gives the same image here as there for the same weights."""
from __future__ import annotations

import numpy as np
import torch

from ..errors import InputValueError

STYLES = ("torch", "ada")
DEFAULT_TRUNCATION = {"torch": 0.7, "ada": 1.0}


def seed_z(seed: int, z_dim: int, style: str = "torch") -> torch.Tensor:
    """z [1, z_dim] float32 for `seed` drawn the `style` way."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise InputValueError(f"seed must be an integer, got {seed!r}")
    if style == "torch":
        if not -2 ** 63 <= seed < 2 ** 64:
            raise InputValueError(f"seed must fit in 64 bits, got {seed}")
        return torch.randn(1, z_dim, generator=torch.Generator().manual_seed(int(seed)))
    if style == "ada":
        if not 0 <= seed < 2 ** 32:
            raise InputValueError(f"stylegan2-ada seeds are 0 .. 2**32 - 1, got {seed}")
        return torch.from_numpy(np.random.RandomState(int(seed)).randn(1, z_dim)).float()
    raise InputValueError(f"seed style must be one of {STYLES}, got {style!r}")
