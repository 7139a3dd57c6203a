"""editgan-fast: fast EditGAN-style semantic image editing."""
from .backend import BackendUnavailable, set_backend, use_backend

__all__ = ["BackendUnavailable", "set_backend", "use_backend"]
