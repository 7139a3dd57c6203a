"""bias_act: y = clamp(act(x + b) * gain, -clamp, clamp), the epilogue of every StyleGAN2 layer.

`act` is "linear" or "lrelu" (slope `alpha`, 0.2 by default). `gain` defaults to the activation's
variance-preserving gain: 1 for linear, sqrt(2) for lrelu. `b` is broadcast along dimension `dim`.
"""
import math

import torch.nn.functional as F

from .. import backend
from . import _library
from ._checks import check_tensor

ACTIVATIONS = {"linear": 1.0, "lrelu": math.sqrt(2.0)}  # name -> default gain


def _defaults(act, alpha, gain):
    if act not in ACTIVATIONS:
        raise ValueError(f"unknown activation {act!r}; choose one of {sorted(ACTIVATIONS)}")
    return (0.2 if alpha is None else float(alpha)), (ACTIVATIONS[act] if gain is None else float(gain))


def bias_act_reference(x, b=None, dim=1, act="linear", alpha=None, gain=None, clamp=None):
    alpha, gain = _defaults(act, alpha, gain)
    if b is not None:
        x = x + b.reshape([-1 if i == dim else 1 for i in range(x.ndim)]).to(x.dtype)
    if act == "lrelu":
        x = F.leaky_relu(x, alpha)
    if gain != 1:
        x = x * gain
    if clamp is not None and clamp >= 0:
        x = x.clamp(-clamp, clamp)
    return x


backend.register_reference("bias_act", bias_act_reference)


def bias_act(x, b=None, dim=1, act="linear", alpha=None, gain=None, clamp=None):
    check_tensor("x", x)
    if b is not None:
        check_tensor("b", b, ndim=1, device=x.device)
        if not 0 <= dim < x.ndim or b.shape[0] != x.shape[dim]:
            raise ValueError(f"bias has {b.shape[0]} entries but x has shape {tuple(x.shape)} (dim={dim})")
    alpha, gain = _defaults(act, alpha, gain)
    name = backend.resolve_name("bias_act", x)
    if _library.traced(name):
        op = _library.for_trace(_library.bias_act)
        return op(x, b, dim, act, alpha, gain, None if clamp is None else float(clamp), backend.current().dtype)
    return backend.implementation("bias_act", name)(x, b, dim=dim, act=act, alpha=alpha, gain=gain, clamp=clamp)
