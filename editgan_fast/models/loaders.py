"""load_generator: the checkpoints EditGAN users already have.

(a) rosinality/EditGAN torch files holding {'g_ema': state_dict} (other keys such as latent_avg, g, d, g_optim,
    args may be present and are ignored, except latent_avg which becomes the mean latent). Read with
    torch.load(weights_only=True); the architecture is inferred from the keys and shapes; loading is strict.
(b) StyleGAN2-ADA .pkl files, through a restricted unpickler that never runs the embedded source
    (editgan_fast.models.ada_pickle).
"""
from __future__ import annotations

import os
import re
import zipfile

import torch

from .checks import check_state_dict, file_head, torch_load
from .errors import CheckpointError
from .generator import Generator


def infer_architecture(sd) -> dict:
    """Generator(**kwargs) arguments from a rosinality state dict's keys and shapes."""
    try:
        style_dim = int(sd["style.1.weight"].shape[1])
        n_mlp = len([k for k in sd if re.fullmatch(r"style\.\d+\.weight", k)])
        num_rgbs = len([k for k in sd if re.fullmatch(r"to_rgbs\.\d+\.conv\.weight", k)])
        channels = {4: sd["input.input"].shape[1]}
        for b in range(num_rgbs):
            channels[2 ** (b + 3)] = sd[f"convs.{2 * b}.conv.weight"].shape[1]
    except KeyError as e:
        raise CheckpointError(f"state dict is not a rosinality StyleGAN2 generator: key {e} is missing") from None
    except (IndexError, TypeError, AttributeError) as e:
        raise CheckpointError(f"state dict is not a rosinality StyleGAN2 generator: {type(e).__name__}: {e}") \
            from None
    if num_rgbs < 1 or style_dim < 1 or min(channels.values()) < 1:
        raise CheckpointError(f"state dict describes an empty generator (style_dim {style_dim}, channels "
                              f"{channels})")
    return dict(size=2 ** (num_rgbs + 2), style_dim=style_dim, n_mlp=n_mlp, channels=channels)


def generator_from_state_dict(sd, latent_avg=None, source="state dict", conv_clamp=None) -> Generator:
    check_state_dict(sd, source)
    try:
        g = Generator(**infer_architecture(sd), conv_clamp=conv_clamp)
    except CheckpointError as e:
        raise CheckpointError(f"{source}: {e}") from None
    except (ValueError, RuntimeError, TypeError, IndexError, KeyError) as e:
        raise CheckpointError(f"{source}: its shapes describe no valid generator: {type(e).__name__}: {e}") from None
    expected = g.state_dict()
    optional = {"latent_avg"}  # ours, persistent; rosinality keeps it outside g_ema
    missing = sorted(set(expected) - set(sd) - optional)
    unexpected = sorted(set(sd) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"{source}: keys do not match the inferred {g.resolution}px generator; "
                              f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
                              f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}")
    for k, v in expected.items():
        if k in sd and tuple(sd[k].shape) != tuple(v.shape):
            raise CheckpointError(f"{source}: {k} has shape {tuple(sd[k].shape)}, expected {tuple(v.shape)}")
    g.load_state_dict({k: v.float() for k, v in sd.items()}, strict=True)
    if latent_avg is not None:
        if not isinstance(latent_avg, torch.Tensor) or latent_avg.numel() != g.style_dim:
            raise CheckpointError(f"{source}: latent_avg must be a tensor of {g.style_dim} values, got "
                                  f"{tuple(latent_avg.shape) if isinstance(latent_avg, torch.Tensor) else latent_avg!r}")
        if not torch.isfinite(latent_avg).all():
            raise CheckpointError(f"{source}: latent_avg contains NaN or Inf")
        g.set_mean_latent(latent_avg.float())
    return g.eval().requires_grad_(False)


def load_generator(path, map_location="cpu") -> Generator:
    path = os.fspath(path)
    head = file_head(path, "generator checkpoint")
    if path.endswith(".pkl") or (head[:1] == b"\x80" and not zipfile.is_zipfile(path)):
        from .ada_pickle import load_ada_generator
        return load_ada_generator(path).to(map_location)
    ckpt = torch_load(path, "generator checkpoint")
    if not isinstance(ckpt, dict) or "g_ema" not in ckpt:
        what = f"a dict with keys {sorted(ckpt)[:6]}" if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(f"{path}: expected a rosinality/EditGAN checkpoint {{'g_ema': state_dict}}, "
                              f"found {what}")
    sd = ckpt["g_ema"]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(f"{path}: 'g_ema' is not a state dict of tensors")
    return generator_from_state_dict(sd, ckpt.get("latent_avg"), source=path).to(map_location)
