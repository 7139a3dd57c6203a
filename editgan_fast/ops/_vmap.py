"""vmap rules of the cpu backend's autograd Functions and custom ops: fold the vmapped dimension into the batch.

Every native kernel already takes a batch (dim 0, N images): vmapping it over B batches is the same kernel on
B*N images. `fold` moves each per-sample tensor's vmapped dimension in front and merges it with dim 0 (a
per-sample tensor that is not vmapped, or holds one row broadcast over the batch, is expanded first); `unfold`
splits a result's dim 0 back into (B, N). Tensors shared by all samples (frozen weights, filters, biases) must not
be vmapped: one kernel call cannot take B of them.
"""
from __future__ import annotations

import torch


def logical_shape(t: torch.Tensor, dim: int | None) -> tuple:
    """The shape one vmapped call sees: `t`'s shape without its vmapped dimension `dim`."""
    shape = list(t.shape)
    if dim is not None:
        del shape[dim]
    return tuple(shape)


def fold(info, in_dims, args, sample, op: str):
    """(args with the per-sample tensors at positions `sample` folded to [B*N, ...], N). N is the batch of the
    first of them; each has N rows or one (broadcast). Raises if any other tensor argument is vmapped."""
    for i, (a, d) in enumerate(zip(args, in_dims)):
        if i not in sample and d is not None:
            raise NotImplementedError(
                f"vmap over {op}: argument {i} is vmapped, but the cpu backend takes it as shared by the whole batch "
                f"(a frozen weight, filter or bias); vmap over the inputs and styles only, or use the reference "
                f"backend")
    b = info.batch_size
    n = next(logical_shape(args[i], in_dims[i])[0] for i in sample if args[i] is not None)
    out = list(args)
    for i in sample:
        t, d = args[i], in_dims[i]
        if t is None:
            continue
        t = t.unsqueeze(0) if d is None else t.movedim(d, 0)
        out[i] = t.expand(b, n, *t.shape[2:]).reshape(b * n, *t.shape[2:]).contiguous()
    return out, n


def unfold(info, t: torch.Tensor, n: int) -> torch.Tensor:
    """A result over B*N images as [B, N, ...] (its vmapped dimension 0)."""
    return t.reshape(info.batch_size, n, *t.shape[1:])
