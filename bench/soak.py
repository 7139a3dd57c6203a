"""Soak benchmark: memory over many calls must stay flat after warm-up (no cache or tensor kept per call).

    python bench/soak.py              # 10,000 apply calls + 1,000 learn/refine optimizer steps
    python bench/soak.py --reduced    # 1,000 apply calls + 100 steps (a quick look)

Every apply call takes a fresh Latent and a fresh EditVector (so the editor's per-latent and per-vector style
caches, which are weak, must let them go); the optimizer phase alternates learn_vector and refine runs of 10
steps each. The resident set size (RSS, /proc/self/statm) is sampled every 1% of each phase. Reports the RSS
curve, the growth after warm-up (the first 10% of the apply phase) and the slope of a least-squares line through
the post-warm-up samples, and writes the curve to out/soak.json.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import time
from pathlib import Path

import torch

from editgan_fast.editor import EditVector, random_editor
from editgan_fast.editor.demo import paint_enlarge

PAGE_MIB = os.sysconf("SC_PAGE_SIZE") / 2 ** 20
STEPS_PER_RUN = 10
WARMUP = 0.1


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE_MIB


def fresh_vector(editor, rng) -> EditVector:
    g = editor.generator
    return EditVector(0.3 * torch.randn(g.num_ws, g.style_dim, generator=rng), (1,), "soak", editor.fingerprint)


def soak_apply(editor, calls: int, samples: list) -> None:
    rng = torch.Generator().manual_seed(0)
    every = max(calls // 100, 1)
    for i in range(calls):
        latent = editor.sample(i)
        editor.apply(latent, {fresh_vector(editor, rng): float(torch.rand(1, generator=rng)) * 2 - 1})
        if (i + 1) % every == 0:
            samples.append(("apply", i + 1, rss_mib()))


def soak_optimize(editor, steps: int, samples: list) -> None:
    rng = torch.Generator().manual_seed(1)
    runs = max(steps // STEPS_PER_RUN, 1)
    every = max(runs // 100, 1)
    for r in range(runs):
        latent = editor.sample(10_000 + r)
        if r % 2 == 0:
            labels, _ = editor.segment(latent)
            edited, _ = paint_enlarge(labels.cpu(), iterations=2)
            editor.learn_vector(latent, edited, steps=STEPS_PER_RUN)
        else:
            editor.refine(latent, {fresh_vector(editor, rng): 1.0}, steps=STEPS_PER_RUN)
        if (r + 1) % every == 0:
            samples.append(("optimize", (r + 1) * STEPS_PER_RUN, rss_mib()))


def slope_per_1000(points) -> float:
    """Least-squares slope of RSS (MiB) per 1,000 calls or steps."""
    n = len(points)
    if n < 2:
        return 0.0
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    var = sum((x - mx) ** 2 for x, _ in points)
    return 1000 * sum((x - mx) * (y - my) for x, y in points) / var if var else 0.0


def summarize(phase: str, samples: list) -> dict:
    points = [(x, y) for p, x, y in samples if p == phase]
    after = points[int(len(points) * WARMUP):] or points
    return {"calls" if phase == "apply" else "steps": points[-1][0], "rss_start_mib": round(points[0][1], 1),
            "rss_after_warmup_mib": round(after[0][1], 1), "rss_end_mib": round(points[-1][1], 1),
            "growth_after_warmup_mib": round(points[-1][1] - after[0][1], 1),
            "slope_mib_per_1000": round(slope_per_1000(after), 2)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reduced", action="store_true", help="1,000 apply calls and 100 optimizer steps")
    parser.add_argument("--out", default="out/soak.json")
    args = parser.parse_args()
    calls, steps = (1_000, 100) if args.reduced else (10_000, 1_000)
    import warnings
    warnings.simplefilter("ignore")  # the random model has no LPIPS weights: one warning per editor is enough
    editor = random_editor(0, progress=False)
    samples = [("start", 0, rss_mib())]
    start = time.perf_counter()
    soak_apply(editor, calls, samples)
    apply_s = time.perf_counter() - start
    gc.collect()
    start = time.perf_counter()
    soak_optimize(editor, steps, samples)
    optimize_s = time.perf_counter() - start
    report = {"apply": dict(summarize("apply", samples), seconds=round(apply_s, 1)),
              "optimize": dict(summarize("optimize", samples), seconds=round(optimize_s, 1)),
              "curve": [{"phase": p, "count": x, "rss_mib": round(y, 1)} for p, x, y in samples]}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))
    print(f"RSS at start {samples[0][2]:.0f} MiB")
    for phase in ("apply", "optimize"):
        print(phase, json.dumps(report[phase]))
    print("curve (every 10%):")
    for phase in ("apply", "optimize"):
        points = [(x, y) for p, x, y in samples if p == phase]
        print(f"  {phase:8s} " + "  ".join(f"{x}:{y:.0f}" for x, y in points[9::10]))


if __name__ == "__main__":
    main()
