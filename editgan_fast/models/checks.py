"""Checks every model loader applies at the boundary: a loaded state dict holds only tensors, and only finite
ones, so a NaN in a checkpoint is an error naming the tensor, never a black image and an all-background map."""
from __future__ import annotations

import os

import torch

from .errors import CheckpointError


def check_state_dict(sd, source: str) -> dict:
    """`sd` itself, after checking it is a {str: tensor} dict whose floating tensors are all finite."""
    if not isinstance(sd, dict):
        raise CheckpointError(f"{source}: expected a state dict, found a {type(sd).__name__}")
    for key, value in sd.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{source}: entry {key!r} is a {type(value).__name__}, not a tensor")
        if value.is_complex() or value.dtype == torch.bool:
            raise CheckpointError(f"{source}: {key} has dtype {value.dtype}, expected a real floating tensor")
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise CheckpointError(f"{source}: {key} contains NaN or Inf")
    return sd


def file_head(path, what: str) -> bytes:
    """The first 4 bytes of `path`, after checking it is a file that exists and is not empty."""
    if not os.path.isfile(path):
        raise CheckpointError(f"{what} {path} does not exist")
    if os.path.getsize(path) == 0:
        raise CheckpointError(f"{what} {path} is empty")
    with open(path, "rb") as f:
        return f.read(4)


def torch_load(path, what: str = "checkpoint"):
    """torch.load(weights_only=True) of a file that exists and is not empty; any failure (torch raises many
    types for foreign, corrupt or unsafe files) is a CheckpointError naming the file."""
    path = os.fspath(path)
    head = file_head(path, what)
    if head != b"PK\x03\x04" and head[:1] != b"\x80":  # torch files are zip archives (or legacy pickles)
        raise CheckpointError(f"{what} {path} is not a PyTorch checkpoint: it is neither a zip archive nor a "
                              f"pickle (it starts with {head!r})")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        first = (str(e).splitlines() or [""])[0][:200]
        raise CheckpointError(f"{what} {path} is not a PyTorch checkpoint that loads with weights_only=True "
                              f"({type(e).__name__}: {first})") from None


def check_classifier(classifier, path) -> None:
    """A loaded pixel classifier (a PixelClassifier module) has at least one class and no empty layer."""
    widths = [m.out_features for m in classifier.modules() if isinstance(m, torch.nn.Linear)]
    if classifier.num_classes < 1 or min(widths) < 1:
        raise CheckpointError(f"classifier file {path} has an empty layer (layer widths {widths}): a segmenter "
                              f"needs at least one class")
