"""Small random models written in the real file formats (rosinality torch files, StyleGAN2-ADA pickles)."""
import collections
import importlib.util
import pickle
import sys
import types
from pathlib import Path

import torch

from editgan_fast.models.generator import Generator

SMALL_CHANNELS = {4: 16, 8: 12, 16: 10, 32: 8, 64: 6}

# Module source embedded in test pickles: unpickling with the real persistence machinery would execute it.
EXECUTES_IF_RUN = "raise RuntimeError('the embedded StyleGAN2-ADA source was executed')\n"


def small_generator(size=32, style_dim=16, n_mlp=2, channels=None, seed=0, conv_clamp=None):
    """A generator with every parameter random and non-zero (noise strengths and biases included)."""
    torch.manual_seed(seed)
    chans = {r: c for r, c in (channels or SMALL_CHANNELS).items() if r <= size}
    g = Generator(size, style_dim=style_dim, n_mlp=n_mlp, channels=chans, conv_clamp=conv_clamp)
    with torch.no_grad():
        for name, p in g.named_parameters():
            if name.endswith(("bias", "noise.weight")):
                p.copy_(0.3 * torch.randn_like(p) + (1.0 if "modulation" in name else 0.0))
    return g.eval().requires_grad_(False)


def make_rosinality_checkpoint(path, seed=0, **kwargs):
    g = small_generator(seed=seed, **kwargs)
    latent_avg = g.mapping(torch.randn(64, g.style_dim)).mean(0)
    torch.save({"g_ema": g.state_dict(), "latent_avg": latent_avg, "g": {"unused": torch.zeros(1)}}, path)
    return g


class _Persistent:
    """Pickles like a StyleGAN2-ADA persistent object: reconstruct(meta) with the module source inside."""

    def __init__(self, class_name, params=(), buffers=(), modules=(), **attrs):
        self.state = dict(attrs, _parameters=collections.OrderedDict(params),
                          _buffers=collections.OrderedDict(buffers), _modules=collections.OrderedDict(modules),
                          _init_args=(), _init_kwargs={}, training=False)
        self.class_name = class_name

    def __reduce__(self):
        meta = dict(type="class", version=6, module_src=EXECUTES_IF_RUN, class_name=self.class_name,
                    state=self.state)
        return (_fake_persistence.reconstruct, (meta,))


def _reconstruct(meta):
    exec(meta["module_src"])  # what the real hook does; the loader must never get here


_fake_persistence = types.SimpleNamespace(reconstruct=_reconstruct)


def _param(t):
    return torch.nn.Parameter(t.detach().clone(), requires_grad=False)


def _fc(lin, lr_mul, activation):
    return _Persistent("FullyConnectedLayer", params=[("weight", _param(lin.weight)), ("bias", _param(lin.bias))],
                       activation=activation, lr_multiplier=lr_mul, weight_gain=lin.scale, bias_gain=lr_mul)


def _layer(conv, noise, conv_clamp, up):
    w = conv.conv.weight[0] * conv.conv.scale  # ADA stores the effective weight and demodulates it raw
    return _Persistent("SynthesisLayer", params=[("weight", _param(w)), ("bias", _param(conv.activate.bias)),
                                                 ("noise_strength", _param(conv.noise.weight[0]))],
                       buffers=[("noise_const", noise[0, 0].clone())],
                       modules=[("affine", _fc(conv.conv.modulation, 1.0, "linear"))],
                       conv_clamp=conv_clamp, up=up, activation="lrelu")


def _torgb(rgb, conv_clamp):
    return _Persistent("ToRGBLayer", params=[("weight", _param(rgb.conv.weight[0])),
                                             ("bias", _param(rgb.bias.reshape(3)))],
                       modules=[("affine", _fc(rgb.conv.modulation, 1.0, "linear"))], conv_clamp=conv_clamp)


def make_ada_pickle(path, g: Generator):
    """Write `g` as a StyleGAN2-ADA pickle {'G', 'D', 'G_ema', ...} whose embedded source raises if run."""
    noises = [getattr(g.noises, f"noise_{i}") for i in range(g.num_layers)]
    fcs = [m for m in g.style if hasattr(m, "weight")]
    mapping = _Persistent("MappingNetwork", modules=[(f"fc{i}", _fc(m, 0.01, "lrelu")) for i, m in enumerate(fcs)],
                          buffers=[("w_avg", g.mean_latent()[0])], z_dim=g.style_dim, w_dim=g.style_dim)
    blocks = [("b4", _Persistent("SynthesisBlock", params=[("const", _param(g.input.input[0]))],
                                 modules=[("conv1", _layer(g.conv1, noises[0], g.conv_clamp, 1)),
                                          ("torgb", _torgb(g.to_rgb1, g.conv_clamp))], architecture="skip"))]
    for b, rgb in enumerate(g.to_rgbs):
        blocks.append((f"b{2 ** (b + 3)}", _Persistent(
            "SynthesisBlock", architecture="skip",
            modules=[("conv0", _layer(g.convs[2 * b], noises[2 * b + 1], g.conv_clamp, 2)),
                     ("conv1", _layer(g.convs[2 * b + 1], noises[2 * b + 2], g.conv_clamp, 1)),
                     ("torgb", _torgb(rgb, g.conv_clamp))])))
    synthesis = _Persistent("SynthesisNetwork", modules=blocks, img_resolution=g.resolution)
    g_ema = _Persistent("Generator", modules=[("mapping", mapping), ("synthesis", synthesis)])
    module = types.ModuleType("torch_utils.persistence")
    module._reconstruct_persistent_obj = _reconstruct
    _reconstruct.__module__, _reconstruct.__qualname__ = "torch_utils.persistence", "_reconstruct_persistent_obj"
    _fake_persistence.reconstruct = _reconstruct
    saved = {k: sys.modules.get(k) for k in ("torch_utils", "torch_utils.persistence")}
    sys.modules["torch_utils"] = types.ModuleType("torch_utils")
    sys.modules["torch_utils.persistence"] = module
    try:
        with open(path, "wb") as fh:
            pickle.dump({"G": g_ema, "D": _Persistent("Discriminator"), "G_ema": g_ema,
                         "training_set_kwargs": {"path": "x.zip"}, "augment_pipe": None}, fh, protocol=4)
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v


def load_bench_script(name):
    """Import bench/<name>.py (the benchmarks are scripts, not a package) as module `name`."""
    path = Path(__file__).resolve().parents[1] / "bench" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
