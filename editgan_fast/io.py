"""Images, label maps and latents on disk.

Images: anything Pillow reads; in memory a float tensor [3, H, W] in [-1, 1] (the generator's range).
Label maps: palette ("P" mode) PNGs whose pixel values are the class ids 0..255, with `PALETTE` attached so they
view in colour. Reading also accepts grayscale PNGs (value = class id) and RGB PNGs painted with the palette's
exact colours (so an edit painted in any image editor with those colours reads back).
The palette is PASCAL VOC's: class c gets the colour whose bits are c's bits interleaved, most significant first:
    0 black (0,0,0), 1 (128,0,0), 2 (0,128,0), 3 (128,128,0), 4 (0,0,128), 5 (128,0,128), 6 (0,128,128),
    7 (128,128,128), 8 (64,0,0), 9 (192,0,0), ...
Latents: `.npy` float32 [num_ws, style_dim] (EditGAN's latent files, [1, num_ws, style_dim], read too).
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


@contextlib.contextmanager
def atomic_write(path, mode: str = "wb"):
    """Open a temporary file beside `path` for writing; on success flush, fsync and rename it over `path` (then
    fsync the directory), so `path` is always either its previous contents or the complete new file, even if the
    process dies mid-write. On an exception the temporary file is removed and `path` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable; not every filesystem allows it
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def _voc_colour(c: int) -> tuple[int, int, int]:
    r = g = b = 0
    for shift in range(7, -1, -1):
        r |= ((c >> 0) & 1) << shift
        g |= ((c >> 1) & 1) << shift
        b |= ((c >> 2) & 1) << shift
        c >>= 3
    return r, g, b


PALETTE: tuple[tuple[int, int, int], ...] = tuple(_voc_colour(c) for c in range(256))


def _check_file(path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"file {path} does not exist")
    return path


def _open(path) -> Image.Image:
    path = _check_file(path)
    try:
        im = Image.open(path)
        im.load()
    except (OSError, SyntaxError) as e:
        raise ValueError(f"{path} is not an image Pillow can read: {e}") from None
    return im


def image_to_tensor(image) -> torch.Tensor:
    """A path, PIL image, uint8 array [H, W, 3] or [H, W], or float tensor [3, H, W] in [-1, 1] -> [3, H, W]."""
    if isinstance(image, (str, Path)):
        image = _open(image)
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise ValueError(f"image arrays must be uint8 [H, W, 3] (or [H, W] gray), got {image.dtype}")
        if image.ndim == 2:
            image = np.repeat(image[:, :, None], 3, axis=2)
        if image.ndim != 3 or image.shape[2] not in (3, 4):
            raise ValueError(f"image arrays must have shape [H, W, 3], got {image.shape}")
        return torch.from_numpy(np.array(image[:, :, :3])).permute(2, 0, 1).float() / 127.5 - 1
    if isinstance(image, torch.Tensor):
        if image.ndim == 4 and image.shape[0] == 1:
            image = image[0]
        if image.ndim != 3 or image.shape[0] != 3 or not image.is_floating_point():
            raise ValueError(f"image tensors must be float [3, H, W] in [-1, 1], got {image.dtype} "
                             f"{tuple(image.shape)}")
        return image.detach().float().cpu()
    raise ValueError(f"cannot read an image from a {type(image).__name__}")


def fit_to_resolution(image: torch.Tensor, resolution: int) -> tuple[torch.Tensor, str | None]:
    """Letterbox a [3, H, W] image to a square (padding with the border's mean colour, i.e. background),
    then resize to resolution x resolution. Returns the image and a note saying what was done (None if nothing)."""
    _, h, w = image.shape
    if h == w == resolution:
        return image, None
    note = []
    if h != w:
        side = max(h, w)
        top, left = (side - h) // 2, (side - w) // 2
        fill = torch.cat([image[:, 0], image[:, -1], image[:, :, 0], image[:, :, -1]], dim=1).mean(1)
        canvas = fill[:, None, None].expand(3, side, side).clone()
        canvas[:, top:top + h, left:left + w] = image
        image = canvas
        note.append(f"letterboxed {w}x{h} to {side}x{side}")
    if image.shape[1] != resolution:
        note.append(f"resized {image.shape[2]}x{image.shape[1]} to {resolution}x{resolution}")
        image = F.interpolate(image[None], size=(resolution, resolution), mode="bilinear", align_corners=False,
                              antialias=image.shape[1] > resolution)[0].clamp(-1, 1)
    return image, "; ".join(note)


def tensor_to_pil(image: torch.Tensor) -> Image.Image:
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"expected an image [3, H, W], got {tuple(image.shape)}")
    array = ((image.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return Image.fromarray(array.permute(1, 2, 0).numpy())


def save_image(path, image: torch.Tensor) -> Path:
    """Save a [3, H, W] image in [-1, 1] (format from the file name, e.g. .png)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensor_to_pil(image).save(path)
    return path


def image_grid(images, columns: int) -> torch.Tensor:
    """[N, 3, H, W] -> one [3, rows*H, columns*W] image, row-major (blank cells stay black)."""
    n, c, h, w = images.shape
    rows = -(-n // columns)
    grid = images.new_full((c, rows * h, columns * w), -1.0)
    for i in range(n):
        r, q = divmod(i, columns)
        grid[:, r * h:(r + 1) * h, q * w:(q + 1) * w] = images[i]
    return grid


def labels_to_pil(labels) -> Image.Image:
    labels = torch.as_tensor(labels)
    if labels.ndim != 2 or labels.is_floating_point():
        raise ValueError(f"a label map is an integer tensor [H, W], got {labels.dtype} {tuple(labels.shape)}")
    if labels.numel() and (labels.min() < 0 or labels.max() > 255):
        raise ValueError(f"label PNGs hold class ids 0..255, got ids {int(labels.min())}..{int(labels.max())}")
    im = Image.fromarray(labels.cpu().numpy().astype(np.uint8), mode="P")
    im.putpalette([v for rgb in PALETTE for v in rgb])
    return im


def save_labels(path, labels) -> Path:
    """Save an integer label map [H, W] as a palette PNG (pixel value = class id)."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"label maps are saved as PNG, got {path.name!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    labels_to_pil(labels).save(path)
    return path


def load_labels(path, num_classes: int | None = None, size: tuple[int, int] | None = None) -> torch.Tensor:
    """Read a label map as int64 [H, W]; check it has `size` (h, w) and only ids < `num_classes` when given."""
    return labels_from_image(_open(path), num_classes, size, str(path))


def labels_from_image(im: Image.Image, num_classes: int | None = None, size: tuple[int, int] | None = None,
                      what: str = "label map") -> torch.Tensor:
    """`load_labels` for an image already open (e.g. an upload held in memory); `what` names it in errors."""
    if im.mode == "P" or im.mode == "L":
        labels = np.array(im, dtype=np.int64)
    elif im.mode in ("RGB", "RGBA"):
        rgb = np.asarray(im.convert("RGB")).astype(np.int64)
        code = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
        lookup = {(r << 16) | (g << 8) | b: c for c, (r, g, b) in enumerate(PALETTE)}
        colours, inverse = np.unique(code, return_inverse=True)
        unknown = [c for c in colours if int(c) not in lookup]
        if unknown:
            c = int(unknown[0])
            raise ValueError(f"{what}: colour {(c >> 16, (c >> 8) & 255, c & 255)} is not in the label palette "
                             f"(see editgan_fast.io.PALETTE); paint label maps with the palette's exact colours")
        labels = np.array([lookup[int(c)] for c in colours], dtype=np.int64)[inverse].reshape(code.shape)
    else:
        raise ValueError(f"{what}: label maps must be palette, grayscale or RGB PNGs, got mode {im.mode}")
    labels = torch.from_numpy(labels)
    check_labels(labels, num_classes, size, what)
    return labels


def check_labels(labels: torch.Tensor, num_classes: int | None, size, what: str = "label map") -> None:
    if size is not None and tuple(labels.shape) != tuple(size):
        raise ValueError(f"{what} is {labels.shape[-1]}x{labels.shape[0]} (W x H), the segmenter's label maps are "
                         f"{size[1]}x{size[0]}")
    if num_classes is not None and labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
        bad = sorted({int(c) for c in labels.unique() if c < 0 or c >= num_classes})
        raise ValueError(f"{what} uses unknown class id(s) {bad}; the segmenter has classes 0..{num_classes - 1}")


def save_latent(path, wplus: torch.Tensor) -> Path:
    path = Path(path)
    if path.suffix != ".npy":
        raise ValueError(f"latents are saved as .npy, got {path.name!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, wplus.detach().cpu().float().numpy(), allow_pickle=False)
    return path


def load_latent(path, num_ws: int, style_dim: int) -> torch.Tensor:
    """Read a w+ latent (.npy, [num_ws, style_dim] or EditGAN's [1, num_ws, style_dim]) as float32."""
    path = _check_file(path)
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as e:
        raise ValueError(f"{path} is not a NumPy .npy latent: {e}") from None
    if array.dtype.kind != "f" or array.shape not in ((num_ws, style_dim), (1, num_ws, style_dim)):
        raise ValueError(f"{path} holds a {array.dtype} array of shape {array.shape}; this generator's latents "
                         f"are float [{num_ws}, {style_dim}]")
    return torch.from_numpy(array.reshape(num_ws, style_dim).astype(np.float32))
