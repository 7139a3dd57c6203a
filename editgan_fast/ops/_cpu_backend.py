"""The `cpu` backend: native C++ kernels from editgan_fast._C (csrc/cpu), reached as torch.ops.editgan_fast.*.

Each group of kernels has a Python module beside this one that wraps its operators in autograd Functions with
the reference's exact signature; this module collects them.
"""
import ctypes
import importlib
import os
import platform

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


# glibc serves blocks above a dynamic threshold (a few MB) with fresh mmaps and returns freed heap tops to the
# kernel: every batched synthesis then page-faults and zeroes its larger layer outputs anew (the oneDNN/ATen
# ones, which the native output pool does not see). Measured, bundled model, batch 16, 1 thread: synthesis 6.2-7.5
# -> 4.9-5.0 ms CPU per row; batch 1 and the seg head unchanged within noise. Blocks up to MMAP_BYTES stay in
# the heap and up to TRIM_BYTES of free heap is kept. Process-wide, set once when the backend loads; a
# MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_ in the environment wins (glibc reads them itself).
MMAP_BYTES, TRIM_BYTES = 64 * 2**20, 256 * 2**20
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters


def _keep_freed_memory():
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return
    mallopt = ctypes.CDLL(None).mallopt
    if "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        mallopt(_M_MMAP_THRESHOLD, MMAP_BYTES)
    if "MALLOC_TRIM_THRESHOLD_" not in os.environ:
        mallopt(_M_TRIM_THRESHOLD, TRIM_BYTES)


OPS = {}
if _native_error() is None:
    _keep_freed_memory()
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
