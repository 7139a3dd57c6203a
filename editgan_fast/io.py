"""Images, label maps and latents on disk.

Images: anything Pillow reads; in memory a float tensor [3, H, W] in [-1, 1] (the generator's range).
Label maps: palette ("P" mode) PNGs whose pixel values are the class ids 0..255, with `PALETTE` attached so they
view in colour. Reading also accepts grayscale PNGs (value = class id) and RGB PNGs painted with the palette's
exact colours (so an edit painted in any image editor with those colours reads back).
The palette is PASCAL VOC's: class c gets the colour whose bits are c's bits interleaved, most significant first:
    0 black (0,0,0), 1 (128,0,0), 2 (0,128,0), 3 (128,128,0), 4 (0,0,128), 5 (128,0,128), 6 (0,128,128),
    7 (128,128,128), 8 (64,0,0), 9 (192,0,0), ...
Latents: `.npy` float32 [num_ws, style_dim] (EditGAN's latent files, [1, num_ws, style_dim], and stylegan2-ada's
projector output `projected_w.npz`, key `w`, read too).
Every file is written through `atomic_write`; every array and image is checked against `limits` before it is
allocated.
"""
from __future__ import annotations

import contextlib
import math
import os
import struct
import tempfile
import warnings
import zipfile
import zlib
from io import BytesIO
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from . import limits
from .errors import FileFormatError, InputValueError, LimitExceeded


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
_PLTE = bytes(v for rgb in PALETTE for v in rgb)  # the palette as PNG's PLTE chunk and Pillow's putpalette take it


def _check_file(path) -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise InputValueError(f"a file path must be a str or os.PathLike, got {type(path).__name__}")
    path = Path(path)
    if not path.is_file():
        raise FileFormatError(f"file {path} does not exist")
    return path


def _open(path) -> Image.Image:
    """A decoded image, its pixel count checked against limits.image_pixels before the pixels are decoded."""
    path = _check_file(path)
    try:
        with warnings.catch_warnings():  # our own pixel budget replaces Pillow's decompression-bomb warning
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(path)
            limits.check("image_pixels", im.width * im.height, f"{path} is a {im.width}x{im.height} image")
            im.load()
    except Image.DecompressionBombError as e:
        raise LimitExceeded(f"{path}: {e} (Pillow's decompression-bomb guard)") from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error) as e:
        if isinstance(e, LimitExceeded):
            raise
        raise FileFormatError(f"{path} is not an image Pillow can read: {type(e).__name__}: {e}") from None
    return im


def _pil_to_unit_rgb(im: Image.Image) -> np.ndarray:
    """float32 [H, W, 3] in [0, 1]. 16-bit and 32-bit integer images are scaled by their type's range and float
    images taken as [0, 1] (or rescaled from their own range when outside it), never clipped to 8 bits."""
    if im.mode.startswith("I;16") or im.mode == "I":
        array = np.asarray(im).astype(np.float64)
        array = np.clip(array, 0, None) / max(65535.0, float(array.max(initial=0)))
    elif im.mode == "F":
        array = np.asarray(im).astype(np.float64)
        if not np.isfinite(array).all():
            raise InputValueError("the float image holds NaN or Inf pixels")
        low, high = float(array.min(initial=0)), float(array.max(initial=0))
        if low < 0 or high > 1:
            array = (array - low) / max(high - low, 1e-12)
    else:
        return np.asarray(im.convert("RGB"), dtype=np.float32) / 255
    return np.repeat(array.astype(np.float32)[:, :, None], 3, axis=2)


def image_to_tensor(image) -> torch.Tensor:
    """A path, PIL image, uint8 array [H, W, 3] or [H, W], or float tensor [3, H, W] in [-1, 1] -> [3, H, W]."""
    if isinstance(image, (str, Path)):
        image = _open(image)
    if isinstance(image, Image.Image):
        limits.check("image_pixels", image.width * image.height, f"a {image.width}x{image.height} image")
        return torch.from_numpy(_pil_to_unit_rgb(image)).permute(2, 0, 1) * 2 - 1
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise InputValueError(f"image arrays must be uint8 [H, W, 3] (or [H, W] gray), got {image.dtype}")
        if image.ndim == 2:
            image = np.repeat(image[:, :, None], 3, axis=2)
        if image.ndim != 3 or image.shape[2] not in (3, 4):
            raise InputValueError(f"image arrays must have shape [H, W, 3], got {image.shape}")
        return torch.from_numpy(np.array(image[:, :, :3])).permute(2, 0, 1).float() / 127.5 - 1
    if isinstance(image, torch.Tensor):
        if image.ndim == 4 and image.shape[0] == 1:
            image = image[0]
        if image.ndim != 3 or image.shape[0] != 3 or not image.is_floating_point():
            raise InputValueError(f"image tensors must be float [3, H, W] in [-1, 1], got {image.dtype} "
                                  f"{tuple(image.shape)}")
        if not torch.isfinite(image).all():
            raise InputValueError("the image tensor holds NaN or Inf")
        return image.detach().float().cpu()
    raise InputValueError(f"cannot read an image from a {type(image).__name__}")


def fit_to_resolution(image: torch.Tensor, resolution: int) -> tuple[torch.Tensor, str | None]:
    """Resize a [3, H, W] image so its long side is `resolution`, then letterbox it to resolution x resolution
    (padding with its border's mean colour, i.e. background). Every intermediate is at most the input or the
    target size, so an elongated input never becomes a square of its long side. Returns the image and a note
    saying what was done (None if nothing)."""
    if not isinstance(image, torch.Tensor) or image.ndim != 3:
        raise InputValueError(f"fit_to_resolution takes an image tensor [3, H, W], got {type(image).__name__}")
    _, h, w = image.shape
    if h == w == resolution:
        return image, None
    scale = resolution / max(h, w)
    nh, nw = max(1, min(resolution, round(h * scale))), max(1, min(resolution, round(w * scale)))
    note = []
    if (nh, nw) != (h, w):
        note.append(f"resized {w}x{h} to {nw}x{nh}")
        image = F.interpolate(image[None], size=(nh, nw), mode="bilinear", align_corners=False,
                              antialias=scale < 1)[0].clamp(-1, 1)
    if nh != nw:
        top, left = (resolution - nh) // 2, (resolution - nw) // 2
        fill = torch.cat([image[:, 0], image[:, -1], image[:, :, 0], image[:, :, -1]], dim=1).mean(1)
        canvas = fill[:, None, None].expand(3, resolution, resolution).clone()
        canvas[:, top:top + nh, left:left + nw] = image
        image = canvas
        note.append(f"letterboxed {nw}x{nh} to {resolution}x{resolution}")
    return image, "; ".join(note)


def image_to_uint8(image: torch.Tensor) -> np.ndarray:
    """[3, H, W] in [-1, 1] -> uint8 [H, W, 3]."""
    if not isinstance(image, torch.Tensor) or image.ndim != 3 or image.shape[0] != 3:
        raise InputValueError(f"expected an image tensor [3, H, W], got "
                              f"{tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__}")
    return images_to_uint8(image[None])[0]


def images_to_uint8(images: torch.Tensor) -> np.ndarray:
    """[B, 3, H, W] in [-1, 1] -> uint8 [B, H, W, 3], each image contiguous: one conversion for a batch (a
    dozen tensor ops, ~75 us whatever the batch size at 64 px)."""
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
        raise InputValueError(f"expected image tensors [B, 3, H, W], got "
                              f"{tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__}")
    array = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return array.permute(0, 2, 3, 1).contiguous().numpy()


def tensor_to_pil(image: torch.Tensor) -> Image.Image:
    return Image.fromarray(image_to_uint8(image))


def pil_png(im: Image.Image) -> bytes:
    """PNG bytes through Pillow at zlib level 1 (half the time of its default 6, lossless): composites; frames
    and label maps go through `rgb_png` / `labels_png`, faster."""
    buffer = BytesIO()
    im.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def image_png(image: torch.Tensor) -> bytes:
    """[3, H, W] in [-1, 1] -> PNG bytes (`rgb_png`)."""
    return rgb_png(image_to_uint8(image))


def image_pngs(images: torch.Tensor) -> list[bytes]:
    """[B, 3, H, W] in [-1, 1] -> PNG bytes per image, converted to 8 bits once for the batch (`rgb_png`)."""
    return [rgb_png(array) for array in images_to_uint8(images)]


def labels_png(labels) -> bytes:
    """[h, w] class ids -> palette PNG bytes (pixel value = class id, `PALETTE` attached), written as `rgb_png`
    writes frames: 0.04 ms for a 64 px map against Pillow's 0.19 ms at level 1, a few bytes larger."""
    return _palette_png(_label_array(labels))


def labels_pngs(labels) -> list[bytes]:
    """[B, h, w] class ids -> palette PNG bytes per map (`labels_png`), checked and converted once."""
    return [_palette_png(array) for array in _label_array(labels, ndim=3)]


def _palette_png(array: np.ndarray) -> bytes:
    return _png(array, array.shape[1], 3, _PLTE)  # colour type 3: palette


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png(rows: np.ndarray, width: int, color_type: int, palette: bytes = b"") -> bytes:
    """PNG bytes of 8-bit samples, `rows` uint8 [H, width * samples per pixel]: every row gets the "Up" filter
    (its difference to the row above, one numpy op; Pillow tries filters per row) and zlib level 1 with the
    run-length strategy. Lossless."""
    h = rows.shape[0]
    filtered = np.empty((h, 1 + rows.shape[1]), np.uint8)
    filtered[:, 0] = 2  # filter type "Up"; the first row's "above" is zeros
    filtered[0, 1:] = rows[0]
    np.subtract(rows[1:], rows[:-1], out=filtered[1:, 1:])  # modulo 256, as PNG defines it
    deflate = zlib.compressobj(1, zlib.DEFLATED, 15, 9, zlib.Z_RLE)
    data = deflate.compress(filtered.tobytes()) + deflate.flush()
    header = struct.pack(">IIBBBBB", width, h, 8, color_type, 0, 0, 0)  # deflate, adaptive filters, no interlace
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + (_png_chunk(b"PLTE", palette) if palette else b"") \
        + _png_chunk(b"IDAT", data) + _png_chunk(b"IEND", b"")


def rgb_png(array: np.ndarray) -> bytes:
    """PNG bytes of a uint8 [H, W, 3] array, written here rather than by Pillow, for the frames the service
    streams and the batch shards (`_png`). Measured on 64 px frames: 0.16-0.24 ms and ~5.9 KB vs Pillow's
    0.33-0.40 ms and ~5.8 KB at level 1."""
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        raise InputValueError(f"rgb_png takes a uint8 [H, W, 3] array, got {array.dtype} {array.shape}")
    h, w, _ = array.shape
    return _png(np.ascontiguousarray(array).reshape(h, w * 3), w, 2)  # colour type 2: RGB


def _pil_format(path: Path) -> str:
    fmt = Image.registered_extensions().get(path.suffix.lower())
    if fmt is None:
        raise InputValueError(f"cannot tell an image format from the file name {path.name!r} (use .png)")
    return fmt


def save_image(path, image: torch.Tensor) -> Path:
    """Save a [3, H, W] image in [-1, 1] (format from the file name, e.g. .png), atomically."""
    path = Path(path)
    fmt = _pil_format(path)
    pil = tensor_to_pil(image)
    with atomic_write(path) as f:
        pil.save(f, format=fmt)
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


def _label_array(labels, ndim: int = 2) -> np.ndarray:
    """A label map [H, W] (or `ndim` 3: maps [B, H, W]) of class ids 0..255 as uint8, checked."""
    shape = "[H, W]" if ndim == 2 else "[B, H, W]"
    if not isinstance(labels, (torch.Tensor, np.ndarray)):
        raise InputValueError(f"a label map is an integer tensor {shape}, got {type(labels).__name__}")
    labels = torch.as_tensor(labels)
    if labels.ndim != ndim or labels.is_floating_point():
        raise InputValueError(f"a label map is an integer tensor {shape}, got {labels.dtype} {tuple(labels.shape)}")
    if labels.numel() and (labels.min() < 0 or labels.max() > 255):
        raise InputValueError(f"label PNGs hold class ids 0..255, got ids {int(labels.min())}..{int(labels.max())}")
    return np.ascontiguousarray(labels.cpu().numpy().astype(np.uint8))


def labels_to_pil(labels) -> Image.Image:
    im = Image.fromarray(_label_array(labels), mode="P")
    im.putpalette(_PLTE)
    return im


def save_labels(path, labels) -> Path:
    """Save an integer label map [H, W] as a palette PNG (pixel value = class id), atomically."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise InputValueError(f"label maps are saved as PNG, got {path.name!r}")
    pil = labels_to_pil(labels)
    with atomic_write(path) as f:
        pil.save(f, format="PNG")
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
            raise FileFormatError(f"{what}: colour {(c >> 16, (c >> 8) & 255, c & 255)} is not in the label palette "
                             f"(see editgan_fast.io.PALETTE); paint label maps with the palette's exact colours")
        labels = np.array([lookup[int(c)] for c in colours], dtype=np.int64)[inverse].reshape(code.shape)
    else:
        raise FileFormatError(f"{what}: label maps must be palette, grayscale or RGB PNGs, got mode {im.mode}")
    labels = torch.from_numpy(labels)
    check_labels(labels, num_classes, size, what)
    return labels


def check_labels(labels: torch.Tensor, num_classes: int | None, size, what: str = "label map") -> None:
    if size is not None and tuple(labels.shape) != tuple(size):
        raise InputValueError(f"{what} is {labels.shape[-1]}x{labels.shape[0]} (W x H), the segmenter's label maps are "
                         f"{size[1]}x{size[0]}")
    if num_classes is not None and labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
        bad = sorted({int(c) for c in labels.unique() if c < 0 or c >= num_classes})
        raise InputValueError(f"{what} uses unknown class id(s) {bad}; the segmenter has classes 0..{num_classes - 1}")


# ------------------------------------------------------------------------------------------------ arrays
NPY_MAGIC = b"\x93NUMPY"
ZIP_MAGIC = b"PK\x03\x04"


def read_npy(f, size: int, what: str, already: int = 0) -> np.ndarray:
    """One array from a binary stream holding a `.npy` of `size` bytes. The header is read first: object dtypes
    (pickles) are refused, and the claimed shape is checked against the bytes really there and against
    limits.array_bytes (with `already` bytes read from the same file) before the data is read, so a header cannot
    make us allocate what the file does not hold."""
    try:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise ValueError(f".npy format version {version} is not supported")
    except Exception as e:  # numpy's header parser raises many types (tokenize errors among them) on bad text
        raise FileFormatError(f"{what} is not a NumPy .npy array: {type(e).__name__}: {e}") from None
    if dtype.hasobject:
        raise FileFormatError(f"{what} holds Python objects ({dtype}); only numeric arrays are read (never pickles)")
    nbytes = math.prod(shape) * dtype.itemsize
    limits.check("array_bytes", already + nbytes, f"{what} claims a {dtype} array of shape {shape}"
                 + (f" after {already:,} bytes of other arrays" if already else ""))
    data = f.tell() if hasattr(f, "tell") else 0
    if size - data < nbytes:
        raise FileFormatError(f"{what} is truncated: its header claims a {dtype} array of shape {shape} "
                              f"({nbytes:,} bytes), the file holds {max(size - data, 0):,}")
    buffer = bytearray(nbytes)
    if f.readinto(buffer) != nbytes:
        raise FileFormatError(f"{what} is truncated: fewer bytes than its header claims")
    return np.frombuffer(buffer, dtype).reshape(shape, order="F" if fortran else "C")


def load_npy(path, what: str | None = None) -> np.ndarray:
    """An array from a `.npy` file, its header checked before reading (see read_npy)."""
    path = _check_file(path)
    with open(path, "rb") as f:
        return read_npy(f, os.fstat(f.fileno()).st_size, what or str(path))


def load_npz(path, what: str | None = None) -> dict[str, np.ndarray]:
    """{name: array} of an `.npz` file, each member's header checked before it is inflated (see read_npy); the
    arrays together must fit limits.array_bytes, and their number limits.vectors_per_library (+ 1 for a
    library's metadata)."""
    path = _check_file(path)
    what = what or str(path)
    try:
        with zipfile.ZipFile(path) as archive:
            members = [m for m in archive.infolist() if not m.is_dir()]
            limits.check("vectors_per_library", len(members) - 1, f"{what} holds {len(members)} arrays")
            arrays, total = {}, 0
            for m in members:
                name = m.filename.removesuffix(".npy")
                with archive.open(m) as f:
                    arrays[name] = read_npy(f, m.file_size, f"{what} (array {name!r})", total)
                total += arrays[name].nbytes
            return arrays
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, NotImplementedError, zlib.error,
            RuntimeError) as e:
        raise FileFormatError(f"{what} is not a readable .npz (zip) file: {type(e).__name__}: {e}") from None


def file_magic(path, n: int = 8) -> bytes:
    with open(_check_file(path), "rb") as f:
        return f.read(n)


def save_latent(path, wplus: torch.Tensor) -> Path:
    """Save w+ [num_ws, style_dim] as float32 `.npy`, atomically."""
    path = Path(path)
    if path.suffix != ".npy":
        raise InputValueError(f"latents are saved as .npy, got {path.name!r}")
    if not isinstance(wplus, torch.Tensor) or not wplus.is_floating_point():
        raise InputValueError(f"save_latent takes a float w+ tensor, got {type(wplus).__name__}")
    array = wplus.detach().cpu().float().numpy()
    with atomic_write(path) as f:
        np.save(f, array, allow_pickle=False)
    return path


def _latent_array(path: Path) -> np.ndarray:
    """The array of a latent file: our/EditGAN's `.npy`, or stylegan2-ada's projector output `projected_w.npz`
    (key `w`, [1, num_ws, w_dim])."""
    head = file_magic(path)
    if head.startswith(NPY_MAGIC):
        return load_npy(path)
    if head.startswith(ZIP_MAGIC):
        arrays = load_npz(path)
        if "w" in arrays:
            return arrays["w"]
        if "meta" in arrays:
            raise FileFormatError(f"{path} is an editing-vector file, not a latent (pass it as --vector)")
        raise FileFormatError(f"{path} is an .npz without a latent: it holds {sorted(arrays)[:6]}, a latent "
                              f"archive holds 'w' (stylegan2-ada's projected_w.npz)")
    if len(head) < 8:
        raise FileFormatError(f"{path} is {'empty' if not head else 'too short'}: not a .npy latent")
    raise FileFormatError(f"{path} is not a latent (.npy, or stylegan2-ada's projected_w.npz)")


def load_latent(path, num_ws: int, style_dim: int) -> torch.Tensor:
    """Read a w+ latent as float32 [num_ws, style_dim]: `.npy` [num_ws, style_dim] or EditGAN's
    [1, num_ws, style_dim], or stylegan2-ada's `projected_w.npz` (key `w`). NaN/Inf are refused."""
    path = _check_file(path)
    array = _latent_array(path)
    if array.dtype.kind != "f" or array.shape not in ((num_ws, style_dim), (1, num_ws, style_dim)):
        raise FileFormatError(f"{path} holds a {array.dtype} array of shape {array.shape}; this generator's "
                              f"latents are float [{num_ws}, {style_dim}]")
    if not np.isfinite(array).all():
        raise FileFormatError(f"{path}: the latent holds NaN or Inf")
    return torch.from_numpy(array.reshape(num_ws, style_dim).astype(np.float32))
