"""The procedural toy-face renderer: exact labels, determinism, the generator's view of z."""
import pytest
import torch

from editgan_fast import toyfaces


def test_labels_agree_with_image_colours():
    z = toyfaces.sample_z(32, 24, seed=1)
    image, labels = toyfaces.render(z)
    assert image.shape == (32, 3, 64, 64) and labels.shape == (32, 64, 64)
    assert image.min() >= -1 and image.max() <= 1
    colours = toyfaces.class_colours(toyfaces.face_params(z)).float()  # [N, C, 3]
    # Nearest class colour of every pixel recovers the label map exactly.
    dist = (image.permute(0, 2, 3, 1)[:, :, :, None, :] - colours[:, None, None]).square().sum(-1)
    assert torch.equal(dist.argmin(-1), labels)
    assert dist.min(-1).values.max() < 1e-10


def test_every_part_is_visible_and_parts_nest():
    z = toyfaces.sample_z(200, 24, seed=2)
    _, labels = toyfaces.render(z)
    counts = torch.stack([(labels == c).flatten(1).sum(1) for c in range(len(toyfaces.CLASSES))], dim=1)
    assert (counts > 0).all(), "some sample lacks a part"
    # Pupils sit inside the eye whites: every pupil pixel's 4-neighbourhood is eye or pupil (no skin contact).
    pupil = labels == toyfaces.PUPIL
    eye = (labels == toyfaces.EYE_WHITE) | pupil
    shifted = torch.nn.functional.pad(eye.float()[:, None], (1, 1, 1, 1))[:, 0]
    neighbours_eye = shifted[:, :-2, 1:-1] * shifted[:, 2:, 1:-1] * shifted[:, 1:-1, :-2] * shifted[:, 1:-1, 2:]
    assert (neighbours_eye[pupil] == 1).float().mean() > 0.8


def test_deterministic_and_invariant_to_latent_scale():
    z = toyfaces.sample_z(8, 32, seed=3)
    a, la = toyfaces.render(z)
    b, lb = toyfaces.render(z.clone() * 3.7)  # the mapping network's pixel norm removes the scale
    assert torch.equal(la, lb) and torch.allclose(a, b)
    assert torch.equal(toyfaces.sample_z(8, 32, seed=3), z)
    _, lc = toyfaces.render(toyfaces.sample_z(8, 32, seed=4))
    assert not torch.equal(la, lc)


def test_parameters_move_their_part():
    z = toyfaces.sample_z(16, 24, seed=5)
    p = toyfaces.face_params(z)
    area = lambda params, cls: (toyfaces.render_labels(params) == cls).flatten(1).sum(1)
    for name, cls in (("mouth_w", toyfaces.MOUTH), ("pupil", toyfaces.PUPIL), ("hair_len", toyfaces.HAIR)):
        small = dict(p, **{name: torch.full_like(p[name], 0.1)})
        large = dict(p, **{name: torch.full_like(p[name], 0.9)})
        assert (area(large, cls) > area(small, cls)).all(), name


def test_bad_latents_are_rejected():
    with pytest.raises(ValueError, match="at least"):
        toyfaces.render(torch.randn(2, 5))
    with pytest.raises(ValueError, match=r"\[N, D\]"):
        toyfaces.render(torch.randn(24))
    with pytest.raises(ValueError, match="at least"):
        toyfaces.sample_z(2, 3, seed=0)
