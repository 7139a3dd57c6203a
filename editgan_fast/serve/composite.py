"""Photos in and out of the generator's square: the crop of an uploaded photo that is embedded, and the paste
of an edit back into the full-resolution photo (only inside the edited region, with a feathered border)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from PIL import Image

from .. import io
from ..editor import losses
from ..errors import InputValueError
from .sessions import Photo

FEATHER_FRACTION = 1 / 24  # blur radius of the paste's alpha, as a fraction of the crop's side


def square_box(width: int, height: int, box=None) -> tuple[int, int, int]:
    """A square (x0, y0, side) inside the photo: `box` checked, or the largest centred square."""
    if box is None:
        side = min(width, height)
        return (width - side) // 2, (height - side) // 2, side
    x0, y0, side = (int(v) for v in box)
    if side < 8 or x0 < 0 or y0 < 0 or x0 + side > width or y0 + side > height:
        raise InputValueError(f"the crop box (x0={x0}, y0={y0}, side={side}) must be a square of at least 8 "
                              f"pixels inside the {width}x{height} photo")
    return x0, y0, side


def crop_for_embedding(image: Image.Image, box: tuple[int, int, int], resolution: int) -> torch.Tensor:
    """The photo's square `box`, resized to the generator's resolution: [3, R, R] in [-1, 1]."""
    x0, y0, side = box
    crop = image.crop((x0, y0, x0 + side, y0 + side)).resize((resolution, resolution), Image.LANCZOS)
    return io.image_to_tensor(crop)


def edit_region(original_labels: torch.Tensor, edited_labels: torch.Tensor, classes) -> torch.Tensor:
    """Where the edit acts, in the label grid: labels changed, plus the vectors' classes in either map."""
    region = losses.changed_region(original_labels, edited_labels)
    if classes:
        region |= losses.class_region(original_labels, edited_labels, classes)
    return region


def paste_back(photo: Photo, edited: torch.Tensor, region: torch.Tensor, segmenter) -> Image.Image:
    """The full-resolution photo with `edited` ([3, R, R]) pasted into its box inside `region`, the alpha
    feathered at the border so no seam shows."""
    x0, y0, side = photo.box
    resolution = edited.shape[-1]
    inside = 1.0 - losses.image_keep_mask(region.cpu(), segmenter, resolution)  # [1, 1, R, R]
    alpha = F.interpolate(inside, size=(side, side), mode="bilinear", align_corners=False)
    radius = max(1, round(side * FEATHER_FRACTION))
    for _ in range(2):  # two box blurs ~ a Gaussian
        alpha = F.avg_pool2d(alpha, 2 * radius + 1, stride=1, padding=radius, count_include_pad=False)
    image = photo.image()
    crop = io.image_to_tensor(image.crop((x0, y0, x0 + side, y0 + side)))
    edited_up = F.interpolate(edited[None].float().cpu(), size=(side, side), mode="bicubic",
                              align_corners=False)[0].clamp(-1, 1)
    blended = crop * (1 - alpha[0]) + edited_up * alpha[0]
    out = image
    out.paste(io.tensor_to_pil(blended), (x0, y0))
    return out
