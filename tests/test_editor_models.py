"""Editor with every optional model loaded from files in the real formats (random weights, small shapes):
LPIPS and the encoder enter the losses as EditGAN's recipe says, and embedding starts from the encoder."""
import warnings

import pytest
import torch

from editgan_fast.editor import Editor
from editgan_fast.models.encoder import load_encoder
from editgan_fast.models.generator import Generator
from editgan_fast.models.lpips import LPIPS
from editgan_fast.models.segmenter import load_segmenter
from seg_factories import write_classifiers, write_encoder, write_lpips_lin, write_vgg16

STYLE_DIM = 16


@pytest.fixture(scope="module")
def editor(tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    g = Generator(32, style_dim=STYLE_DIM, n_mlp=2, channels={4: 16, 8: 16, 16: 8, 32: 8})
    (d / "seg").mkdir()
    seg = load_segmenter(write_classifiers(d / "seg", 2, sum(g.feature_channels), 5), g)
    enc = load_encoder(write_encoder(d / "enc.pth", 1, num_ws=g.num_ws, stem=8, planes=(8, 8, 8, 8),
                                     blocks=(1, 1, 1, 1), feature_dim=16, style_dim=STYLE_DIM), g)
    lpips = LPIPS.from_files(write_vgg16(d / "vgg.pth", 2), write_lpips_lin(d / "lin.pth", 3))
    return Editor(g, seg, encoder=enc, lpips=lpips, progress=False)


def test_learning_uses_lpips_and_the_encoder_without_warning(editor):
    latent = editor.sample(0)
    labels, _ = editor.segment(latent)
    edited = labels.clone()
    edited[8:20, 8:20] = (labels[8:20, 8:20] + 1) % editor.num_classes
    terms = []
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "MSE only" warning when LPIPS is loaded
        vector = editor.learn_vector(latent, edited, steps=2, callback=lambda s, t, i: terms.append(t))
    assert {"lpips", "mse", "ce", "encoder", "total"} <= set(terms[0])
    assert terms[1]["lpips"] > 0  # the first Adam step moved the image outside the region
    assert vector.num_ws == editor.generator.num_ws
    assert not any(p.requires_grad for m in (editor.generator, editor.encoder, editor.lpips) for p in m.parameters())


def test_refine_has_no_encoder_term(editor):
    latent = editor.sample(1)
    vector = editor.learn_vector(latent, (editor.segment(latent)[0] + 1) % editor.num_classes, steps=1)
    objective = editor.refinement_objective(editor.sample(2), {vector: 1.0})
    assert objective.encoder is None and objective.lpips is editor.lpips


def test_embedding_starts_from_the_encoder(editor):
    target = torch.rand(3, 32, 32) * 2 - 1
    images = []
    editor.embed(target, steps=1, callback=lambda step, terms, image: images.append((terms, image)))
    terms, first = images[0]
    with torch.no_grad():
        start = editor.encoder(target[None])[0]
        expected = editor.generator.synthesis(start[None]).float()
    torch.testing.assert_close(first, expected, rtol=1e-5, atol=1e-5)
    assert {"lpips", "mse", "encoder", "reconstruction"} <= set(terms)
