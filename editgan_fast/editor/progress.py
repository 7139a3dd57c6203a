"""A plain progress bar on stderr for optimizing calls (no tqdm dependency)."""
from __future__ import annotations

import sys
import time


class ProgressBar:
    """`bar.update(step, terms)` redraws one line: label, bar, step/total, elapsed time and the loss."""

    def __init__(self, label: str, total: int, stream=None, width: int = 24):
        self.label, self.total, self.width = label, max(int(total), 1), width
        self.stream = stream or sys.stderr
        self.start = time.perf_counter()

    def update(self, step: int, terms: dict[str, float] | None = None) -> None:
        done = min(step, self.total)
        filled = round(self.width * done / self.total)
        loss = f" loss {terms['total']:.4g}" if terms and "total" in terms else ""
        self.stream.write(f"\r{self.label} [{'#' * filled}{'.' * (self.width - filled)}] {done}/{self.total} "
                          f"{time.perf_counter() - self.start:5.1f}s{loss}")
        self.stream.flush()

    def close(self) -> None:
        self.stream.write("\n")
        self.stream.flush()
