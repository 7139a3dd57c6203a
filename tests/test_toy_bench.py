"""The edit-quality benchmark's programmatic mask edits and metrics, on renderer ground truth."""
import pytest
import torch

from editgan_fast import toyfaces
from factories import load_bench_script


@pytest.fixture(scope="module")
def bench():
    return load_bench_script("edit_quality")


@pytest.fixture(scope="module")
def faces():
    z = toyfaces.sample_z(24, 24, seed=11)
    image, labels = toyfaces.render(z)
    return z, image, labels


def test_mask_edits_change_only_their_part_in_the_intended_direction(bench, faces):
    _, _, labels = faces
    for edit in bench.EDITS:
        edited = edit.paint(labels)
        before, after = bench.area(labels, edit.target), bench.area(edited, edit.target)
        changed = edited != labels
        # Every changed pixel is painted to / from the target class.
        assert ((labels[changed] == edit.target) | (edited[changed] == edit.target)).all(), edit.name
        if edit.direction > 0:
            assert (after >= before).all() and (after > before).float().mean() > 0.9, edit.name
        else:
            assert (after <= before).all() and (after < before).float().mean() > 0.5, edit.name


def test_colour_labels_read_the_renderers_ground_truth(bench, faces):
    z, image, labels = faces
    colours = toyfaces.class_colours(toyfaces.face_params(z)).float()
    noisy = image + 0.02 * torch.randn(image.shape, generator=torch.Generator().manual_seed(0))
    assert (bench.colour_labels(noisy, colours) == labels).float().mean() > 0.999


def test_success_and_psnr(bench):
    before = torch.tensor([100.0, 100.0, 100.0])
    after = torch.tensor([111.0, 105.0, 80.0])
    assert bench.changed(before, after, +1).tolist() == [True, False, False]
    assert bench.changed(before, after, -1).tolist() == [False, False, True]
    a = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1
    b = a.clone()
    region = torch.zeros(2, 8, 8, dtype=torch.bool)
    region[:, :4] = True
    b[:, :, :4] += 0.5  # changes inside the region do not count
    assert (bench.psnr_outside(a, b, region) >= 99).all()
    b[:, :, 4:] += 0.2  # outside: error 0.1 on [0, 1] images -> 20 dB
    torch.testing.assert_close(bench.psnr_outside(a, b, region), torch.full((2,), 20.0), rtol=1e-4, atol=1e-3)
