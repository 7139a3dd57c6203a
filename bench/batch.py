"""`make bench` (batch part): samples/s of `editgan-fast batch` on the bundled model, in one run:

- the stage costs of one synthesis's worth of samples at the largest batch size, each stage timed alone
  (latents, synthesis, segmentation, PNG encoding, tar, shard commit), as a share of their sum;
- the local path at 1, 8 and 32 latents per synthesis (each latent with all its settings; 1 = one latent at a
  time, the per-item loop), ratios against 1, for each job shape of `--scales`: by default one setting per
  latent (one sample per latent: the per-item loop synthesizes one image at a time, so the ratios measure
  batching across latents alone) and three (the CLI's example `--scales 0,0.5,1`: every row, the per-item loop
  included, already batches a latent's three settings);
- the Ray Data path on a local 2-CPU Ray cluster at the largest batch size, on the last shape: cold (`ray.init`,
  worker start-up and model loading included) and warm (a later job of the same driver: the workers keep their
  editors), the ratio of each to the local path at the same batch size (run again, interleaved with the warm
  runs), and Ray's overhead per sample.

Every row renders the same job (the full path: synthesis, segmentation, PNG encoding, tar shards, manifest)
into a fresh folder; the Ray rows' shards are checked equal to the local row's.

With `--repeat N` the local rows run N times, interleaved (1, 8, 32, 1, 8, 32, ...), and the warm Ray row N
times; the table shows medians (use it on a shared, noisy machine).

    python bench/batch.py [--items 32] [--batch-sizes 1,8,32] [--scales "1;0,0.5,1"] [--repeat 1] [--no-ray]
"""
from __future__ import annotations

import argparse
import functools
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from editgan_fast.batch import BatchJob, ShardSink, run_local, seed_items
from editgan_fast.batch.render import _rendered_chunks, resolve_latent
from editgan_fast.batch.shards import encode_members, shard_bytes
from editgan_fast.editor import EditVector, VectorLibrary, default_editor

SCALES = (0.0, 0.5, 1.0)


def make_job(folder: Path, editor, items: int, batch_size: int, scales=SCALES) -> BatchJob:
    library = folder / "vectors.npz"
    if not library.exists():
        g = editor.generator
        delta = 0.4 * torch.randn(g.num_ws, g.style_dim, generator=torch.Generator().manual_seed(0))
        VectorLibrary([EditVector(delta, (1,), "bench", editor.fingerprint)]).save(library)
    return BatchJob.create(seed_items(range(items)), library, [list(scales)], shard_size=max(32, batch_size),
                           batch_size=batch_size)


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def shards_of(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("shard-*.tar"))}


def stage_costs(editor, job: BatchJob, folder: Path, scales, runs: int = 5) -> dict:
    """Seconds of each stage of the job's first synthesis, each run alone: medians of `runs`, the stages
    interleaved run by run (synthesis without and with segmentation alternate, so both see the same load)."""
    chunk = [item for _, item in job.shard_items(0)[:job.batch_size]]
    columns = {job.vector_library()["bench"]: list(scales)}
    latents = [resolve_latent(editor, job, item) for item in chunk]
    samples = next(_rendered_chunks(editor, job, 0))
    encoded = encode_members(samples)
    data = shard_bytes(encoded, job.format)
    sink = ShardSink(folder, job)
    stages = {
        "latents (mapping)": lambda: [resolve_latent(editor, job, item) for item in chunk],
        "synthesis": lambda: editor.apply_many([(w, columns) for w in latents], labels=False),
        "synthesis + segmentation": lambda: editor.apply_many([(w, columns) for w in latents]),
        "PNG + .npy encoding": lambda: encode_members(samples),
        "tar": lambda: shard_bytes(encoded, job.format),
        "commit (shard + manifest)": lambda: sink.commit(0, data, [s.manifest_row() for s in samples]),
    }
    times = {name: [] for name in stages}
    for _ in range(runs):
        for name, fn in stages.items():
            times[name].append(timed(fn)[0])
    costs = {name: statistics.median(t) for name, t in times.items()}
    costs["segmentation"] = costs.pop("synthesis + segmentation") - costs["synthesis"]
    return costs


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=32, help="latents (seeds) per job")
    parser.add_argument("--batch-sizes", default="1,8,32")
    parser.add_argument("--scales", default="1;" + ",".join(f"{s:g}" for s in SCALES),
                        help="job shapes: the scales of one vector per latent, shapes separated by ';'")
    parser.add_argument("--repeat", type=int, default=1, help="runs per row (medians)")
    parser.add_argument("--no-ray", action="store_true")
    args = parser.parse_args(argv)
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    shapes = [[float(s) for s in shape.split(",")] for shape in args.scales.split(";")]
    scales = shapes[-1]  # the stage costs and the Ray rows
    editor = default_editor(progress=False)
    editor.apply_many([(editor.sample(0), {})])  # warm-up: kernels and caches
    work = Path(tempfile.mkdtemp(prefix="bench_batch_"))
    print(f"batch job: {args.items} latents x {' or '.join(str(len(s)) for s in shapes)} scales, bundled model "
          f"({editor.generator.resolution} px), {torch.get_num_threads()} threads locally, OMP_WAIT_POLICY="
          f"{os.environ.get('OMP_WAIT_POLICY', 'default')} (PASSIVE: no spin-waiting, which a loaded machine "
          f"punishes)\n")

    costs = stage_costs(editor, make_job(work, editor, args.items, sizes[-1], scales), work / "stages", scales)
    total = sum(costs.values())
    print(f"stages of one synthesis ({min(sizes[-1], args.items)} latents x {len(scales)} scales), each alone:")
    for name, seconds in costs.items():
        print(f"  {name:28s} {1000 * seconds:8.1f} ms  {100 * seconds / total:5.1f} %")

    print("\n| path | seconds | samples/s | vs 1 latent/synthesis (same settings) |")
    print("|---|---|---|---|")

    def row(name, seconds, samples, first):  # printed as measured: a later failure keeps the earlier rows
        print(f"| {name} | {seconds:.2f} | {samples / seconds:.1f} | {first / seconds:.2f}x |", flush=True)

    for k, shape in enumerate(shapes):
        folder = work / f"shape{k}"
        folder.mkdir()
        runs = {batch_size: [] for batch_size in sizes}
        for rep in range(args.repeat):
            for batch_size in sizes:
                job = make_job(folder, editor, args.items, batch_size, shape)
                runs[batch_size].append(timed(lambda: run_local(editor, job, folder / f"local{batch_size}_{rep}")))
        per_item = statistics.median(s for s, _ in runs[sizes[0]])
        for batch_size, measured in runs.items():
            row(f"local, {batch_size} latents x {len(shape)} setting{'s' * (len(shape) > 1)}/synthesis",
                statistics.median(s for s, _ in measured), measured[0][1]["samples"], per_item)
    if args.no_ray:
        return
    import ray
    from editgan_fast.batch.on_ray import pool_shape, run_ray
    job = make_job(work, editor, args.items, sizes[-1], scales)
    make_editor = functools.partial(default_editor, progress=False)
    start = time.perf_counter()
    ray.init(num_cpus=2, _node_ip_address="127.0.0.1", include_dashboard=False, log_to_driver=False)
    try:
        init_s = time.perf_counter() - start
        workers, threads = pool_shape(ray, job.num_shards, None, 0)
        pool = f"{workers} worker{'s' * (workers > 1)} x {threads} thread{'s' * (threads > 1)}"
        cold = time.perf_counter() - start + timed(lambda: run_ray(make_editor, job, work / "ray_cold"))[0]
        warm_runs, paired_local = [], []
        for rep in range(args.repeat):  # interleaved with the local path, so both see the same machine load
            warm_runs.append(timed(lambda: run_ray(make_editor, job, work / f"ray_warm{rep}")))
            paired_local.append(timed(lambda: run_local(editor, job, work / f"local_paired{rep}"))[0])
    finally:
        ray.shutdown()
    for name in ["ray_cold"] + [f"ray_warm{rep}" for rep in range(args.repeat)]:
        if shards_of(work / name) != shards_of(folder / f"local{sizes[-1]}_0"):
            raise SystemExit(f"the Ray path's shards ({name}) differ from the local path's")
    samples = warm_runs[0][1]["samples"]
    warm = statistics.median(s for s, _ in warm_runs)
    row(f"Ray Data cold ({pool}, `ray.init` {init_s:.1f} s included), {sizes[-1]} latents/synthesis", cold, samples,
        per_item)
    row(f"Ray Data warm (second job of the driver), {sizes[-1]} latents/synthesis", warm, samples, per_item)
    local_s = statistics.median(paired_local)
    print(f"\nlocal path at {sizes[-1]} latents/synthesis, interleaved with the warm Ray runs: {local_s:.2f} s")
    print(f"Ray / local at {sizes[-1]} latents/synthesis: cold {cold / local_s:.2f}x, warm {warm / local_s:.2f}x "
          f"time; overhead per sample: warm {1000 * (warm - local_s) / samples:.1f} ms, cold "
          f"{1000 * (cold - local_s) / samples:.1f} ms; one-time start-up (cold - warm) {cold - warm:.1f} s")


if __name__ == "__main__":
    main()
