"""One redrawn line on stderr for batch jobs: shards and samples done, elapsed time, samples per second."""
from __future__ import annotations

import sys
import time


class Throughput:
    def __init__(self, total_shards: int, enabled: bool = True, stream=None):
        self.total, self.enabled = total_shards, enabled
        self.stream = stream or sys.stderr
        self.start = time.perf_counter()
        self.shards = self.samples = 0

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    @property
    def rate(self) -> float:
        return self.samples / max(self.elapsed, 1e-9)

    def add(self, samples: int) -> None:
        self.shards += 1
        self.samples += samples
        if self.enabled:
            self.stream.write(f"\rbatch: {self.shards}/{self.total} shards, {self.samples} samples, "
                              f"{self.elapsed:.1f}s, {self.rate:.1f} samples/s")
            self.stream.flush()

    def close(self) -> dict:
        if self.enabled and self.shards:
            self.stream.write("\n")
        return {"rendered_shards": self.shards, "rendered_samples": self.samples,
                "seconds": round(self.elapsed, 3), "samples_per_s": round(self.rate, 2)}
