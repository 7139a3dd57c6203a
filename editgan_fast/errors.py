"""The package's one error hierarchy. The API raises these; the CLI and the service each map them once.

    EditGANFastError
    ├── FileFormatError      a file is missing, corrupt, of a foreign format, or holds tensors that do not fit
    ├── MismatchError        two valid things do not belong together (a vector of another generator, ...)
    ├── LimitExceeded        an input would need more than a documented resource limit allows
    ├── InputValueError      an argument's value is wrong (shape, dtype, class id, NaN, ...)
    └── BackendUnavailable   a requested backend is not built or cannot run on the given tensors

The first four are also ValueErrors (and BackendUnavailable a RuntimeError), so code written against the
built-in types keeps working.
"""


class EditGANFastError(Exception):
    """Base of every error the package raises on purpose."""


class FileFormatError(EditGANFastError, ValueError):
    """A file is missing, unreadable, of a foreign format, or its contents do not fit what it claims to be."""


class MismatchError(EditGANFastError, ValueError):
    """Two valid objects do not belong together (a vector or segmenter of another generator)."""


class LimitExceeded(EditGANFastError, ValueError):
    """An input would need more than a resource limit allows; the message names the limit and its override."""


class InputValueError(EditGANFastError, ValueError):
    """An argument has a wrong value, shape, dtype or type; the message names the argument."""


class BackendUnavailable(EditGANFastError, RuntimeError):
    """The requested backend is not built or cannot run on the given tensors."""


class NonFiniteLoss(InputValueError):
    """An optimization's loss became NaN or Inf (e.g. an enormous vector scale); `best` holds the best w+ seen
    before it, `step` the step at which it was detected."""

    def __init__(self, message, best=None, step=None):
        super().__init__(message)
        self.best, self.step = best, step


class OptimizationInterrupted(KeyboardInterrupt):
    """Ctrl-C during an optimization: still a KeyboardInterrupt, carrying the best w+ seen so far (`best`) and
    the step reached, so a caller can save it before exiting."""

    def __init__(self, label, best, step):
        super().__init__(f"{label} interrupted at step {step}")
        self.best, self.step = best, step
