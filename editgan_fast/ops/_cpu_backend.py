"""The `cpu` backend: native C++ kernels from editgan_fast._C (csrc/cpu), reached as torch.ops.editgan_fast.*.

Each group of kernels has a Python module beside this one that wraps its operators in autograd Functions with
the reference's exact signature; this module collects them.
"""
import importlib

from .. import native


DEVICES = {"cpu"}
_GROUPS = ("_cpu_layers", "_cpu_seg")  # modules of editgan_fast.ops, each exporting OPS: {op name: function}


def _native_error():
    mismatch = native.torch_mismatch()  # checked first: importing a binary of another ABI may crash
    if mismatch:
        return mismatch
    try:
        importlib.import_module("editgan_fast._C")
    except ImportError as e:
        return f"the native extension is not built ({e}); run `make setup`"
    return None


def unavailable_reason():
    return _native_error()


OPS = {}
if _native_error() is None:
    from . import _cpu_isa, _native_ops  # noqa: F401 (_native_ops registers fake kernels and vmap rules)
    _cpu_isa.apply_environment()  # EDITGAN_FAST_CPU_ISA / EDITGAN_FAST_BF16_PRODUCTS; a bad value is an error here
    for _name in _GROUPS:
        try:
            _module = importlib.import_module(f"editgan_fast.ops.{_name}")
        except ModuleNotFoundError as e:
            if e.name != f"editgan_fast.ops.{_name}":
                raise
            continue
        OPS.update(_module.OPS)
