"""Backend dispatch: which implementation of each operator runs.

Every operator in `editgan_fast.ops` has a pure-PyTorch `reference` implementation (the oracle) and may have
fast ones in the `cpu` (native C++), `triton` and `cuda` backends. All implementations of one operator share
its exact signature, so the public op function just asks `resolve(op, tensor)` which one to call.

Selection, in this order:
- `use_backend(name, dtype=None)` (a context manager, thread- and task-local) or `set_backend(name, dtype=None)`;
- otherwise "auto": `cpu` for CPU tensors when the native extension is built; for CUDA tensors, per operator,
  the backend `ops/gpu_choice.json` names (the faster one in `make gpu-check`'s benchmark) when available, else
  `triton`, else `cuda`; else `reference` (with a warning, once per device type, saying why and how to fix it).
A backend that is not built, or that cannot run on the tensors' device, is a clear `BackendUnavailable`
error when asked for by name. A backend that does not implement one particular operator hands it to the next
in its chain (cuda -> triton -> reference, triton -> reference, cpu -> reference).

`dtype` selects the compute/storage precision fast backends use (torch.float32 by default, torch.bfloat16 for
the bf16 mode with fp32 accumulation). The reference ignores it and computes in the inputs' dtype.
"""
from __future__ import annotations

import contextlib
import contextvars
import importlib
import json
import os
import warnings
from dataclasses import dataclass

import torch

from .errors import BackendUnavailable

BACKENDS = ("reference", "cpu", "triton", "cuda")
_MODULES = {
    "reference": None,
    "cpu": "editgan_fast.ops._cpu_backend",
    "triton": "editgan_fast.ops._triton_backend",
    "cuda": "editgan_fast.ops._cuda_backend",
}
_FALLBACK = {"cuda": "triton", "triton": "reference", "cpu": "reference", "reference": None}
_DTYPES = (None, torch.float32, torch.bfloat16, torch.float16)


@dataclass(frozen=True)
class _Selection:
    name: str  # "auto" or one of BACKENDS
    dtype: torch.dtype | None


_selection: contextvars.ContextVar[_Selection] = contextvars.ContextVar(
    "editgan_fast_backend", default=_Selection("auto", None))
_global_default = _Selection("auto", None)
_reference_ops: dict[str, object] = {}


def register_reference(op: str, fn):
    """Called once by each op module for its reference implementation."""
    _reference_ops[op] = fn
    return fn


def _check(name: str, dtype) -> _Selection:
    if name != "auto" and name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(('auto',) + BACKENDS)}")
    if dtype not in _DTYPES:
        raise ValueError(f"backend dtype must be torch.float32, torch.bfloat16 or torch.float16, got {dtype}")
    return _Selection(name, dtype)


def set_backend(name: str, dtype: torch.dtype | None = None) -> None:
    """Select the backend (and compute dtype) for this thread/task and new ones; 'auto' restores the default."""
    global _global_default
    sel = _check(name, dtype)
    if name != "auto":
        _load(name)  # fail now, not at the first op, if it is not built
    _global_default = sel
    _selection.set(sel)


@contextlib.contextmanager
def use_backend(name: str, dtype: torch.dtype | None = None):
    """`with use_backend("cpu", dtype=torch.bfloat16): ...` runs every op inside on that backend."""
    sel = _check(name, dtype)
    if name != "auto":
        _load(name)
    token = _selection.set(sel)
    try:
        yield
    finally:
        _selection.reset(token)


def current() -> _Selection:
    return _Selection(*_current())


def _current() -> tuple:
    """(name, dtype) of the selection. torch.compile cannot trace a ContextVar read, so a compiled graph bakes in
    the selection made when it was traced (compile under the `use_backend` you will run it with)."""
    sel = _selection.get()
    # A thread that never called use/set_backend sees the process-wide default.
    sel = sel if sel != _Selection("auto", None) else _global_default
    return sel.name, sel.dtype


# What torch.compiler.assume_constant_result(_current) does, without its import of torch._dynamo (~1.7 s added to
# every process start: each CLI command, each Ray worker). tests/test_compile.py's zero-graph-break traces fail if
# a torch release stops honouring the mark.
_current._dynamo_marked_constant = True


def compute_dtype(default: torch.dtype = torch.float32) -> torch.dtype:
    """The dtype fast backends should compute in (the bf16/fp16 mode), or `default`."""
    return current().dtype or default


_loaded: dict[str, object] = {}
_failed: dict[str, str] = {}


def _load(name: str):
    """Import a fast backend module; raise BackendUnavailable with its reason when it cannot load."""
    if name == "reference":
        return None
    if name in _failed:  # asked per op under "auto": try once, not on every call
        raise BackendUnavailable(_failed[name])
    if name not in _loaded:
        try:
            module = importlib.import_module(_MODULES[name])
            reason = module.unavailable_reason()
        except (ImportError, BackendUnavailable) as e:  # not built / built for another torch; a forced ISA
            reason = str(e)
        if reason:
            _failed[name] = f"backend {name!r} is not available: {reason}"
            raise BackendUnavailable(_failed[name])
        _loaded[name] = module
    return _loaded[name]


def unavailable_reason(name: str) -> str | None:
    """Why backend `name` cannot load, or None when it can."""
    try:
        _load(name)
        return None
    except BackendUnavailable as e:
        return str(e)


def available(name: str) -> bool:
    return unavailable_reason(name) is None


_FAST_FOR = {"cpu": ("cpu",), "cuda": ("triton", "cuda")}
_warned_slow: set[str] = set()


_gpu_choice: dict[str, str] | None = None


def gpu_choice() -> dict[str, str]:
    """{op: backend} for CUDA tensors under "auto", from ops/gpu_choice.json (read once)."""
    global _gpu_choice
    if _gpu_choice is None:
        path = os.path.join(os.path.dirname(__file__), "ops", "gpu_choice.json")
        with open(path) as f:
            _gpu_choice = dict(json.load(f)["ops"])
    return _gpu_choice


def _auto_for(device: torch.device, op: str | None = None) -> str:
    fast = _FAST_FOR.get(device.type, ())
    preferred = gpu_choice().get(op) if device.type == "cuda" and op is not None else None
    for name in ((preferred,) if preferred else ()) + fast:
        if available(name):
            return name
    if fast and device.type not in _warned_slow:
        # Never a silent slow path: say once why the fast backends are off and how to get them back.
        _warned_slow.add(device.type)
        reasons = "; ".join(unavailable_reason(name) for name in fast)
        warnings.warn(f"editgan_fast: running the slow reference backend on {device.type}: {reasons}",
                      RuntimeWarning, stacklevel=3)
    return "reference"


def backend_name_for(tensor: torch.Tensor, op: str | None = None) -> str:
    """The backend `op` (any op if None) on `tensor` would start from under the current selection."""
    name = current().name
    return _auto_for(tensor.device, op) if name == "auto" else name


def resolve_name(op: str, tensor: torch.Tensor) -> str:
    """The backend that runs `op` on `tensor` (its device decides what is usable), after fallbacks."""
    name = backend_name_for(tensor, op)
    while name != "reference":
        module = _load(name)
        if tensor.device.type not in module.DEVICES:
            raise BackendUnavailable(
                f"backend {name!r} runs on {'/'.join(sorted(module.DEVICES))} tensors, got a tensor on "
                f"{tensor.device}; move the tensors or choose another backend")
        if op in module.OPS:
            return name
        name = _FALLBACK[name]
    return name


def implementation(op: str, name: str):
    """Backend `name`'s implementation of `op` (a name from resolve_name)."""
    return _reference_ops[op] if name == "reference" else _load(name).OPS[op]


def resolve(op: str, tensor: torch.Tensor):
    """The implementation of `op` to run on `tensor`."""
    return implementation(op, resolve_name(op, tensor))
