"""Toy faces: a procedural data source for training and measuring the bundled model.

A latent z (any length >= NUM_PARAMS, normally the generator's style_dim) decides a cartoon face: colours,
sizes and positions of background, skin, hair, eye whites, pupils and mouth. `render(z)` draws the image and
its exact label map, batched and vectorised, at 64 x 64 by default.

The face parameters are Phi(pixel_norm(z)[:NUM_PARAMS]) (Phi: the standard normal CDF). StyleGAN2's mapping
network starts with the same pixel norm, so the image is a deterministic function of exactly what the
generator sees: z and c*z render the same face. Images are flat-coloured per class (colours drawn per sample),
so the label map can be read back from the colours, and each class's colour is known for measuring edits.
"""
from __future__ import annotations

import math

import torch

CLASSES = ("background", "skin", "hair", "eye_white", "pupil", "mouth")
BACKGROUND, SKIN, HAIR, EYE_WHITE, PUPIL, MOUTH = range(len(CLASSES))
RESOLUTION = 64

# Parameter slots in [0, 1] (after Phi); `_lerp` maps each to its range below.
_PARAMS = (
    "face_x", "face_y", "face_rx", "face_ry",
    "hair_len", "hair_puff", "fringe",
    "eye_dx", "eye_y", "eye_rx", "eye_ry", "pupil", "gaze",
    "mouth_y", "mouth_w", "mouth_h",
    "bg_hue", "skin_tone", "hair_hue", "hair_dark",
)
NUM_PARAMS = len(_PARAMS)


def face_params(z: torch.Tensor) -> dict[str, torch.Tensor]:
    """z [N, D] (D >= NUM_PARAMS) -> {name: [N] in [0, 1]}."""
    if not isinstance(z, torch.Tensor) or z.ndim != 2 or not z.is_floating_point():
        raise ValueError(f"z must be a float tensor [N, D], got "
                         f"{tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__}")
    if z.shape[1] < NUM_PARAMS:
        raise ValueError(f"z needs at least {NUM_PARAMS} dimensions for the toy-face parameters, got {z.shape[1]}")
    z = z.double()
    zn = z * torch.rsqrt(z.square().mean(dim=1, keepdim=True) + 1e-8)  # the mapping network's PixelNorm
    u = 0.5 * (1 + torch.erf(zn[:, :NUM_PARAMS] / math.sqrt(2)))
    return {name: u[:, i] for i, name in enumerate(_PARAMS)}


def _lerp(u, lo, hi):
    return lo + (hi - lo) * u


def _hsv(h, s, v):
    """[N] each in [0, 1] -> RGB [N, 3] in [0, 1]."""
    k = torch.stack([(5 + h * 6) % 6, (3 + h * 6) % 6, (1 + h * 6) % 6], dim=1)
    return v[:, None] - v[:, None] * s[:, None] * torch.clamp(torch.minimum(k, 4 - k), 0, 1)


def class_colours(p: dict[str, torch.Tensor]) -> torch.Tensor:
    """Per-sample colour of every class: [N, len(CLASSES), 3] in [-1, 1].

    Ranges keep neighbouring classes apart (light background, mid skin, dark or saturated hair, white eyes,
    near-black pupils, red mouth), so every part is visible in every sample."""
    n = p["face_x"].shape[0]
    one = torch.ones(n, dtype=torch.float64)
    bg = _hsv(p["bg_hue"], 0.25 * one, 0.95 * one)
    skin = _hsv(_lerp(p["skin_tone"], 0.03, 0.10), _lerp(p["skin_tone"], 0.25, 0.55),
                _lerp(p["skin_tone"], 0.90, 0.55))
    hair = _hsv(_lerp(p["hair_hue"], 0.0, 0.75), _lerp(p["hair_dark"], 0.9, 0.5), _lerp(p["hair_dark"], 0.7, 0.15))
    white = torch.stack([one, one, one * 0.97], dim=1)
    pupil = torch.stack([one * 0.05, one * 0.05, one * 0.15], dim=1)
    mouth = torch.stack([one * 0.75, one * 0.1, one * 0.15], dim=1)
    return torch.stack([bg, skin, hair, white, pupil, mouth], dim=1) * 2 - 1


def _ellipse(x, y, cx, cy, rx, ry):
    """x, y [H, W] grids; cx.. [N] -> bool [N, H, W]."""
    return ((x - cx[:, None, None]) / rx[:, None, None]).square() + \
        ((y - cy[:, None, None]) / ry[:, None, None]).square() <= 1


def render_labels(p: dict[str, torch.Tensor], resolution: int = RESOLUTION) -> torch.Tensor:
    """Exact label map [N, H, W] int64, classes drawn back to front (later parts cover earlier ones)."""
    c = (torch.arange(resolution, dtype=torch.float64) + 0.5) / resolution  # pixel centres in [0, 1]
    y, x = torch.meshgrid(c, c, indexing="ij")
    cx, cy = _lerp(p["face_x"], 0.44, 0.56), _lerp(p["face_y"], 0.50, 0.60)
    rx, ry = _lerp(p["face_rx"], 0.24, 0.32), _lerp(p["face_ry"], 0.30, 0.36)
    col = lambda v: v[:, None, None]
    # Hair: a wider ellipse behind the head, cut at a length that varies from ear level to the shoulders.
    puff = _lerp(p["hair_puff"], 1.12, 1.35)
    hair_back = _ellipse(x, y, cx, cy - 0.06, rx * puff, ry * 1.15) & \
        (y <= col(cy + _lerp(p["hair_len"], -0.05, 0.40)))
    face = _ellipse(x, y, cx, cy, rx, ry)
    fringe = face & (y <= col(cy - ry * _lerp(p["fringe"], 0.85, 0.55)))
    eye_y = cy - ry * _lerp(p["eye_y"], 0.05, 0.25)
    erx, ery = rx * _lerp(p["eye_rx"], 0.20, 0.30), ry * _lerp(p["eye_ry"], 0.13, 0.21)
    pr = torch.minimum(erx, ery) * _lerp(p["pupil"], 0.35, 0.95)
    gaze = (erx - pr) * _lerp(p["gaze"], -0.8, 0.8)
    eyes = torch.zeros_like(face)
    pupils = torch.zeros_like(face)
    for side in (-1, 1):
        ex = cx + side * rx * _lerp(p["eye_dx"], 0.32, 0.48)
        eyes |= _ellipse(x, y, ex, eye_y, erx, ery)
        pupils |= _ellipse(x, y, ex + gaze, eye_y, pr, pr)
    mouth = _ellipse(x, y, cx, cy + ry * _lerp(p["mouth_y"], 0.45, 0.62), rx * _lerp(p["mouth_w"], 0.18, 0.45),
                     ry * _lerp(p["mouth_h"], 0.07, 0.18))
    labels = torch.full(face.shape, BACKGROUND, dtype=torch.int64)
    for cls, mask in ((HAIR, hair_back), (SKIN, face), (HAIR, fringe), (EYE_WHITE, eyes), (PUPIL, pupils & eyes),
                      (MOUTH, mouth)):
        labels[mask] = cls
    return labels


def paint(labels: torch.Tensor, colours: torch.Tensor) -> torch.Tensor:
    """labels [N, H, W], colours [N, C, 3] -> image [N, 3, H, W] (each pixel its class's colour)."""
    n = labels.shape[0]
    img = colours[torch.arange(n)[:, None, None], labels]  # [N, H, W, 3]
    return img.permute(0, 3, 1, 2).contiguous()


def render(z: torch.Tensor, resolution: int = RESOLUTION) -> tuple[torch.Tensor, torch.Tensor]:
    """z [N, D] -> (image [N, 3, H, W] float32 in [-1, 1], labels [N, H, W] int64)."""
    p = face_params(z)
    labels = render_labels(p, resolution)
    return paint(labels, class_colours(p)).float(), labels


def sample_z(n: int, dim: int, seed: int) -> torch.Tensor:
    """n latents [n, dim] from a seeded generator (independent of the global RNG)."""
    if dim < NUM_PARAMS:
        raise ValueError(f"the toy-face latent needs at least {NUM_PARAMS} dimensions, got {dim}")
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(seed))
