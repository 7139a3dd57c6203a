"""Bytes in and out of the service: PNG frames (image, label map), uploaded photos, label maps and latents,
each decoded with its size checked before the work and a clear error naming what is wrong."""
from __future__ import annotations

import base64
import io as _io
import warnings

import numpy as np
import torch
from PIL import Image

from .. import io
from ..errors import FileFormatError, InputValueError, LimitExceeded


def frames(images: torch.Tensor, labels: torch.Tensor | None) -> list[dict]:
    """Rows [B, 3, H, W] (and label maps [B, h, w], or None) as one rendered row's JSON fields each, {"image",
    "labels"} (labels when rendered) as base64 PNGs, the batch converted to 8 bits once: a renderer's batch of
    16 frames costs one conversion, not 16."""
    pngs = [{"image": b64(png)} for png in io.image_pngs(images)]
    if labels is not None:
        for fields, png in zip(pngs, io.labels_pngs(labels)):
            fields["labels"] = b64(png)
    return pngs


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def from_b64(text: str, what: str) -> bytes:
    if "," in text[:64] and text.startswith("data:"):  # a data URL from a browser canvas
        text = text.split(",", 1)[1]
    try:
        return base64.b64decode(text, validate=True)
    except ValueError:
        raise InputValueError(f"{what} is not valid base64") from None


def open_image(data: bytes, what: str, max_pixels: int) -> Image.Image:
    """Decode an uploaded image, refusing one larger than `max_pixels` before its pixels are decoded."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(_io.BytesIO(data))
            w, h = im.size
            if w * h > max_pixels:
                raise LimitExceeded(f"{what} is {w}x{h} = {w * h} pixels, the server's limit is {max_pixels} "
                                    f"(max_image_pixels)")
            im.load()
    except LimitExceeded:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombWarning, Image.DecompressionBombError) as e:
        raise FileFormatError(f"{what} is not an image the server can read: {e}") from None
    return im


def decode_labels(data: bytes, num_classes: int, size: tuple[int, int], max_pixels: int) -> torch.Tensor:
    """A painted label map (palette, gray or palette-coloured RGB PNG) -> int64 [h, w], checked."""
    im = open_image(data, "the label map", max_pixels)
    try:
        return io.labels_from_image(im, num_classes, size, "the label map")
    except ValueError as e:
        raise InputValueError(str(e)) from None


def decode_latent(data: bytes, num_ws: int, style_dim: int) -> torch.Tensor:
    """An uploaded w+ `.npy` (float [num_ws, style_dim] or EditGAN's [1, num_ws, style_dim]), never unpickled."""
    try:
        array = np.load(_io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise FileFormatError(f"the latent is not a NumPy .npy array: {e}") from None
    if not isinstance(array, np.ndarray) or array.dtype.kind != "f" \
            or array.shape not in ((num_ws, style_dim), (1, num_ws, style_dim)):
        raise FileFormatError(f"the latent holds a {getattr(array, 'dtype', '?')} array of shape "
                              f"{getattr(array, 'shape', '?')}; this generator's latents are float "
                              f"[{num_ws}, {style_dim}]")
    tensor = torch.from_numpy(array.reshape(num_ws, style_dim).astype(np.float32))
    if not torch.isfinite(tensor).all():
        raise InputValueError("the latent contains NaN or Inf")
    return tensor


def npy(array: torch.Tensor) -> bytes:
    buffer = _io.BytesIO()
    np.save(buffer, array.detach().cpu().float().numpy(), allow_pickle=False)
    return buffer.getvalue()
