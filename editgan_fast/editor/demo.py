"""`editgan-fast demo`: the whole loop on the embedded default model, and the per-stage latency table.

generate -> segment -> paint an edit programmatically (grow one part of the label map, like EditGAN's
"enlarge" edits) -> learn a vector -> apply it to other samples at several scales (one batch each) -> refine,
writing images, label maps, the vector file and a latency table (median of repeated runs) to the output folder.
"""
from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import torch

from .. import io
from . import losses
from .default import default_editor

DEMO_SEED = 0
OTHER_SEEDS = (1, 2, 3)
SCALES = (0.0, 0.5, 1.0, 1.5)
GROW_ITERATIONS = 4


def paint_enlarge(labels: torch.Tensor, iterations: int = GROW_ITERATIONS, grown: int | None = None
                  ) -> tuple[torch.Tensor, int]:
    """Grow class `grown` (default: the second most frequent) by `iterations` pixels (a 3x3 dilation each): an
    'enlarge' edit. Returns (edited labels, the class grown)."""
    if grown is None:
        counts = torch.bincount(labels.flatten())
        order = counts.argsort(descending=True)
        grown = int(order[1]) if (counts > 0).sum() > 1 else int(order[0])
    mask = losses.dilate(labels == grown, iterations)
    edited = labels.clone()
    edited[mask] = grown
    return edited, grown


def _class_id(name: str) -> int | None:
    """Id of a named class of the bundled model, or None when the default editor is the random one."""
    from .. import assets
    return assets.manifest()["classes"].index(name) if assets.available() else None


def _median_ms(fn, repeats: int) -> float:
    fn()  # warm-up: first-call costs (allocations, kernel selection) are not latency
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def latency_table(editor, repeats: int = 5, vector=None) -> dict[str, float]:
    """Median milliseconds per stage on this machine's active backend."""
    latent = editor.sample(DEMO_SEED)
    labels, _ = editor.segment(latent)
    if vector is None:
        vector = editor.learn_vector(latent, paint_enlarge(labels)[0], steps=0)  # δ = 0: shapes are what count
    objective = editor.edit_objective(latent, paint_enlarge(labels)[0])
    wplus = latent.wplus.clone().requires_grad_(True)

    def optimizer_step():
        total, _, _ = objective(wplus)
        total.backward()

    seeds = iter(range(10**6, 2 * 10**6))
    batch = [float(s) for s in torch.linspace(-1, 2, 8)]
    editor.apply(latent, {vector: 1.0})  # fills the style caches the real-time path relies on
    return {
        "sample + render (1 image)": _median_ms(lambda: editor.render(editor.sample(next(seeds))), repeats),
        "segment (1 image)": _median_ms(lambda: editor.segment(latent), repeats),
        "apply, 1 scale (cached styles)": _median_ms(lambda: editor.apply(latent, {vector: 0.7}), repeats),
        "apply, batch of 8 scales": _median_ms(lambda: editor.apply(latent, {vector: batch}), repeats),
        "learn/refine step (forward + backward)": _median_ms(optimizer_step, repeats),
    }


def format_table(rows: dict[str, float]) -> str:
    width = max(len(k) for k in rows)
    lines = [f"| {'stage':<{width}} | median ms |", f"|{'-' * (width + 2)}|-----------|"]
    lines += [f"| {k:<{width}} | {v:9.1f} |" for k, v in rows.items()]
    return "\n".join(lines)


def run_demo(out: Path, steps: int = 40, refine_steps: int = 15, repeats: int = 3, progress: bool | None = True,
             device=None) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    timings = {}
    start = time.perf_counter()
    editor = default_editor(progress=progress, device=device)
    timings["build default model"] = time.perf_counter() - start

    latent = editor.sample(DEMO_SEED)
    base = editor.render(latent)
    io.save_image(out / "original.png", base.image)
    io.save_labels(out / "original_labels.png", base.labels)
    io.save_latent(out / "original_latent.npy", latent.wplus)

    # The bundled faces model has named classes: enlarge the mouth, the edit EditGAN's smile benchmark is about.
    edited, grown = paint_enlarge(base.labels, grown=_class_id("mouth"))
    io.save_labels(out / "edited_labels.png", edited)

    history = []
    t = time.perf_counter()
    vector = editor.learn_vector(latent, edited, steps=steps, name=f"enlarge_class_{grown}",
                                 callback=lambda step, terms, image: history.append(terms))
    timings["learn vector"] = time.perf_counter() - t
    vector.save(out / "vector.npz")
    learned = editor.apply(latent, {vector: 1.0})
    io.save_image(out / "learned.png", learned.image)
    io.save_labels(out / "learned_labels.png", learned.labels)

    t = time.perf_counter()
    for seed in OTHER_SEEDS:
        result = editor.apply(editor.sample(seed), {vector: list(SCALES)})
        io.save_image(out / f"apply_seed{seed}.png", io.image_grid(result.image, len(SCALES)))
        io.save_labels(out / f"apply_seed{seed}_labels.png",
                       io.image_grid(result.labels[:, None].float(), len(SCALES))[0].long())
    timings["apply to other samples"] = time.perf_counter() - t

    t = time.perf_counter()
    other = editor.sample(OTHER_SEEDS[0])
    refine_history = []
    refined = editor.refine(other, {vector: 1.0}, steps=refine_steps,
                            callback=lambda step, terms, image: refine_history.append(terms))
    timings["refine"] = time.perf_counter() - t
    result = editor.render(refined)
    io.save_image(out / "refined.png", result.image)
    io.save_labels(out / "refined_labels.png", result.labels)

    latency = latency_table(editor, repeats=repeats, vector=vector)
    with io.atomic_write(out / "latency.md", "w") as f:
        f.write(format_table(latency) + "\n")
    summary = {
        "out": str(out),
        "grown_class": grown,
        "learn_loss": {"first": history[0], "last": history[-1]},
        "refine_loss": {"first": refine_history[0], "last": refine_history[-1]},
        "stage_seconds": {k: round(v, 2) for k, v in timings.items()},
        "latency_ms": {k: round(v, 2) for k, v in latency.items()},
    }
    with io.atomic_write(out / "summary.json", "w") as f:
        f.write(json.dumps(summary, indent=2) + "\n")
    return summary
