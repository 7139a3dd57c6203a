"""editgan-fast: fast EditGAN-style semantic image editing.

The public names load lazily, so `import editgan_fast` stays cheap and a missing optional piece (the native
extension, Triton) never breaks the import.
"""
import importlib

__version__ = "0.1.0"

from .backend import BackendUnavailable, set_backend, use_backend

_LAZY = {
    "Generator": "editgan_fast.models.generator",
    "load_generator": "editgan_fast.models.loaders",
    "CheckpointError": "editgan_fast.models.errors",
    "Segmenter": "editgan_fast.models.segmenter",
    "load_segmenter": "editgan_fast.models.segmenter",
    "LPIPS": "editgan_fast.models.lpips",
    "load_encoder": "editgan_fast.models.encoder",
    "Editor": "editgan_fast.editor",
    "Latent": "editgan_fast.editor",
    "Result": "editgan_fast.editor",
    "EditVector": "editgan_fast.editor",
    "VectorLibrary": "editgan_fast.editor",
    "default_editor": "editgan_fast.editor",
}

__all__ = ["BackendUnavailable", "set_backend", "use_backend", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'editgan_fast' has no attribute {name!r}")
