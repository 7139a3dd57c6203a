"""Benchmark harness: times reference-vs-fast cases and prints one table next to this machine's matmul rates.

Case format (what every bench/cases_*.py module exports as `CASES`, a list):
    (name, backend, dtype, make, macs)
- name: the row label. Rows with the same name are one comparison: the `reference` backend's row is the
  baseline, every other backend's row is a fast row compared with it. A fast row whose name has no reference
  row of its own (e.g. "... bf16") is compared with the reference row of the same name with "bf16" replaced
  by "fp32": the bf16 targets are stated against the fp32 reference.
- backend: a backend name ("reference", "cpu", ...); dtype: its compute dtype (None: the inputs' own), only
  shown in the table (`make` selects the backend itself, so a case can time any code it likes).
- make: zero-argument factory that builds the inputs (untimed) and returns a zero-argument callable that runs
  the work once (timed).
- macs: multiply-accumulates of one run by the case's nominal algorithm, or None. GFLOP/s = 2 * macs / time,
  so for a fast kernel that skips work (polyphase, region-restricted) it is an effective rate.

Timing: `warmup` untimed runs, then up to `repeats` timed runs, stopping early once `budget` seconds are spent
(at least one timed run; a warmup run longer than the budget is itself the measurement: the reference rows of
the big cases take a minute each); the median is reported.
The fp32 and bf16 matmul rates are measured in the same process, right before the cases, so the "% of matmul"
columns compare numbers taken under the same load.
"""
from __future__ import annotations

import gc
import statistics
import time
from typing import Callable, NamedTuple

import torch


class Case(NamedTuple):
    name: str
    backend: str
    dtype: torch.dtype | None
    make: Callable[[], Callable[[], object]]
    macs: float | None


class Result(NamedTuple):
    case: Case
    seconds: float
    runs: int


def time_callable(fn, warmup=1, repeats=5, budget=10.0):
    """Median wall time of fn() in seconds, and how many timed runs it took. A warmup run longer than the whole
    budget counts as the only measurement: one-time costs (caches of derived weights) are noise next to it,
    and a second minute-long run of a reference case buys nothing."""
    for _ in range(warmup):
        t0 = time.perf_counter()
        fn()
        if time.perf_counter() - t0 > budget:
            return time.perf_counter() - t0, 1
    times = []
    start = time.perf_counter()
    while len(times) < repeats and (not times or time.perf_counter() - start < budget):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), len(times)


def matmul_gflops(dtype=torch.float32, target_seconds=0.05, max_n=2048):
    """Square-matmul rate in GFLOP/s. The size grows until one product takes `target_seconds`, so a slow dtype
    (bf16 without native support runs at well under 1 GFLOP/s on AVX2 CPUs) is measured at a small size
    instead of taking minutes."""
    n = 64
    while True:
        a = torch.randn(n, n).to(dtype)
        b = torch.randn(n, n).to(dtype)
        seconds, _ = time_callable(lambda: torch.mm(a, b), warmup=1, repeats=5, budget=2.0)
        if seconds >= target_seconds or n >= max_n:
            return 2 * n ** 3 / seconds / 1e9
        n *= 2


def cpu_line():
    """The CPU the table was measured on: model, ISA flags, and the cpu backend's branches that ran."""
    from editgan_fast import backend
    if not backend.available("cpu"):
        return f"cpu: {torch.backends.cpu.get_cpu_capability()} (native cpu backend not built)"
    from editgan_fast.ops import _cpu_isa
    d = _cpu_isa.describe()
    return (f"cpu: {d['cpu']}; flags {' '.join(d['cpu_flags']) or '-'}; native loops {d['isa']['running']}, "
            f"bf16 mode products {d['bf16_products']['running']} (oneDNN native bf16: {d['onednn_native_bf16']})")


def _dtype_label(dtype):
    return {None: "", torch.float32: "fp32", torch.bfloat16: "bf16", torch.float64: "fp64"}.get(dtype, str(dtype))


def _backend_label(case):
    return f"{case.backend} {_dtype_label(case.dtype)}".strip()


def run_cases(cases, warmup=1, repeats=5, budget=10.0, log=print):
    """Time every case (each built just before it runs, freed right after). Returns [Result]."""
    results = []
    for raw in cases:
        case = Case(*raw)
        fn = case.make()
        seconds, runs = time_callable(fn, warmup, repeats, budget)
        del fn
        gc.collect()
        log(f"  {case.name} [{_backend_label(case)}]: {seconds * 1e3:.1f} ms ({runs} runs)")
        results.append(Result(case, seconds, runs))
    return results


def _reference_for(name, references):
    if name in references:
        return references[name]
    return references.get(name.replace("bf16", "fp32"))


def format_table(results, fp32_rate, bf16_rate):
    """One row per fast result: case, backend, reference ms, fast ms, ratio, GFLOP/s, % of fp32/bf16 matmul."""
    references = {r.case.name: r for r in results if r.case.backend == "reference"}
    header = ("case", "backend", "ref ms", "fast ms", "ratio", "GFLOP/s", "% fp32 mm", "% bf16 mm")
    rows = []
    for r in results:
        if r.case.backend == "reference":
            continue
        ref = _reference_for(r.case.name, references)
        gflops = 2 * r.case.macs / r.seconds / 1e9 if r.case.macs else None
        rows.append((
            r.case.name,
            _backend_label(r.case),
            f"{ref.seconds * 1e3:.1f}" if ref else "-",
            f"{r.seconds * 1e3:.1f}",
            f"{ref.seconds / r.seconds:.2f}x" if ref else "-",
            f"{gflops:.1f}" if gflops else "-",
            f"{100 * gflops / fp32_rate:.0f}%" if gflops else "-",
            f"{100 * gflops / bf16_rate:.0f}%" if gflops else "-",
        ))
    # Reference rows nobody was compared with still get a line, so no measurement is silently dropped.
    compared = {_reference_for(r.case.name, references) for r in results if r.case.backend != "reference"}
    for ref in references.values():
        if ref not in compared:
            rows.append((ref.case.name, "reference", f"{ref.seconds * 1e3:.1f}", "-", "-", "-", "-", "-"))
    widths = [max(len(str(row[i])) for row in [header] + rows) for i in range(len(header))]
    line = lambda row: "  ".join(str(v).ljust(w) if i < 2 else str(v).rjust(w)
                                 for i, (v, w) in enumerate(zip(row, widths)))
    out = [cpu_line(), f"matmul rate (same run): fp32 {fp32_rate:.1f} GFLOP/s, bf16 {bf16_rate:.2f} GFLOP/s, "
           f"{torch.get_num_threads()} threads", line(header), line(["-" * w for w in widths])]
    return "\n".join(out + [line(row) for row in rows])
