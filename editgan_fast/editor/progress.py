"""Progress of optimizing calls (embed, learn_vector, refine) through tqdm: rate, ETA and the current loss.

Whether to draw is decided once, by the caller: `enabled(None)` is tqdm's own rule (only when stderr is a
terminal), True draws even into a pipe or log file. The editor creates no bar when it is disabled, so the loss
terms are not read back to the host each step for nothing.
"""
from __future__ import annotations

import sys

from tqdm.auto import tqdm


def enabled(progress: bool | None) -> bool:
    """progress=None: draw when stderr is a terminal; True/False: as asked."""
    return sys.stderr.isatty() if progress is None else bool(progress)


class ProgressBar:
    """`bar.update(step, terms)` moves the bar to `step` of `total` and shows the loss `terms['total']`."""

    def __init__(self, label: str, total: int, stream=None):
        self._bar = tqdm(total=max(int(total), 1), desc=label, unit="step", file=stream or sys.stderr,
                         dynamic_ncols=True)

    def update(self, step: int, terms: dict[str, float] | None = None) -> None:
        if terms and "total" in terms:
            self._bar.set_postfix(loss=f"{terms['total']:.4g}", refresh=False)
        self._bar.update(min(step, self._bar.total) - self._bar.n)

    def close(self) -> None:
        self._bar.close()
