"""The `cpu` backend's operators as torch.library custom ops, so torch.compile and torch.export trace them.

`torch.ops.editgan_fast.{modulated_conv2d, bias_act, upfirdn2d, seg_head}` each wrap the cpu backend's
implementation of the public op (editgan_fast/ops/_cpu_*.py) whole: its host-side Python (filter taps read
with .tolist(), pixel windows from int(ys.min()), weight caches keyed by tensor identity) runs opaquely in the
op's real kernel, where it is harmless, and a tracer only sees the op with its fake kernel (output shape and
dtype). Every argument a kernel reads on the host is a compile-time constant (int, float, str, list, dtype) or
a tensor it reads inside the kernel.

Gradients (`register_autograd`): each op has a `*_grad` op that recomputes the forward through the cpu
backend's own autograd code and differentiates it (one extra forward per backward: the forward op returns only
its output, so nothing else survives to the backward). Gradients flow to what the cpu backend differentiates:
x, styles and skip of modulated_conv2d, x of bias_act and upfirdn2d, the feature maps of seg_head; weights,
biases, filters and classifier members are frozen.

Inference twins (`<op>_nograd`): the same kernel and fake kernel registered without an autograd kernel. A graph
traced under no_grad (generation, `Editor.apply`, an export for inference) records them (`for_trace`): every call
of a torch.library custom op passes through its Python autograd kernel even without gradients (~20 us per call,
~0.4 ms per synthesis), an op without one through the dispatcher's C++ fallthrough.

vmap (`register_vmap`): the vmapped dimension is folded into the op's batch (ops/_vmap.py), so a compiled
`torch.func.vmap` over synthesis calls each op once for the whole vmapped batch. `torch.func.grad` cannot go
through these ops: torch 2.13's `register_autograd` builds an autograd Function without `setup_context`, which
functorch refuses (eager calls reach the cpu backend's own Functions, which have it).

`mode` is the backend's dtype selection (None, torch.float32 or torch.bfloat16) at the time of the call: the
kernel runs under exactly that selection, so a compiled graph does not depend on the caller's context later.
"""
from __future__ import annotations

import contextlib

import torch

from .. import backend
from . import _vmap
from ._derived import DerivedCache

_AUTOGRAD_KEYS = tuple(getattr(torch._C.DispatchKey, k) for k in (
    "AutogradFunctionality", "AutogradOther", "AutogradNestedTensor") if hasattr(torch._C.DispatchKey, k))


@contextlib.contextmanager
def _autograd_inside_kernel():
    """Record autograd inside a custom op's kernel. The dispatcher calls kernels below the autograd key (its
    keys excluded), so a backward kernel that differentiates the cpu backend's own autograd code must lift
    that exclusion for its duration."""
    exclude = torch._C._dispatch_tls_local_exclude_set()
    for key in _AUTOGRAD_KEYS:
        exclude = exclude.remove(key)
    with torch._C._ForceDispatchKeyGuard(torch._C._dispatch_tls_local_include_set(), exclude), \
            torch.enable_grad():
        yield


def _selected(mode):
    """The cpu backend under the trace's dtype selection `mode`, around a kernel's body; nothing to switch (and no
    context manager's cost on every op call) when the caller already runs under it."""
    return contextlib.nullcontext() if backend._current() == ("cpu", mode) else backend.use_backend("cpu", mode)


def traced(name: str) -> bool:
    """Whether an op resolved to backend `name` goes through its custom op: while torch.compile or
    torch.export traces (eager calls keep the backend's own autograd code, whose backward needs no recompute)."""
    return name == "cpu" and torch.compiler.is_compiling()


def _cpu(op):
    return backend._load("cpu").OPS[op]


def _storage_dtype(x, mode):
    from ._cpu_layers import _storage_dtype
    with backend.use_backend("cpu", mode):
        return _storage_dtype(x)


def _recompute_grads(op, args: dict, mode, wrt, grad_out):
    """Gradients of the cpu backend's `op` at `args` (under the backend dtype selection `mode`) w.r.t. the
    tensors named in `wrt` (zeros where unused, None where absent), given the gradient of its output."""
    with _autograd_inside_kernel(), backend.use_backend("cpu", mode):
        leaves = {}
        for name in wrt:
            value = args[name]
            if isinstance(value, (list, tuple)):
                args[name] = leaves[name] = [t.detach().requires_grad_(True) for t in value]
            elif value is not None:
                args[name] = leaves[name] = value.detach().requires_grad_(True)
        out = _cpu(op)(**args)
        flat = [t for v in leaves.values() for t in (v if isinstance(v, list) else [v])]
        grads = iter(torch.autograd.grad(out, flat, grad_out.to(out.dtype), allow_unused=True))
    result = []
    for name in wrt:
        value = leaves.get(name)
        if isinstance(value, list):
            result.append([_or_zeros(next(grads), t) for t in value])
        elif value is not None:
            result.append(_or_zeros(next(grads), value))
        else:
            result.append(None)
    return result


def _or_zeros(grad, like):
    return torch.zeros_like(like) if grad is None else grad.to(like.dtype)


def _nothing(like):
    """Stands for an absent gradient in an op's tensor outputs (custom ops return tensors, never None)."""
    return like.new_empty(0)


_LIB = torch.library.Library("editgan_fast", "FRAGMENT")  # the inference twins
_INFERENCE: dict = {}  # custom op -> its inference twin


def _custom_op(impl, fake):
    """The custom op `editgan_fast::<impl's name>` (schema from impl's annotations) and its inference twin
    `<name>_nograd`: the same kernel and fake kernel without an autograd kernel, which a graph traced under no_grad
    records (see `for_trace`). A custom op's autograd kernel is Python (torch.library's, run on every call, with
    or without gradients: ~20 us of a ~28 us call, measured); an op without one passes the autograd key in C++."""
    name = impl.__name__
    op = torch.library.custom_op(f"editgan_fast::{name}", impl, mutates_args=(), device_types="cpu")
    op.register_fake(fake)
    twin = f"{name}_nograd"
    _LIB.define(twin + torch.library.infer_schema(impl, mutates_args=()))
    _LIB.impl(twin, impl, "CPU")
    torch.library.register_fake(f"editgan_fast::{twin}", fake, lib=_LIB)
    _INFERENCE[op] = getattr(torch.ops.editgan_fast, twin).default
    return op


def for_trace(op):
    """The op a trace records for `op`: its inference twin under no_grad (dynamo guards on the grad mode, so a
    graph traced without gradients is never run with them)."""
    return op if torch.is_grad_enabled() else _INFERENCE[op]


def _register_vmap(op, rule):
    """`rule(target, info, in_dims, *args)` as the vmap rule of `op` and of its inference twin, each calling
    itself as `target`."""
    op.register_vmap(lambda *args: rule(op, *args))
    twin = _INFERENCE[op]
    torch.library.register_vmap(twin, lambda *args: rule(twin, *args), lib=_LIB)


def _register_folding_vmap(op, name, sample):
    """vmap of `op`: its per-sample arguments at positions `sample` folded into the batch, one call."""
    def rule(target, info, in_dims, *args):
        args, n = _vmap.fold(info, in_dims, args, sample, name)
        return _vmap.unfold(info, target(*args), n), 0

    _register_vmap(op, rule)


# ---------------------------------------------------------------------------------------- modulated_conv2d
_MC_TENSORS = ("x", "weight", "styles", "resample_filter", "wsq", "noise", "bias", "skip")


def modulated_conv2d(x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor,
                     resample_filter: torch.Tensor | None, wsq: torch.Tensor | None, noise: torch.Tensor | None,
                     bias: torch.Tensor | None, skip: torch.Tensor | None, demodulate: bool, up: int, act: str,
                     alpha: float, gain: float, clamp: float | None, eps: float,
                     mode: torch.dtype | None) -> torch.Tensor:
    with _selected(mode):
        return _cpu("modulated_conv2d")(x, weight, styles, demodulate=demodulate, up=up,
                                        resample_filter=resample_filter, wsq=wsq, noise=noise, bias=bias, act=act,
                                        alpha=alpha, gain=gain, clamp=clamp, skip=skip, eps=eps)


def _mc_fake(x, weight, styles, resample_filter, wsq, noise, bias, skip, demodulate, up, act, alpha, gain, clamp,
             eps, mode):
    n, _, h, w = x.shape
    return x.new_empty((n, weight.shape[0], h * up, w * up), dtype=_storage_dtype(x, mode))


modulated_conv2d = _custom_op(modulated_conv2d, _mc_fake)


@torch.library.custom_op("editgan_fast::modulated_conv2d_grad", mutates_args=(), device_types="cpu")
def modulated_conv2d_grad(grad_out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor,
                              resample_filter: torch.Tensor | None, wsq: torch.Tensor | None,
                              noise: torch.Tensor | None, bias: torch.Tensor | None, skip: torch.Tensor | None,
                              demodulate: bool, up: int, act: str, alpha: float, gain: float,
                              clamp: float | None, eps: float,
                              mode: torch.dtype | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(grad x, grad styles, grad skip (empty without skip))."""
    args = dict(zip(_MC_TENSORS, (x, weight, styles, resample_filter, wsq, noise, bias, skip)),
                demodulate=demodulate, up=up, act=act, alpha=alpha, gain=gain, clamp=clamp, eps=eps)
    gx, gs, gskip = _recompute_grads("modulated_conv2d", args, mode, ("x", "styles", "skip"), grad_out)
    return gx, gs, _nothing(x) if gskip is None else gskip


@modulated_conv2d_grad.register_fake
def _(grad_out, x, weight, styles, resample_filter, wsq, noise, bias, skip, *constants):
    return torch.empty_like(x), torch.empty_like(styles), _nothing(x) if skip is None else torch.empty_like(skip)


def _mc_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:len(_MC_TENSORS)])
    ctx.constants = inputs[len(_MC_TENSORS):]


def _mc_backward(ctx, grad_out):
    saved = ctx.saved_tensors
    gx, gs, gskip = modulated_conv2d_grad(grad_out, *saved, *ctx.constants)
    needs = ctx.needs_input_grad
    return (gx if needs[0] else None, None, gs if needs[2] else None, None, None, None, None,
            gskip if saved[7] is not None and needs[7] else None) + (None,) * len(ctx.constants)


modulated_conv2d.register_autograd(_mc_backward, setup_context=_mc_setup)
_register_folding_vmap(modulated_conv2d, "modulated_conv2d", sample=(0, 2, 5, 7))  # x, styles, noise, skip


# ------------------------------------------------------------------------------------------------ bias_act
def bias_act(x: torch.Tensor, b: torch.Tensor | None, dim: int, act: str, alpha: float, gain: float,
             clamp: float | None, mode: torch.dtype | None) -> torch.Tensor:
    with _selected(mode):
        return _cpu("bias_act")(x, b, dim=dim, act=act, alpha=alpha, gain=gain, clamp=clamp)


def _bias_act_fake(x, b, dim, act, alpha, gain, clamp, mode):
    return torch.empty_like(x, dtype=_storage_dtype(x, mode))


bias_act = _custom_op(bias_act, _bias_act_fake)


@torch.library.custom_op("editgan_fast::bias_act_grad", mutates_args=(), device_types="cpu")
def bias_act_grad(grad_out: torch.Tensor, x: torch.Tensor, b: torch.Tensor | None, dim: int, act: str,
                      alpha: float, gain: float, clamp: float | None, mode: torch.dtype | None) -> torch.Tensor:
    args = dict(x=x, b=b, dim=dim, act=act, alpha=alpha, gain=gain, clamp=clamp)
    return _recompute_grads("bias_act", args, mode, ("x",), grad_out)[0]


@bias_act_grad.register_fake
def _(grad_out, x, *rest):
    return torch.empty_like(x)


def _register_first_input_grad(op, grad_op):
    """Autograd for an op differentiated in its first input only (bias_act's x, upfirdn2d's x): its two tensor
    inputs are saved, the rest are constants handed back to `grad_op`."""
    def setup(ctx, inputs, output):
        ctx.save_for_backward(*inputs[:2])
        ctx.constants = inputs[2:]

    def backward(ctx, grad_out):
        gx = grad_op(grad_out, *ctx.saved_tensors, *ctx.constants)
        return (gx if ctx.needs_input_grad[0] else None,) + (None,) * (1 + len(ctx.constants))

    op.register_autograd(backward, setup_context=setup)


_register_first_input_grad(bias_act, bias_act_grad)


def _bias_act_vmap(target, info, in_dims, x, b, dim, *constants):
    """x's vmapped dimension becomes a new leading one (the bias's `dim` shifts by one): any `dim` works, 0
    included, which folding into dim 0 would break."""
    _vmap.check_shared(in_dims, (x, b), (0,), "bias_act")  # so x is the vmapped one
    return target(x.movedim(in_dims[0], 0), b, dim + 1, *constants), 0


_register_vmap(bias_act, _bias_act_vmap)


# ----------------------------------------------------------------------------------------------- upfirdn2d
def upfirdn2d(x: torch.Tensor, f: torch.Tensor, up: int, down: int, padding: list[int], flip_filter: bool,
              gain: float, mode: torch.dtype | None) -> torch.Tensor:
    with _selected(mode):
        return _cpu("upfirdn2d")(x, f, up=up, down=down, padding=padding, flip_filter=flip_filter, gain=gain)


def _upfirdn2d_fake(x, f, up, down, padding, flip_filter, gain, mode):
    from .upfirdn2d import output_size
    fh, fw = (f.shape[0], f.shape[0]) if f.ndim == 1 else f.shape
    oh, ow = output_size(x.shape[2], x.shape[3], fh, fw, up, down, padding)
    return x.new_empty((x.shape[0], x.shape[1], oh, ow), dtype=_storage_dtype(x, mode))


upfirdn2d = _custom_op(upfirdn2d, _upfirdn2d_fake)


@torch.library.custom_op("editgan_fast::upfirdn2d_grad", mutates_args=(), device_types="cpu")
def upfirdn2d_grad(grad_out: torch.Tensor, x: torch.Tensor, f: torch.Tensor, up: int, down: int,
                       padding: list[int], flip_filter: bool, gain: float, mode: torch.dtype | None) -> torch.Tensor:
    args = dict(x=x, f=f, up=up, down=down, padding=padding, flip_filter=flip_filter, gain=gain)
    return _recompute_grads("upfirdn2d", args, mode, ("x",), grad_out)[0]


@upfirdn2d_grad.register_fake
def _(grad_out, x, *rest):
    return torch.empty_like(x)


_register_first_input_grad(upfirdn2d, upfirdn2d_grad)
_register_folding_vmap(upfirdn2d, "upfirdn2d", sample=(0,))


# ------------------------------------------------------------------------------------------------ seg_head
_MEMBER_FIELDS = ("weights", "biases", "bn_mean", "bn_var", "bn_weight", "bn_bias")
_MEMBER_TENSORS = 14  # 3 weights, 3 biases, 2 x 4 BatchNorm vectors


def flatten_members(members) -> tuple[list[torch.Tensor], list[float]]:
    """PixelMLPs as the op takes them: their tensors in field order, and their BatchNorm eps."""
    return [t for m in members for f in _MEMBER_FIELDS for t in getattr(m, f)], [m.bn_eps for m in members]


_FIELD_SLICES = ((0, 3), (3, 3), (6, 2), (8, 2), (10, 2), (12, 2))  # (offset, count) of each field
# The op's flat member tensors -> their PixelMLPs, reused while the same tensors (identity and version) come back:
# the cpu backend folds and stacks an ensemble once per PixelMLP object.
_member_views = DerivedCache()
# Flat pixel indices -> their bool mask, the same object each call (an optimization's region is fixed), so the
# backends' caches of what they derive from a mask hit instead of reading it back to the host every step.
_region_masks = DerivedCache()


def _members(tensors, eps):
    def build():
        from .seg_head import PixelMLP
        return [PixelMLP(*(tuple(tensors[i + o:i + o + k]) for o, k in _FIELD_SLICES), bn_eps=e)
                for i, e in zip(range(0, len(tensors), _MEMBER_TENSORS), eps)]
    return _member_views.get(tensors, tuple(eps), build)


def region_mask(pixels, box, device):
    """The bool [h, w] mask of flat row-major pixel indices inside the crop `box`; made once per index tensor
    outside tracing (_region_masks)."""
    def build():
        y0, y1, x0, x1 = box
        mask = torch.zeros((y1 - y0) * (x1 - x0), dtype=torch.bool, device=device)
        return mask.index_fill_(0, pixels, True).view(y1 - y0, x1 - x0)
    if torch.compiler.is_compiling():
        return build()
    return _region_masks.get((pixels,), (tuple(box), torch.device(device)), build)


def _seg_args(features, members, bn_eps, out_size, crop, mode, pixels):
    from .seg_head import crop_box
    box = crop_box(tuple(out_size), None if crop is None else tuple(crop))
    region = None if pixels is None else region_mask(pixels, box, features[0].device)
    return dict(features=list(features), members=_members(list(members), bn_eps), out_size=tuple(out_size),
                crop=None if crop is None else tuple(crop), mode=mode, region=region)


def seg_head(features: list[torch.Tensor], members: list[torch.Tensor], bn_eps: list[float], out_size: list[int],
             crop: list[int] | None, mode: str, pixels: torch.Tensor | None,
             dtype_mode: torch.dtype | None) -> torch.Tensor:
    """`pixels`: sorted unique flat row-major indices into the (cropped) output, or None for all of it."""
    with _selected(dtype_mode):
        return _cpu("seg_head")(**_seg_args(features, members, bn_eps, out_size, crop, mode, pixels))


def _seg_head_fake(features, members, bn_eps, out_size, crop, mode, pixels, dtype_mode):
    from .seg_head import crop_box
    n, num_classes = features[0].shape[0], members[2].shape[0]  # the third Linear layer: [C, H2]
    if pixels is not None:
        return features[0].new_empty((n, num_classes, pixels.shape[0]))
    y0, y1, x0, x1 = crop_box(tuple(out_size), None if crop is None else tuple(crop))
    return features[0].new_empty((n, num_classes, y1 - y0, x1 - x0))


seg_head = _custom_op(seg_head, _seg_head_fake)


@torch.library.custom_op("editgan_fast::seg_head_grad", mutates_args=(), device_types="cpu")
def seg_head_grad(grad_out: torch.Tensor, features: list[torch.Tensor], members: list[torch.Tensor],
                      bn_eps: list[float], out_size: list[int], crop: list[int] | None, mode: str,
                      pixels: torch.Tensor | None, dtype_mode: torch.dtype | None) -> list[torch.Tensor]:
    args = _seg_args(features, members, bn_eps, out_size, crop, mode, pixels)
    return _recompute_grads("seg_head", args, dtype_mode, ("features",), grad_out)[0]


@seg_head_grad.register_fake
def _(grad_out, features, *rest):
    return [torch.empty_like(f) for f in features]


def _seg_setup(ctx, inputs, output):
    features, members, *constants = inputs
    pixels = constants[4]
    ctx.save_for_backward(*features, *members, *([] if pixels is None else [pixels]))
    ctx.counts = (len(features), len(members))
    ctx.constants = constants


def _seg_backward(ctx, grad_out):
    saved = list(ctx.saved_tensors)
    nf, nm = ctx.counts
    bn_eps, out_size, crop, mode, pixels, dtype_mode = ctx.constants
    pixels = saved[nf + nm] if pixels is not None else None
    grads = seg_head_grad(grad_out, saved[:nf], saved[nf:nf + nm], bn_eps, out_size, crop, mode, pixels,
                              dtype_mode)
    # A tensor list's gradient is a list (AOT autograd matches the structure); the members get none.
    return (grads, [None] * nm) + (None,) * len(ctx.constants)


seg_head.register_autograd(_seg_backward, setup_context=_seg_setup)
_register_folding_vmap(seg_head, "seg_head", sample=(0,))  # the features; the members and the pixel list are shared
