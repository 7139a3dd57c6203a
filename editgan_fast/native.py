"""Which torch the native extensions were built against, and a clear reason when the running torch differs.

A C++ extension of torch is tied to the torch release (major.minor) it was compiled with: the C++ ABI changes
between releases, so a mismatched `_C` fails to import with an undefined symbol, or worse, loads and misbehaves.
setup.py records the version it built with in `editgan_fast/_build_info.py`; the backends ask `torch_mismatch()`
before importing an extension.
"""
from __future__ import annotations

import torch


def built_with_torch() -> str | None:
    """The torch version the extensions were built against, or None when unrecorded (a build before this
    record existed, or no build at all)."""
    try:
        from ._build_info import TORCH_VERSION
    except ImportError:
        return None
    return TORCH_VERSION


def release(version: str) -> str:
    """'2.13.0+cpu' -> '2.13': the part of a torch version that fixes the C++ ABI."""
    return ".".join(version.split("+")[0].split(".")[:2])


def torch_mismatch(installed: str | None = None) -> str | None:
    """Why the native extensions cannot be used with the installed torch, or None when they can."""
    built = built_with_torch()
    installed = installed or torch.__version__
    if built is None or release(built) == release(installed):
        return None
    return (f"editgan-fast's native extensions were built against torch {built}, but torch {installed} is "
            f"installed: install torch {release(built)}.*, or rebuild editgan-fast for this torch (`make setup` "
            f"in a checkout, or `pip install --no-build-isolation --force-reinstall editgan-fast`)")
