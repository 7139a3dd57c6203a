"""Resource limits, checked before anything is allocated for an input.

A few hundred bytes of input can ask for gigabytes: an image header claiming 100k x 100k pixels, a `.npy`
header claiming any shape, a zip member that inflates 1000-fold, a list of thousands of scales. Each limit has
a documented default and two overrides, the Python setting winning over the environment:

    limit                default        environment variable                    meaning
    image_pixels         40,000,000     EDITGAN_FAST_MAX_IMAGE_PIXELS           decoded pixels of one input image
    array_bytes          256 MiB        EDITGAN_FAST_MAX_ARRAY_BYTES            one array read from .npy/.npz/
                                                                                .safetensors (from its header)
    vectors_per_library  4,096          EDITGAN_FAST_MAX_VECTORS_PER_LIBRARY    vectors in one library file
    scales_per_call      1,024          EDITGAN_FAST_MAX_SCALES_PER_CALL        results of one apply call
    synthesis_batch      16             EDITGAN_FAST_SYNTHESIS_BATCH            results synthesized at once (a
                                                                                longer batch runs in chunks)

    editgan_fast.limits.set(image_pixels=10**8)          # for the rest of the process
    with editgan_fast.limits.override(array_bytes=2**30): # for a block
        ...
"""
from __future__ import annotations

import contextlib
import os

from .errors import InputValueError, LimitExceeded

DEFAULTS = {
    "image_pixels": 40_000_000,
    "array_bytes": 256 * 2 ** 20,
    "vectors_per_library": 4096,
    "scales_per_call": 1024,
    "synthesis_batch": 16,
}
ENV = {
    "image_pixels": "EDITGAN_FAST_MAX_IMAGE_PIXELS",
    "array_bytes": "EDITGAN_FAST_MAX_ARRAY_BYTES",
    "vectors_per_library": "EDITGAN_FAST_MAX_VECTORS_PER_LIBRARY",
    "scales_per_call": "EDITGAN_FAST_MAX_SCALES_PER_CALL",
    "synthesis_batch": "EDITGAN_FAST_SYNTHESIS_BATCH",
}
_settings: dict[str, int] = {}


def _positive_int(name: str, value, source: str) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = 0
    if isinstance(value, bool) or number < 1 or (isinstance(value, float) and value != number):
        raise InputValueError(f"limit {name} must be a positive integer, got {value!r} (from {source})")
    return number


def _known(name: str) -> None:
    if name not in DEFAULTS:
        raise InputValueError(f"unknown limit {name!r}; the limits are {sorted(DEFAULTS)}")


def get(name: str) -> int:
    """The limit's value: the Python setting, else the environment variable, else the default."""
    _known(name)
    if name in _settings:
        return _settings[name]
    env = os.environ.get(ENV[name])
    if env is not None and env.strip():
        return _positive_int(name, env.strip(), f"the environment variable {ENV[name]}")
    return DEFAULTS[name]


def set(**values) -> None:  # noqa: A001 - the module is used as `limits.set(...)`
    """Set limits for the rest of the process (`None` returns a limit to its environment/default value)."""
    for name, value in values.items():
        _known(name)
        if value is None:
            _settings.pop(name, None)
        else:
            _settings[name] = _positive_int(name, value, "editgan_fast.limits.set")


@contextlib.contextmanager
def override(**values):
    """Set limits for the duration of a `with` block."""
    saved = dict(_settings)
    try:
        set(**values)
        yield
    finally:
        _settings.clear()
        _settings.update(saved)


def check(name: str, amount: int, what: str) -> None:
    """Raise LimitExceeded, naming the limit and how to raise it, if `amount` exceeds limit `name`."""
    limit = get(name)
    if amount > limit:
        raise LimitExceeded(f"{what}: {amount:,} exceeds the limit {name} = {limit:,} (raise it with the "
                            f"environment variable {ENV[name]} or editgan_fast.limits.set({name}=...))")
