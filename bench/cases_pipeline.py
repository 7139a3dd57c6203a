"""Pipeline stages at EditGAN's car configuration (issue 4): `apply` and one refinement step (the generator
alone is in cases_conv.py, the head alone in cases_seg.py).

- apply: a new vector scale -> image + labels through `Editor.apply` (cached styles, generator, head over the
  384x512 crop, argmax), segmenter = 10 random members, 32 classes, 6016 feature channels.
- refine step: one forward and backward for w+ of EditGAN's editing loss (cross-entropy inside a 96x128 region
  through the region-restricted head, 15*(5*MSE [+ 10*LPIPS]) outside), as `Editor.refine` runs per step.
Weights are random (same cost as trained ones); LPIPS uses random VGG16 weights in its real architecture.
"""
import os
import sys

import torch

import editgan_fast
from editgan_fast.editor import Editor, EditVector
from editgan_fast.editor.losses import EditObjective
from editgan_fast.models.generator import Generator
from editgan_fast.models.lpips import LPIPS
from editgan_fast.models.segmenter import Segmenter

sys.path.insert(0, os.path.dirname(__file__))
from cases_seg import CAR_CLASSES, CAR_CROP, CAR_H1, CAR_H2, CAR_MEMBERS  # noqa: E402
from harness import Case  # noqa: E402

_cache = {}


def generator():
    if "g" not in _cache:
        torch.manual_seed(0)
        _cache["g"] = Generator(512, channel_multiplier=2).eval().requires_grad_(False)
    return _cache["g"]


def segmenter():
    if "s" not in _cache:
        from editgan_fast.ops.seg_head import PixelMLP
        g = generator()
        dim = sum(g.feature_channels)
        torch.manual_seed(1)
        members = []
        for _ in range(CAR_MEMBERS):
            widths = (dim, CAR_H1, CAR_H2, CAR_CLASSES)
            ws = tuple(torch.randn(o, i) / i ** 0.5 for i, o in zip(widths[:-1], widths[1:]))
            bs = tuple(0.1 * torch.randn(o) for o in widths[1:])
            hid = (CAR_H1, CAR_H2)
            members.append(PixelMLP(ws, bs, tuple(0.1 * torch.randn(h) for h in hid),
                                    tuple(torch.rand(h) + 0.5 for h in hid), tuple(torch.rand(h) + 0.5 for h in hid),
                                    tuple(0.1 * torch.randn(h) for h in hid)))
        _cache["s"] = Segmenter(members, 512, crop=CAR_CROP)
    return _cache["s"]


def _latent(g):
    torch.manual_seed(2)
    return g.truncate(g.mapping(torch.randn(1, 512)), 0.7)[:, None].expand(-1, g.num_ws, -1)[0].contiguous()


def apply_new_scale(backend_name, dtype=None):
    def make():
        g, s = generator(), segmenter()
        editor = Editor(g, s, progress=False)
        latent = editor.latent(_latent(g))
        torch.manual_seed(3)
        vector = EditVector(0.05 * torch.randn(g.num_ws, 512), (1,), "bench", editor.fingerprint)
        scales = iter(torch.linspace(0.1, 2.0, 1000).tolist())
        with editgan_fast.use_backend(backend_name, dtype=dtype):
            editor.apply(latent, {vector: 0.0})  # caches the styles of w and of the vector

        def run():
            with editgan_fast.use_backend(backend_name, dtype=dtype):
                return editor.apply(latent, {vector: next(scales)})
        return run
    return make


def refine_step(backend_name, with_lpips, dtype=None):
    def make():
        g, s = generator(), segmenter()
        wplus = _latent(g)
        h, w = s.label_size
        region = torch.zeros(h, w, dtype=torch.bool)
        region[h // 2 - 48: h // 2 + 48, w // 2 - 64: w // 2 + 64] = True
        target = torch.randint(0, CAR_CLASSES, (h, w), generator=torch.Generator().manual_seed(4))
        lpips = LPIPS().eval().requires_grad_(False) if with_lpips else None
        with editgan_fast.use_backend(backend_name, dtype=dtype), torch.no_grad():
            reference = g.synthesis(wplus[None]).float()
        objective = EditObjective(g, s, reference, target, region, lpips)
        latent = wplus.clone().requires_grad_(True)

        def run():
            with editgan_fast.use_backend(backend_name, dtype=dtype):
                total, _, _ = objective(latent)
                total.backward()
            latent.grad = None
        return run
    return make


CASES = [
    Case("apply (new scale -> image + labels)", "reference", None, apply_new_scale("reference"), None),
    Case("apply (new scale -> image + labels)", "cpu", torch.float32, apply_new_scale("cpu"), None),
    Case("refine step, MSE", "reference", None, refine_step("reference", False), None),
    Case("refine step, MSE", "cpu", torch.float32, refine_step("cpu", False), None),
    Case("refine step, LPIPS+MSE", "reference", None, refine_step("reference", True), None),
    Case("refine step, LPIPS+MSE", "cpu", torch.float32, refine_step("cpu", True), None),
]
