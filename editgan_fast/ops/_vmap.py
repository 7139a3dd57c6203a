"""vmap rules of the cpu backend's kernels: fold the vmapped dimension into the batch.

Every native kernel already takes a batch (dim 0, N images): vmapping it over B batches is the same kernel on
B*N images. `fold` moves each per-sample tensor's vmapped dimension in front and merges it with dim 0 (a
per-sample tensor that is not vmapped, or holds one row broadcast over the batch, is expanded first); `unfold`
splits a result's dim 0 back into (B, N). Tensors shared by all samples (frozen weights, filters, biases, the
pixel list) must not be vmapped: one kernel call cannot take B of them.
"""
from __future__ import annotations

import torch


def _items(arg, dim):
    """(value, vmapped dim) of an argument, or of each tensor of a tensor-list argument."""
    if isinstance(arg, (list, tuple)):
        return list(zip(arg, dim if isinstance(dim, (list, tuple)) else [dim] * len(arg)))
    return [(arg, dim)]


def _logical_batch(t: torch.Tensor, dim: int | None) -> int:
    """dim 0 of `t` as one vmapped call sees it (the vmapped dimension removed)."""
    return t.shape[1 if dim is not None and dim % t.dim() == 0 else 0]


def _fold_one(t, dim, b, n):
    if t is None:
        return None
    t = t.unsqueeze(0) if dim is None else t.movedim(dim, 0)
    return t.expand(b, n, *t.shape[2:]).reshape(b * n, *t.shape[2:]).contiguous()


def check_shared(in_dims, args, sample, op: str):
    """Raise if a tensor argument outside the per-sample positions `sample` is vmapped."""
    for i, (a, d) in enumerate(zip(args, in_dims)):
        if i not in sample and any(isinstance(t, torch.Tensor) and e is not None for t, e in _items(a, d)):
            raise NotImplementedError(
                f"vmap over {op}: argument {i} is vmapped, but the cpu backend takes it as shared by the whole batch "
                f"(a frozen weight, filter or bias); vmap over the inputs and styles only, or use the reference "
                f"backend")


def fold(info, in_dims, args, sample, op: str):
    """(args with the per-sample tensors at positions `sample` (a tensor or a tensor list each) folded to
    [B*N, ...], N). N is dim 0 of the first of them; each has N rows or one (broadcast). Raises if any other
    tensor argument is vmapped."""
    check_shared(in_dims, args, sample, op)
    b = info.batch_size
    n = next(_logical_batch(t, e) for i in sample if i < len(args) for t, e in _items(args[i], in_dims[i])
             if t is not None)
    out = list(args)
    for i in sample:
        if i < len(args):
            items = [_fold_one(t, e, b, n) for t, e in _items(args[i], in_dims[i])]
            out[i] = items if isinstance(args[i], (list, tuple)) else items[0]
    return out, n


def unfold(info, t: torch.Tensor, n: int) -> torch.Tensor:
    """A result over B*N images as [B, N, ...] (its vmapped dimension 0)."""
    return t.reshape(info.batch_size, n, *t.shape[1:])
