"""The live editing service: `create_app(editor)` (FastAPI), run by `editgan-fast serve`."""
from .app import create_app
from .limits import Limits
from .renderer import BatchingRenderer

__all__ = ["create_app", "Limits", "BatchingRenderer"]
