"""`make bench`: discover bench/cases_*.py, time every case, print one table (format: bench/harness.py).

    python bench/run.py [-k SUBSTRING ...] [--repeats N] [--budget SECONDS] [--threads N]

-k keeps only cases whose name contains one of the substrings (a reference row is kept with its fast rows, as
the filter is on the name). Defaults: 2 threads, batch 1 (the cases' own), 5 timed runs or 10 s per case.
"""
from __future__ import annotations

import argparse
import glob
import importlib.util
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from harness import format_table, matmul_gflops, run_cases  # noqa: E402


def discover_cases():
    """CASES of every bench/cases_*.py, in file-name order."""
    cases = []
    for path in sorted(glob.glob(os.path.join(HERE, "cases_*.py"))):
        name = os.path.splitext(os.path.basename(path))[0]
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        if not hasattr(module, "CASES"):
            raise AttributeError(f"{path} defines no CASES list")
        cases += list(module.CASES)
    return cases


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-k", action="append", default=[], help="keep cases whose name contains this")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--budget", type=float, default=10.0, help="seconds of timed runs per case (min 1 run)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    cases = [c for c in discover_cases() if not args.k or any(k in c[0] for k in args.k)]
    if not cases:
        parser.error(f"no case name contains any of {args.k}")
    fp32_rate = matmul_gflops(torch.float32)
    bf16_rate = matmul_gflops(torch.bfloat16)
    print(f"timing {len(cases)} cases", flush=True)
    results = run_cases(cases, repeats=args.repeats, budget=args.budget,
                        log=lambda s: print(s, file=sys.stderr, flush=True))
    print(format_table(results, fp32_rate, bf16_rate))


if __name__ == "__main__":
    main()
