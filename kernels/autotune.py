"""Choose a kernel's launch configuration by timing the candidates on the device, once per key.

A `Tuner` maps a key (a kernel's shape class, dtype, variant flags, device) to the fastest of its candidate
configurations, measured with `triton.testing.do_bench` the first time the key is seen, then reused. Timing
synchronizes with the device (do_bench waits for its events), so the first call for a key is not real-time and
not capturable; every later call is a dict lookup. Nothing is timed, and the `default` is used without being
remembered, when:
- tuning is off (`EDITGAN_FAST_AUTOTUNE=0`) or the kernels run in Triton's interpreter (no device to time);
- the current CUDA stream is being captured into a graph (timing would break the capture): warm up, i.e. run
  each shape once, before capturing.
"""
import os

import torch

from . import INTERPRET


def enabled():
    return not INTERPRET and os.environ.get("EDITGAN_FAST_AUTOTUNE", "1") != "0"


def _do_bench(fn):
    import triton.testing
    # Short runs: the candidates differ by tens of percent, and ~40 keys x ~5 candidates are timed at warm-up.
    return triton.testing.do_bench(fn, warmup=2, rep=10, return_mode="median")


class Tuner:
    """Per-key fastest configuration. `bench(fn) -> ms` is do_bench unless given (the tests fake it)."""

    def __init__(self, bench=None):
        self._bench = bench or _do_bench
        self._chosen = {}

    def choose(self, key, candidates, run, default):
        """The configuration for `key`: `run(config)` launches the kernel with it (on scratch outputs)."""
        hit = self._chosen.get(key)
        if hit is not None:
            return hit
        if not enabled() or len(candidates) < 2 or (torch.cuda.is_available() and
                                                    torch.cuda.is_current_stream_capturing()):
            return default
        from triton.runtime.errors import OutOfResources
        times, refused = {}, {}
        for config in candidates:
            try:
                times[config] = self._bench(lambda: run(config))
            except OutOfResources as e:  # e.g. a smaller shared memory than the capability's flagship has
                refused[config] = str(e)
        if not times:
            raise RuntimeError(f"no candidate configuration runs for {key}: {refused}")
        best = min(times, key=times.get)
        self._chosen[key] = best
        return best

    def chosen(self):
        """{key: configuration} chosen so far (for reports)."""
        return dict(self._chosen)
