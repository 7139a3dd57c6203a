"""`make bench` (batch part): samples/s of `editgan-fast batch` on the bundled model, in one run:

- the local path at 1, 8 and 32 latents per synthesis (each latent with all its settings; 1 = one latent at a
  time, the per-item loop), ratios against 1;
- the Ray Data path on a local 2-CPU Ray cluster (2 actors, 1 thread each), at the largest batch size, end to
  end (actor start-up and model loading included), its ratio to the local path at the same batch size and its
  overhead per sample.

Every row renders the same job (the full path: synthesis, segmentation, PNG encoding, tar shards, manifest)
into a fresh folder; the shards of the Ray row are checked equal to the local row's.

    python bench/batch.py [--items 64] [--batch-sizes 1,8,32] [--no-ray]
"""
from __future__ import annotations

import argparse
import functools
import tempfile
import time
from pathlib import Path

import torch

from editgan_fast.batch import BatchJob, run_local, seed_items
from editgan_fast.editor import EditVector, VectorLibrary, default_editor

SCALES = (0.0, 0.5, 1.0)


def make_job(folder: Path, editor, items: int, batch_size: int) -> BatchJob:
    library = folder / "vectors.npz"
    if not library.exists():
        g = editor.generator
        delta = 0.4 * torch.randn(g.num_ws, g.style_dim, generator=torch.Generator().manual_seed(0))
        VectorLibrary([EditVector(delta, (1,), "bench", editor.fingerprint)]).save(library)
    return BatchJob.create(seed_items(range(items)), library, [SCALES], shard_size=max(32, batch_size),
                           batch_size=batch_size)


def timed(fn) -> tuple[float, dict]:
    start = time.perf_counter()
    summary = fn()
    return time.perf_counter() - start, summary


def shards_of(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("shard-*.tar"))}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=64, help="latents (seeds) per job")
    parser.add_argument("--batch-sizes", default="1,8,32")
    parser.add_argument("--no-ray", action="store_true")
    args = parser.parse_args(argv)
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    editor = default_editor(progress=False)
    editor.apply_many([(editor.sample(0), {})])  # warm-up: kernels and caches
    work = Path(tempfile.mkdtemp(prefix="bench_batch_"))
    print(f"batch job: {args.items} latents x {len(SCALES)} scales, bundled model "
          f"({editor.generator.resolution} px), {torch.get_num_threads()} threads locally\n")
    print("| path | seconds | samples/s | vs 1 latent/synthesis |")
    print("|---|---|---|---|")
    rows = []

    def row(name, seconds, samples):  # printed as measured: a later failure keeps the earlier rows
        rows.append((name, seconds, samples))
        print(f"| {name} | {seconds:.2f} | {samples / seconds:.1f} | {rows[0][1] / seconds:.2f}x |", flush=True)

    for batch_size in sizes:
        job = make_job(work, editor, args.items, batch_size)
        seconds, summary = timed(lambda: run_local(editor, job, work / f"local{batch_size}"))
        row(f"local, {batch_size} latents/synthesis", seconds, summary["samples"])
    if not args.no_ray:
        import ray
        from editgan_fast.batch.on_ray import run_ray
        ray.init(num_cpus=2, _node_ip_address="127.0.0.1", include_dashboard=False, log_to_driver=False)
        try:
            job = make_job(work, editor, args.items, sizes[-1])
            seconds, summary = timed(lambda: run_ray(functools.partial(default_editor, progress=False), job,
                                                     work / "ray", actors=2))
        finally:
            ray.shutdown()
        if shards_of(work / "ray") != shards_of(work / f"local{sizes[-1]}"):
            raise SystemExit("the Ray path's shards differ from the local path's")
        row(f"Ray Data, 2 actors, {sizes[-1]} latents/synthesis", seconds, summary["samples"])
        local_s, ray_s, samples = rows[-2][1], rows[-1][1], rows[-1][2]
        print(f"\nRay / local at {sizes[-1]} latents/synthesis: {ray_s / local_s:.2f}x time; overhead "
              f"{1000 * (ray_s - local_s) / samples:.1f} ms per sample (actor start-up and model loading included)")


if __name__ == "__main__":
    main()
