"""StyleGAN2-ADA .pkl files, read without running any code from them.

Such a pickle holds persistent objects: each module is saved as
`torch_utils.persistence._reconstruct_persistent_obj(meta)` with meta = {type, version, module_src (the Python
source of the defining module), class_name, state (the module's __dict__: _parameters, _buffers, _modules,
_init_args, _init_kwargs, plain attributes)}. Unpickling normally EXECUTES module_src. Our unpickler resolves
every global itself: the reconstruct hook becomes a record of (class_name, state) whose source is never looked
at, tensors are rebuilt by torch's own functions (storages through torch.load(weights_only=True)), and any
other global becomes an inert placeholder. The records of G_ema are then mapped onto our rosinality-layout
Generator: StyleGAN2-ADA's networks compute the same function (same mapping, modulation, demodulation with the
raw weight, noise, [1,3,3,1] resampling with the same paddings, skip ToRGB), so only names and the equalized-lr
scale factors differ; `conv_clamp` is honoured.
"""
from __future__ import annotations

import collections
import io
import pickle

import torch

from .errors import CheckpointError
from .generator import Generator
from .loaders import generator_from_state_dict, infer_architecture


class PersistentRecord:
    """What a persistent object's reconstruct call becomes: its class name and saved state, nothing run."""

    def __init__(self, meta):
        if not isinstance(meta, dict) or "state" not in meta or "class_name" not in meta:
            raise CheckpointError("persistent object without class_name/state: not a StyleGAN2-ADA pickle")
        self.class_name = meta["class_name"]
        self.state = meta["state"] or {}

    def child(self, name):
        modules = self.state.get("_modules", {})
        if name not in modules:
            raise CheckpointError(f"StyleGAN2-ADA {self.class_name} has no submodule {name!r}")
        return modules[name]

    def tensor(self, name):
        for group in ("_parameters", "_buffers"):
            if name in self.state.get(group, {}):
                return torch.as_tensor(self.state[group][name]).detach().float()
        raise CheckpointError(f"StyleGAN2-ADA {self.class_name} has no tensor {name!r}")


class _Inert:
    """Stands for any global we do not need (e.g. dnnlib.EasyDict, numpy scalars): accepts and keeps data."""

    def __init__(self, *args, **kwargs):
        self.args = args

    def __setstate__(self, state):
        self.state = state

    def __setitem__(self, key, value):  # dict subclasses pickle their items with SETITEMS
        self.__dict__.setdefault("items", {})[key] = value


def _inert_global(module, name):
    return type(f"Inert[{module}.{name}]", (_Inert,), {})


def _storage_from_bytes(data):
    try:
        return torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    except Exception as e:  # torch raises many types (AssertionError among them) for a damaged storage
        raise pickle.UnpicklingError(f"an embedded tensor storage is unreadable: {type(e).__name__}: {e}") from None


_ALLOWED = {
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("torch.storage", "_load_from_bytes"): _storage_from_bytes,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): PersistentRecord,
    ("dnnlib.util", "EasyDict"): dict,
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module == "torch" and name.endswith("Storage"):
            return getattr(torch, name)  # storage type tags
        return _inert_global(module, name)

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("persistent ids are not used by StyleGAN2-ADA pickles")


def _layer_weights(sd, prefix, layer, demodulated):
    """One ADA SynthesisLayer/ToRGBLayer -> rosinality keys under `prefix`."""
    w = layer.tensor("weight")  # [Cout, Cin, k, k], used raw by ADA
    cin, k = w.shape[1], w.shape[2]
    if demodulated:
        # ADA demodulates the raw weight; ours scales by 1/sqrt(Cin k^2) first: store weight / scale.
        w = w * (cin * k * k) ** 0.5
    # ToRGB: ADA multiplies the styles by 1/sqrt(Cin) instead; ours multiplies the weight: same product.
    sd[f"{prefix}.conv.weight"] = w[None]
    affine = layer.child("affine")
    sd[f"{prefix}.conv.modulation.weight"] = affine.tensor("weight")
    sd[f"{prefix}.conv.modulation.bias"] = affine.tensor("bias")


def _ada_to_rosinality(g_ema: PersistentRecord):
    mapping, synthesis = g_ema.child("mapping"), g_ema.child("synthesis")
    resolution = int(synthesis.state.get("img_resolution", 0))
    if resolution < 8:
        raise CheckpointError("StyleGAN2-ADA synthesis network without img_resolution")
    sd = {}
    fcs = sorted((k for k in mapping.state.get("_modules", {}) if k.startswith("fc")), key=lambda k: int(k[2:]))
    if "embed" in mapping.state.get("_modules", {}) and mapping.state["_modules"]["embed"] is not None:
        raise CheckpointError("conditional StyleGAN2-ADA generators (c_dim > 0) are not supported")
    for i, name in enumerate(fcs):
        fc = mapping.child(name)
        if float(fc.state.get("lr_multiplier", 0.01)) != 0.01:
            raise CheckpointError("StyleGAN2-ADA mapping lr_multiplier other than 0.01 is not supported")
        sd[f"style.{i + 1}.weight"] = fc.tensor("weight")
        sd[f"style.{i + 1}.bias"] = fc.tensor("bias")
    conv_clamp = None
    blocks = [synthesis.child(f"b{2 ** r}") for r in range(2, resolution.bit_length())]
    noise_index = 0
    for b, block in enumerate(blocks):
        if block.state.get("architecture", "skip") != "skip":
            raise CheckpointError(f"StyleGAN2-ADA architecture {block.state.get('architecture')!r} is not "
                                  "supported (only 'skip', the StyleGAN2 default)")
        convs = ["conv1"] if b == 0 else ["conv0", "conv1"]
        if b == 0:
            sd["input.input"] = block.tensor("const")[None]
        for j, name in enumerate(convs):
            layer = block.child(name)
            prefix = "conv1" if b == 0 else f"convs.{2 * (b - 1) + j}"
            _layer_weights(sd, prefix, layer, demodulated=True)
            sd[f"{prefix}.noise.weight"] = layer.tensor("noise_strength").reshape(1)
            sd[f"{prefix}.activate.bias"] = layer.tensor("bias")
            noise = layer.tensor("noise_const")
            sd[f"noises.noise_{noise_index}"] = noise.reshape(1, 1, *noise.shape[-2:])
            noise_index += 1
            conv_clamp = layer.state.get("conv_clamp")
            if name == "conv0":
                sd[f"{prefix}.conv.blur.kernel"] = None  # filled from the generator's own buffers
        rgb_prefix = "to_rgb1" if b == 0 else f"to_rgbs.{b - 1}"
        torgb = block.child("torgb")
        _layer_weights(sd, rgb_prefix, torgb, demodulated=False)
        sd[f"{rgb_prefix}.bias"] = torgb.tensor("bias").reshape(1, 3, 1, 1)
        if b > 0:
            sd[f"{rgb_prefix}.upsample.kernel"] = None
    w_avg = mapping.tensor("w_avg") if "w_avg" in mapping.state.get("_buffers", {}) else None
    return sd, w_avg, conv_clamp


def load_ada_generator(path):
    try:
        with open(path, "rb") as fh:
            data = _RestrictedUnpickler(fh).load()
    except CheckpointError:
        raise
    except Exception as e:  # unpickling hostile bytes can fail in any of a dozen exception types
        raise CheckpointError(f"{path}: not a readable pickle ({type(e).__name__}: {e})") from None
    if not isinstance(data, dict) or not isinstance(data.get("G_ema"), PersistentRecord):
        raise CheckpointError(f"{path}: expected a StyleGAN2-ADA pickle with a 'G_ema' network")
    try:
        sd, w_avg, conv_clamp = _ada_to_rosinality(data["G_ema"])
        # Blur/upsample kernels are fixed buffers of the architecture: take them from a freshly built generator.
        fresh = Generator(**infer_architecture(sd)).state_dict()
        sd = {k: (fresh[k] if v is None else v) for k, v in sd.items()}
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None
    except Exception as e:  # any shape of the records' contents may be wrong in a damaged file
        raise CheckpointError(f"{path}: the StyleGAN2-ADA network is malformed: {type(e).__name__}: {e}") from None
    return generator_from_state_dict(sd, w_avg, source=str(path), conv_clamp=conv_clamp)

