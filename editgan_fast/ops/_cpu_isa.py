"""Which instruction-set and precision branches the cpu backend runs: detected by CPU features, or forced.

Two process-wide switches, each an environment variable (read at import) and a Python setting:

- `EDITGAN_FAST_CPU_ISA` = auto | avx512 | avx2 | portable (`set_cpu_isa`): the build of the native kernels'
  hand-written loops (FIR, epilogue, Winograd transforms, seg head gathers; csrc/include/editgan/isa.h).
  auto: the widest the CPU executes. A branch the CPU cannot execute is refused (BackendUnavailable): its
  instructions would fault. So an AVX-512 machine tests all three builds, an AVX2 machine two.
- `EDITGAN_FAST_BF16_PRODUCTS` = auto | native | fp32 (`set_bf16_products`): in the bf16 mode
  (`use_backend("cpu", dtype=torch.bfloat16)`), whether the heavy products (the generator's convolutions, the
  seg head's projections) run in bf16 with fp32 accumulation (oneDNN) or in fp32 on bf16-stored values.
  auto: native where oneDNN has native bf16 (AVX512-BF16 or AMX), fp32 elsewhere: oneDNN emulates bf16 on AVX2,
  correctly but ~500x slower than fp32. Both branches run on any CPU (the tests force each at small shapes).

`cpu_settings(isa=..., bf16_products=...)` sets both for a `with` block (tests); `describe()` reports what is
detected and what runs (`editgan-fast info`).
"""
from __future__ import annotations

import contextlib
import functools
import os
import platform

import torch

from ..errors import BackendUnavailable, InputValueError

ISAS = ("auto", "avx512", "avx2", "portable")
BF16_PRODUCTS = ("auto", "native", "fp32")
_ISA_ENV, _BF16_ENV = "EDITGAN_FAST_CPU_ISA", "EDITGAN_FAST_BF16_PRODUCTS"
_isa_setting, _bf16_products = "auto", "auto"


def _choice(value: str, choices, what: str) -> str:
    value = value.strip().lower()
    if value not in choices:
        raise InputValueError(f"{what} must be one of {', '.join(choices)}, got {value!r}")
    return value


def _cpuinfo(field: str) -> str | None:
    """The first `field` line of /proc/cpuinfo (None where there is none to read)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.split(":", 1)[0].strip() == field:
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


@functools.cache
def cpu_flags() -> frozenset:
    """The CPU's feature flags as /proc/cpuinfo names them (empty where there is none to read)."""
    return frozenset((_cpuinfo("flags") or "").split())


@functools.cache
def cpu_model() -> str:
    return _cpuinfo("model name") or platform.processor() or platform.machine()


def _native():
    return torch.ops.editgan_fast


def set_cpu_isa(name: str) -> str:
    """Force the native loops' ISA ('auto': the widest the CPU runs); returns the branch now active."""
    global _isa_setting
    name = _choice(name, ISAS, _ISA_ENV)
    try:
        running = _native().set_cpu_isa(name)
    except RuntimeError as e:
        raise BackendUnavailable(f"{_ISA_ENV}={name}: {str(e).splitlines()[0]}") from None
    _isa_setting = name
    return running


def cpu_isa() -> str:
    """The ISA branch the native loops run now."""
    return _native().cpu_isa_info()[1]


def best_cpu_isa() -> str:
    return _native().cpu_isa_info()[0]


@functools.cache
def onednn_native_bf16() -> bool:
    """oneDNN runs bf16 products in hardware here (AVX512-BF16 or AMX)."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def set_bf16_products(name: str) -> None:
    """Force the bf16 mode's products to 'native' bf16 or 'fp32'; 'auto' picks by CPU."""
    global _bf16_products
    _bf16_products = _choice(name, BF16_PRODUCTS, _BF16_ENV)


def bf16_products() -> str:
    """'native' or 'fp32': how the bf16 mode runs its products now."""
    if _bf16_products == "auto":
        return "native" if onednn_native_bf16() else "fp32"
    return _bf16_products


def native_bf16_products() -> bool:
    return bf16_products() == "native"


@contextlib.contextmanager
def cpu_settings(isa: str | None = None, bf16_products: str | None = None):
    """Both switches for a `with` block (process-wide while it lasts), then back to what they were."""
    saved_isa, saved_bf16 = _isa_setting, _bf16_products
    try:
        if isa is not None:
            set_cpu_isa(isa)
        if bf16_products is not None:
            set_bf16_products(bf16_products)
        yield
    finally:
        set_cpu_isa(saved_isa)
        set_bf16_products(saved_bf16)


def describe() -> dict:
    """What is detected and which branches run (for `editgan-fast info`)."""
    flags = cpu_flags()
    wanted = ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_bf16", "amx_bf16", "amx_tile")
    return {"cpu": cpu_model(), "cpu_flags": [f for f in wanted if f in flags],
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "onednn_native_bf16": onednn_native_bf16(),
            "isa": {"setting": _isa_setting, "best": best_cpu_isa(), "running": cpu_isa()},
            "bf16_products": {"setting": _bf16_products, "running": bf16_products()}}


def apply_environment() -> None:
    """Read both environment variables (called once when the cpu backend loads)."""
    set_bf16_products(os.environ.get(_BF16_ENV, "auto"))
    set_cpu_isa(os.environ.get(_ISA_ENV, "auto"))
