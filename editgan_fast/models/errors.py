"""Errors of the model loaders."""


class CheckpointError(ValueError):
    """A checkpoint file is missing, corrupt, of a foreign format, or does not fit the model."""
