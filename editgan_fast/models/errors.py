"""Errors of the model loaders."""
from ..errors import FileFormatError


class CheckpointError(FileFormatError):
    """A checkpoint file is missing, corrupt, of a foreign format, or does not fit the model."""
