"""The editing engine: Editor, Latent, Result, editing vectors, and the embedded default model."""
from .default import default_editor, random_editor
from .editor import Editor, Latent, Result
from .vectors import EditVector, VectorFileError, VectorLibrary, VectorMismatchError

__all__ = ["Editor", "Latent", "Result", "EditVector", "VectorLibrary", "VectorFileError", "VectorMismatchError",
           "default_editor", "random_editor"]
