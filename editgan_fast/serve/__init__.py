"""The live editing service: `create_app(editor)` (FastAPI), run by `editgan-fast serve`.

The names below resolve on first use, so the parts that need no web stack (the batching renderer, the
in-process load) import where FastAPI is not installed, e.g. on the GPU check's machine."""
import importlib

_HOMES = {"create_app": ".app", "Limits": ".limits", "BatchingRenderer": ".renderer"}

__all__ = list(_HOMES)


def __getattr__(name):
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_HOMES[name], __name__), name)
