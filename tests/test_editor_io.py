"""editgan_fast.io: label-map PNGs with the documented palette, images in and out, latents."""
import io as bytes_io

import numpy as np
import pytest
import torch
from PIL import Image

from editgan_fast import io
from editgan_fast.errors import FileFormatError


def random_labels(h, w, classes, seed):
    return torch.randint(0, classes, (h, w), generator=torch.Generator().manual_seed(seed))


def test_palette_is_pascal_voc():
    assert io.PALETTE[:9] == ((0, 0, 0), (128, 0, 0), (0, 128, 0), (128, 128, 0), (0, 0, 128), (128, 0, 128),
                              (0, 128, 128), (128, 128, 128), (64, 0, 0))
    assert len(set(io.PALETTE)) == 256


def test_label_png_round_trip_palette_and_rgb(tmp_path):
    labels = random_labels(12, 20, 40, 0)
    io.save_labels(tmp_path / "l.png", labels)
    im = Image.open(tmp_path / "l.png")
    assert im.mode == "P" and im.size == (20, 12)
    assert torch.equal(io.load_labels(tmp_path / "l.png", num_classes=40, size=(12, 20)), labels)
    # The same map painted as RGB with the palette's colours (what an image editor saves) reads back too.
    im.convert("RGB").save(tmp_path / "rgb.png")
    assert torch.equal(io.load_labels(tmp_path / "rgb.png"), labels)


def test_bad_label_maps_are_clear_errors(tmp_path):
    labels = random_labels(8, 8, 8, 1)
    labels[0, 0] = 9
    io.save_labels(tmp_path / "l.png", labels)
    with pytest.raises(ValueError, match=r"unknown class id\(s\) \[9\]"):
        io.load_labels(tmp_path / "l.png", num_classes=8)
    with pytest.raises(ValueError, match="8x8 .* 16x8"):
        io.load_labels(tmp_path / "l.png", size=(8, 16))
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[1, 2] = (1, 2, 3)
    Image.fromarray(rgb).save(tmp_path / "off.png")
    with pytest.raises(ValueError, match=r"colour \(1, 2, 3\) is not in the label palette"):
        io.load_labels(tmp_path / "off.png")
    with pytest.raises(FileFormatError, match="does not exist"):
        io.load_labels(tmp_path / "missing.png")
    (tmp_path / "text.png").write_text("hello")
    with pytest.raises(ValueError, match="not an image"):
        io.load_labels(tmp_path / "text.png")
    with pytest.raises(ValueError, match="0..255"):
        io.save_labels(tmp_path / "big.png", torch.full((2, 2), 300))


def test_image_round_trip_and_inputs(tmp_path):
    array = np.random.default_rng(0).integers(0, 256, (10, 14, 3), dtype=np.uint8)
    image = io.image_to_tensor(array)
    assert image.shape == (3, 10, 14) and image.min() >= -1 and image.max() <= 1
    io.save_image(tmp_path / "i.png", image)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "i.png")), array)
    assert torch.equal(io.image_to_tensor(tmp_path / "i.png"), image)
    assert torch.equal(io.image_to_tensor(Image.fromarray(array)), image)
    with pytest.raises(ValueError, match="uint8"):
        io.image_to_tensor(array.astype(np.float32))


@pytest.mark.parametrize("h,w", [(1, 1), (7, 5), (64, 64), (3, 200)])
def test_rgb_png_decodes_to_the_same_pixels(h, w):
    """Our PNG writer against Pillow's reader: random pixels (every byte value, so the Up filter wraps modulo
    256), smooth ones (long runs), odd sizes; and a tensor image through image_to_uint8 as tensor_to_pil."""
    rng = np.random.default_rng(h * 1000 + w)
    smooth = np.cumsum(rng.integers(0, 3, (h, w, 3)), axis=0).astype(np.uint8)
    for array in (rng.integers(0, 256, (h, w, 3), dtype=np.uint8), smooth, smooth[:, ::-1]):
        decoded = Image.open(bytes_io.BytesIO(io.rgb_png(array)))
        assert decoded.mode == "RGB" and decoded.size == (w, h)
        np.testing.assert_array_equal(np.asarray(decoded), array)
    image = torch.rand(3, h, w) * 2.2 - 1.1  # out of range values are clamped
    decoded = Image.open(bytes_io.BytesIO(io.rgb_png(io.image_to_uint8(image))))
    np.testing.assert_array_equal(np.asarray(decoded), np.asarray(io.tensor_to_pil(image)))
    with pytest.raises(ValueError, match=r"uint8 \[H, W, 3\]"):
        io.rgb_png(np.zeros((h, w, 4), np.uint8))


@pytest.mark.parametrize("h,w", [(1, 1), (7, 5), (64, 64), (3, 200)])
def test_labels_png_decodes_to_the_same_ids_and_palette(h, w):
    """Our palette PNG writer against Pillow's reader and our own label reader: every id 0..255 (the Up filter
    wraps modulo 256), odd sizes; the palette equals PALETTE, as Pillow's own writer attaches it."""
    rng = np.random.default_rng(h * 1000 + w)
    for labels in (torch.from_numpy(rng.integers(0, 256, (h, w))), random_labels(h, w, 6, seed=h + w)):
        decoded = Image.open(bytes_io.BytesIO(io.labels_png(labels)))
        assert decoded.mode == "P" and decoded.size == (w, h)
        np.testing.assert_array_equal(np.asarray(decoded), labels.numpy())
        assert decoded.getpalette() == io.labels_to_pil(labels).getpalette()
        assert torch.equal(io.labels_from_image(decoded), labels)
    with pytest.raises(ValueError, match="0..255"):
        io.labels_png(torch.full((h, w), -1))


def test_batch_encoders_equal_the_per_image_ones():
    """image_pngs / labels_pngs (one 8-bit conversion for a batch, as the renderer encodes its frames) give each
    row's own image_png / labels_png bytes; wrong ranks and out-of-range ids are refused by name."""
    images = torch.rand(5, 3, 9, 7) * 2.2 - 1.1
    labels = torch.from_numpy(np.random.default_rng(3).integers(0, 256, (5, 6, 4)))
    assert io.image_pngs(images) == [io.image_png(image) for image in images]
    assert io.labels_pngs(labels) == [io.labels_png(map_) for map_ in labels]
    np.testing.assert_array_equal(io.images_to_uint8(images)[2], io.image_to_uint8(images[2]))
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        io.image_pngs(images[0])
    with pytest.raises(ValueError, match=r"\[B, H, W\]"):
        io.labels_pngs(labels[0])
    with pytest.raises(ValueError, match=r"tensor \[H, W\], got .*\(5, 6, 4\)"):
        io.labels_png(labels)
    with pytest.raises(ValueError, match=r"tensor \[H, W\], got list"):
        io.labels_png(labels[0].tolist())
    with pytest.raises(ValueError, match="0..255"):
        io.labels_pngs(labels - 1)


def test_fit_to_resolution_letterboxes_and_says_so():
    image = torch.rand(3, 20, 40) * 2 - 1
    out, note = io.fit_to_resolution(image, 16)
    assert out.shape == (3, 16, 16) and "resized 40x20 to 16x8; letterboxed 16x8 to 16x16" == note and "resized" in note
    same, none = io.fit_to_resolution(torch.rand(3, 16, 16), 16)
    assert none is None


def test_latent_files(tmp_path):
    w = torch.randn(6, 16)
    io.save_latent(tmp_path / "w.npy", w)
    assert torch.equal(io.load_latent(tmp_path / "w.npy", 6, 16), w)
    np.save(tmp_path / "editgan.npy", w.numpy()[None])
    assert torch.equal(io.load_latent(tmp_path / "editgan.npy", 6, 16), w)
    with pytest.raises(ValueError, match=r"\[8, 16\]"):
        io.load_latent(tmp_path / "w.npy", 8, 16)


def test_atomic_write_replaces_whole_or_not_at_all(tmp_path):
    from editgan_fast.io import atomic_write
    target = tmp_path / "sub" / "f.bin"
    with atomic_write(target) as f:
        f.write(b"first")
    assert target.read_bytes() == b"first"
    with pytest.raises(RuntimeError):
        with atomic_write(target) as f:
            f.write(b"partial")
            raise RuntimeError("dies mid-write")
    assert target.read_bytes() == b"first"
    assert sorted(p.name for p in target.parent.iterdir()) == ["f.bin"]  # no temporary left behind
