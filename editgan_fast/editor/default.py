"""The embedded default model: an Editor that needs no file and no download.

`random_editor(seed)` builds, from a fixed seed, a small generator in EditGAN's layout (rosinality's StyleGAN2,
128 px, w+ [12, 512], reduced channels) and an 8-class DatasetGAN segmenter over its feature maps. The weights
are random; the segmenter is calibrated on a few samples (BatchNorm statistics and class biases set from the
features it sees) so that every class shows up in realistic proportions instead of one class winning everywhere.
It exercises the whole pipeline at a realistic shape; its edits are not semantically meaningful.

`default_editor(trained=...)` is the seam for bundled trained weights (issue 6): with `trained=False` it is
`random_editor(0)`; with `trained=None` (the default) it uses the bundled weights once they ship and the random
model until then; `trained=True` insists on the bundled weights.
"""
from __future__ import annotations

import copy
import functools

import torch

from ..ops.seg_head import PixelMLP
from .editor import Editor

RESOLUTION = 128
STYLE_DIM = 512
NUM_CLASSES = 8
CHANNELS = {4: 128, 8: 128, 16: 64, 32: 32, 64: 16, 128: 8}
HIDDEN = (128, 32)       # EditGAN's pixel-classifier widths for fewer than 32 classes
MEMBERS = 3
CALIBRATION_SAMPLES = 4
# An untrained generator's image reacts to w+ far more than a trained one's: at EditGAN's lr 0.02 the first Adam
# step already changes the whole image (MSE 0.3 on [0, 1]). A tenth of it lowers the editing loss steadily.
RANDOM_MODEL_LR = 0.002
CALIBRATION_PIXELS = 8192


def random_generator(seed: int = 0):
    from ..models.generator import Generator
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        generator = Generator(RESOLUTION, style_dim=STYLE_DIM, n_mlp=8, channels=dict(CHANNELS))
    return generator.eval().requires_grad_(False)


@torch.no_grad()
def _calibrated_member(pixels: torch.Tensor, rng: torch.Generator) -> PixelMLP:
    """A random PixelMLP whose BatchNorms normalize these pixel features and whose classes are balanced on them."""
    dim = pixels.shape[1]
    widths = (dim, *HIDDEN, NUM_CLASSES)
    weights = [torch.randn(o, i, generator=rng) / i ** 0.5 for i, o in zip(widths[:-1], widths[1:])]
    biases = [0.1 * torch.randn(o, generator=rng) for o in widths[1:]]
    bn_weight = [1 + 0.2 * torch.randn(h, generator=rng) for h in HIDDEN]
    bn_bias = [0.2 * torch.randn(h, generator=rng) for h in HIDDEN]
    bn_mean, bn_var = [], []
    h = pixels
    for i in range(2):
        h = torch.relu(h @ weights[i].T + biases[i])
        bn_mean.append(h.mean(0))
        bn_var.append(h.var(0) + 1e-3)
        h = (h - bn_mean[i]) * torch.rsqrt(bn_var[i] + 1e-5) * bn_weight[i] + bn_bias[i]
    # Centre each class's logit on these pixels, so each class wins a share of them.
    logits = h @ weights[2].T + biases[2]
    biases[2] = biases[2] - logits.mean(0)
    return PixelMLP(tuple(weights), tuple(biases), tuple(bn_mean), tuple(bn_var), tuple(bn_weight), tuple(bn_bias))


@torch.no_grad()
def random_segmenter(generator, seed: int = 0):
    from ..models.segmenter import Segmenter
    from ..ops.seg_head import upsample_feature
    rng = torch.Generator().manual_seed(seed + 1)
    z = torch.randn(CALIBRATION_SAMPLES, generator.style_dim, generator=rng)
    wplus = generator.truncate(generator.mapping(z), 0.7)[:, None].expand(-1, generator.num_ws, -1)
    _, features = generator.synthesis(wplus, return_features=True)
    r = generator.resolution
    picks = torch.randperm(CALIBRATION_SAMPLES * r * r, generator=rng)[:CALIBRATION_PIXELS]
    # Each map upsampled as the segmenter will see it, read at the picked pixels only.
    pixels = torch.cat([upsample_feature(f.float(), (r, r), "bilinear").permute(0, 2, 3, 1).reshape(-1, f.shape[1])
                        [picks] for f in features], 1)
    members = [_calibrated_member(pixels, rng) for _ in range(MEMBERS)]
    return Segmenter(members, generator.resolution)


@functools.lru_cache(maxsize=2)
def _random_models(seed: int):
    # Built once per process and seed. Every Editor works on its own frozen copies of them (sharing the weights'
    # storage, copied only when that editor moves them), so editors never affect each other.
    generator = random_generator(seed)
    return generator, random_segmenter(generator, seed)


def random_editor(seed: int = 0, **editor_options) -> Editor:
    """The random default model (see the module docstring), the same for the same seed."""
    editor_options.setdefault("learn_lr", RANDOM_MODEL_LR)
    return Editor(*_random_models(seed), **editor_options)


@functools.lru_cache(maxsize=1)
def _bundled_models():
    """(generator, segmenter) of the trained model in editgan_fast/assets (checksums verified), or None while
    none is bundled."""
    from .. import assets
    return assets.load_bundled() if assets.available() else None


def _bundled_editor(**editor_options) -> Editor | None:
    models = _bundled_models()
    return None if models is None else Editor(*models, **editor_options)


def default_editor(trained: bool | None = None, device=None, **editor_options) -> Editor:
    """The embedded default Editor; `trained` chooses bundled trained weights (see the module docstring);
    `device`: where its models live (default cpu)."""
    editor = None
    if trained is not False:
        editor = _bundled_editor(**editor_options)
        if editor is None and trained:
            from ..assets import MANIFEST, BundledModelError, RESTORE
            raise BundledModelError(f"the bundled trained model is missing ({MANIFEST} is absent); {RESTORE}")
    editor = editor or random_editor(0, **editor_options)
    if device is not None and torch.device(device) != editor.device:
        # Copies: the bundled models are cached on the CPU for every later default_editor().
        editor = Editor(*(copy.deepcopy(m).to(device) for m in (editor.generator, editor.segmenter)),
                        **{**editor_options, "learn_lr": editor.learn_lr})
    return editor
