"""Calling the cpu backend's autograd Functions only when something records or transforms the call."""
from __future__ import annotations

import torch

_is_wrapped = torch._C._functorch.is_functorch_wrapped_tensor


def needs_graph(tensors) -> bool:
    """Whether a call on `tensors` must go through its autograd Function: autograd records it, or a torch.func
    transform wraps an input (a wrapped tensor hides requires_grad, and vmap needs the Function's vmap rule)."""
    grad = torch.is_grad_enabled()
    return any(_is_wrapped(t) or (grad and t.requires_grad) for t in tensors if t is not None)


def call(function, *args):
    """`function.apply(*args)`, or its forward directly when no tensor argument needs the graph (generation,
    `apply`, a compiled graph's op kernels): apply binds its arguments through inspect.signature on every call
    (~20 us), which the real-time path would pay once per layer for nothing."""
    if needs_graph(a for a in args if isinstance(a, torch.Tensor)):
        return function.apply(*args)
    return function.forward(*args)
