"""The batch job as a Ray Data pipeline: read (the unfinished shard indices) -> map_batches on a pool of Ray
workers (each renders whole shards with the same `render_shard` as the local path) -> write (this driver commits
each returned shard with the same `ShardSink`, so the manifest has one writer).

Start-up, not rendering, is what a small Ray job pays for: a fresh worker imports torch and builds the editor
(seconds). So the map is a Ray *task* whose worker process keeps the editor it built (`worker_editor`): Ray
reuses a driver's idle workers, so a second job of the same driver (or a retry on a surviving worker) renders at
once. A Ray Data actor pool would build the editor again for every job. The pool is sized to the work: with
fewer shards than CPUs, fewer workers each get more threads (one shard on 2 CPUs: one worker, 2 threads).

A worker that dies mid-shard (killed, out of memory) has its task retried (Ray's default for tasks: up to 3
times, so a shard that kills every worker fails the job); a retried shard is committed once, under its index.
Shards travel back through Ray's object store as file bytes, so workers need no shared filesystem for the output;
latent and photo folders must be readable at the same path on every node (seeds need nothing).
"""
from __future__ import annotations

import hashlib
import json

import numpy as np

from ..errors import BackendUnavailable
from .job import BatchJob
from .progress import Throughput
from .render import render_shard
from .shards import ShardSink

_worker_editor: tuple = (None, None)  # (key, editor) built by this worker process; one at a time


def worker_editor(make_editor):
    """The editor `make_editor()` builds, built once per worker process and kept for later tasks (keyed by the
    pickled builder, so a job with another model builds afresh and replaces it)."""
    global _worker_editor
    from ray import cloudpickle
    key = hashlib.sha256(cloudpickle.dumps(make_editor)).hexdigest()
    if _worker_editor[0] != key:
        _worker_editor = (None, None)  # drop the old model before building the new one
        _worker_editor = (key, make_editor())
    return _worker_editor[1]


def _use_assigned_cpus() -> None:
    """torch threads = the CPUs Ray gave this task (a reused worker may have run a task of another size)."""
    import ray
    import torch
    cpus = int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1))
    if torch.get_num_threads() != max(1, cpus):
        torch.set_num_threads(max(1, cpus))


def render_shards(batch: dict, make_editor, job: BatchJob) -> dict:
    """The Ray Data map: one output row (shard index, shard file bytes, manifest rows as JSON) per input shard."""
    _use_assigned_cpus()
    editor = worker_editor(make_editor)
    shards, files, rows = [], [], []
    for shard in batch["shard"]:
        data, shard_rows = render_shard(editor, job, int(shard))
        shards.append(int(shard))
        files.append(data)
        rows.append(json.dumps(shard_rows))
    return {"shard": np.array(shards), "file": np.array(files, dtype=object), "rows": np.array(rows, dtype=object)}


def _ray():
    try:
        import ray
        import ray.data
    except ImportError:
        raise BackendUnavailable("--ray needs Ray: pip install 'editgan-fast[ray]' (or 'ray[data,serve]')") from None
    return ray


def pool_shape(ray, shards: int, workers: int | None, num_gpus: float) -> tuple[int, int]:
    """(concurrent workers, CPUs = torch threads per worker) for `shards` shards: `workers` if given, else one
    per CPU (or per GPU share), never more than there are shards; the cluster's CPUs split among them, at most
    one node's worth each (a task runs on one node)."""
    resources = ray.cluster_resources()
    cpus = max(1, int(resources.get("CPU", 1)))
    if workers is None:
        workers = max(1, int(resources.get("GPU", 0) // num_gpus)) if num_gpus else cpus
    workers = max(1, min(workers, shards))
    node_cpus = max((int(n["Resources"].get("CPU", 0)) for n in ray.nodes() if n.get("Alive")), default=1)
    return workers, max(1, min(node_cpus, cpus // workers))


def run_ray(make_editor, job: BatchJob, out, address: str | None = None, actors: int | None = None,
            num_gpus: float = 0, progress: bool = False, renderer=render_shards) -> dict:
    """Render the unfinished shards of `job` into `out` on Ray: joins the cluster at `address` ("auto",
    "ray://host:10001") or an already initialized Ray (kept up: its workers keep their editors for the next
    job), else starts a local instance (shut down afterwards). `make_editor` is a picklable callable building
    the Editor in a worker; `actors` caps the concurrent workers; `num_gpus` per worker."""
    ray = _ray()
    sink = ShardSink(out, job)
    pending = sink.pending()
    started = not ray.is_initialized()
    if started:
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    meter = Throughput(len(pending), progress)
    try:
        if pending:
            context = ray.data.DataContext.get_current()
            context.enable_progress_bars = False
            workers, cpus = pool_shape(ray, len(pending), actors, num_gpus)
            dataset = ray.data.from_items([{"shard": s} for s in pending], override_num_blocks=len(pending))
            rendered = dataset.map_batches(renderer, fn_args=(make_editor, job), batch_size=1, num_cpus=cpus,
                                           compute=ray.data.TaskPoolStrategy(size=workers),
                                           num_gpus=num_gpus or None)
            for row in rendered.iter_rows():
                rows = json.loads(row["rows"])
                sink.commit(int(row["shard"]), row["file"], rows)
                meter.add(len(rows))
    finally:
        stats = meter.close()
        if started:
            ray.shutdown()
    return {**sink.summary(), "skipped_shards": job.num_shards - len(pending), **stats}
