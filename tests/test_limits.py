"""Resource limits: checked before allocating, each with a default, an environment override and a Python one."""
import io as pyio
import resource
import struct
import zipfile
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from editgan_fast import io, limits
from editgan_fast.editor import EditVector, VectorLibrary, random_editor
from editgan_fast.errors import FileFormatError, InputValueError, LimitExceeded


def _rss_peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _png_header_only(path, width, height):
    """A PNG whose IHDR claims width x height (8-bit gray) followed by a tiny, truncated IDAT."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)))
    return path


def _npy_header(shape, dtype="<f4") -> bytes:
    buffer = pyio.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": dtype, "fortran_order": False, "shape": shape})
    return buffer.getvalue()


def test_defaults_env_and_python_overrides(monkeypatch):
    assert limits.get("image_pixels") == limits.DEFAULTS["image_pixels"]
    monkeypatch.setenv("EDITGAN_FAST_MAX_IMAGE_PIXELS", "1234")
    assert limits.get("image_pixels") == 1234
    with limits.override(image_pixels=99):
        assert limits.get("image_pixels") == 99          # the Python setting wins over the environment
    assert limits.get("image_pixels") == 1234
    monkeypatch.setenv("EDITGAN_FAST_MAX_IMAGE_PIXELS", "lots")
    with pytest.raises(InputValueError, match="EDITGAN_FAST_MAX_IMAGE_PIXELS"):
        limits.get("image_pixels")
    with pytest.raises(InputValueError, match="unknown limit"):
        limits.set(pixels=3)
    with pytest.raises(InputValueError, match="positive integer"):
        limits.set(array_bytes=-1)
    with pytest.raises(LimitExceeded, match=r"array_bytes = 10 .*EDITGAN_FAST_MAX_ARRAY_BYTES"):
        with limits.override(array_bytes=10):
            limits.check("array_bytes", 11, "a test array")


def test_image_pixels_are_checked_before_decoding(tmp_path):
    claim = _png_header_only(tmp_path / "claims.png", 30_000, 30_000)   # 900 M pixels in ~100 bytes
    peak = _rss_peak_mib()
    with pytest.raises(LimitExceeded, match="image_pixels"):
        io.image_to_tensor(claim)
    bomb = _png_header_only(tmp_path / "bomb.png", 200_000, 200_000)    # beyond Pillow's own bomb guard
    with pytest.raises(LimitExceeded):
        io.image_to_tensor(bomb)
    assert _rss_peak_mib() - peak < 100
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(tmp_path / "small.png")
    with limits.override(image_pixels=599):
        with pytest.raises(LimitExceeded, match="20 image"):
            io.image_to_tensor(tmp_path / "small.png")
    with limits.override(image_pixels=600):
        assert io.image_to_tensor(tmp_path / "small.png").shape == (3, 20, 30)


def test_elongated_images_are_resized_before_padding():
    strip = torch.rand(3, 2, 40_000) * 2 - 1       # a 40000x2 strip: its long side squared would be 19 GB
    peak = _rss_peak_mib()
    out, note = io.fit_to_resolution(strip, 64)
    assert out.shape == (3, 64, 64) and note == "resized 40000x2 to 64x1; letterboxed 64x1 to 64x64"
    assert _rss_peak_mib() - peak < 100
    # The strip lands in the middle row; the rest is its border colour.
    expected = torch.nn.functional.interpolate(strip[None], size=(1, 64), mode="bilinear", antialias=True)[0]
    assert torch.allclose(out[:, 31:32], expected.clamp(-1, 1), atol=1e-6)


def test_16bit_and_float_images_are_scaled_not_clipped(tmp_path):
    rng = np.random.default_rng(0)
    values = rng.integers(0, 65536, (12, 10), dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    got = io.image_to_tensor(tmp_path / "deep.png")
    assert torch.allclose(got[0], torch.from_numpy(values / 65535 * 2 - 1).float(), atol=1e-6)
    assert torch.equal(got[0], got[2])
    floats = rng.random((12, 10), dtype=np.float32)
    Image.fromarray(floats, mode="F").save(tmp_path / "float.tiff")
    got = io.image_to_tensor(tmp_path / "float.tiff")
    assert torch.allclose(got[1], torch.from_numpy(floats * 2 - 1), atol=1e-6)


def test_npy_headers_are_checked_before_reading(tmp_path):
    (tmp_path / "huge.npy").write_bytes(_npy_header((100_000, 100_000)) + b"\0" * 16)
    peak = _rss_peak_mib()
    with pytest.raises(LimitExceeded, match="array_bytes"):
        io.load_npy(tmp_path / "huge.npy")
    assert _rss_peak_mib() - peak < 100
    (tmp_path / "short.npy").write_bytes(_npy_header((100, 100)) + b"\0" * 16)
    with pytest.raises(FileFormatError, match="truncated"):
        io.load_npy(tmp_path / "short.npy")
    with pytest.raises(FileFormatError, match="truncated"):
        io.load_latent(tmp_path / "short.npy", 100, 100)


def test_npz_members_are_checked_before_inflating(tmp_path):
    # A real zip bomb: 64 MiB of zeros deflated to ~64 KB, refused from its header before inflating.
    with zipfile.ZipFile(tmp_path / "bomb.npz", "w", zipfile.ZIP_DEFLATED) as archive:
        with archive.open("w.npy", "w", force_zip64=True) as f:
            f.write(_npy_header((16 * 2 ** 20,)))
            block = b"\0" * 2 ** 20
            for _ in range(64):
                f.write(block)
    assert (tmp_path / "bomb.npz").stat().st_size < 2 ** 20
    peak = _rss_peak_mib()
    with limits.override(array_bytes=2 ** 20):
        with pytest.raises(LimitExceeded, match="array_bytes"):
            io.load_npz(tmp_path / "bomb.npz")
        with pytest.raises(LimitExceeded, match="array_bytes"):
            io.load_latent(tmp_path / "bomb.npz", 4, 4)
    assert _rss_peak_mib() - peak < 48


def test_vectors_per_library(tmp_path):
    vectors = [EditVector(torch.randn(3, 4), (1,), f"v{i}") for i in range(3)]
    for suffix in (".safetensors", ".npz"):
        VectorLibrary(vectors).save(tmp_path / f"lib{suffix}")
        with limits.override(vectors_per_library=2):
            with pytest.raises(LimitExceeded, match="vectors_per_library"):
                VectorLibrary.load(tmp_path / f"lib{suffix}")
    with limits.override(vectors_per_library=2):
        with pytest.raises(LimitExceeded, match="vectors_per_library"):
            VectorLibrary(vectors)


@pytest.fixture(scope="module")
def editor():
    return random_editor(0, progress=False)


def test_scales_are_synthesized_in_chunks_or_refused(editor):
    g = editor.generator
    latent = editor.sample(3)
    vector = EditVector(0.3 * torch.randn(g.num_ws, g.style_dim, generator=torch.Generator().manual_seed(1)), (1,),
                        "v", editor.fingerprint)
    scales = [-1.0, 0.0, 0.5, 1.0, 2.0]
    whole = editor.apply(latent, {vector: scales})
    with limits.override(synthesis_batch=2):
        chunked = editor.apply(latent, {vector: scales})
    assert torch.allclose(chunked.image, whole.image, atol=1e-5) and chunked.image.shape[0] == 5
    assert (chunked.labels != whole.labels).float().mean() < 1e-3
    single = editor.apply(latent, {vector: 2.0})
    assert torch.allclose(chunked.image[4], single.image, atol=1e-5)
    with limits.override(scales_per_call=4):
        with pytest.raises(LimitExceeded, match="scales_per_call"):
            editor.apply(latent, {vector: scales})
        with pytest.raises(LimitExceeded, match="scales_per_call"):
            editor.apply_many([(latent, {vector: scales[:3]}), (latent, {vector: scales[:3]})])
