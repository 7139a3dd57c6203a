"""The batch job as a Ray Data pipeline: read (the unfinished shard indices) -> map_batches on an actor pool
(each actor builds the editor once, then renders whole shards with the same `render_shard` as the local path)
-> write (this driver commits each returned shard with the same `ShardSink`, so the manifest has one writer).

Actors are restarted and their batch retried when a worker dies (Ray Data's actor-pool default:
max_restarts=-1, max_task_retries=-1); a retried shard is committed once, under its index.
Shards travel back through Ray's object store, so workers need no shared filesystem for the output; latent and
photo folders must be readable at the same path on every node (seeds need nothing).
"""
from __future__ import annotations

import json

import numpy as np

from ..errors import BackendUnavailable
from .job import BatchJob
from .progress import Throughput
from .render import render_shard
from .shards import ShardSink


class ShardRenderer:
    """A Ray Data actor: `make_editor()` once, then one output row per input row (shard index)."""

    def __init__(self, make_editor, job: BatchJob):
        self.editor, self.job = make_editor(), job

    def __call__(self, batch: dict) -> dict:
        shards, tars, rows = [], [], []
        for shard in batch["shard"]:
            data, shard_rows = render_shard(self.editor, self.job, int(shard))
            shards.append(int(shard))
            tars.append(data)
            rows.append(json.dumps(shard_rows))
        return {"shard": np.array(shards), "tar": np.array(tars, dtype=object), "rows": np.array(rows, dtype=object)}


def _ray():
    try:
        import ray
        import ray.data
    except ImportError:
        raise BackendUnavailable("--ray needs Ray: pip install 'editgan-fast[ray]' (or 'ray[data,serve]')") from None
    return ray


def _default_actors(ray, num_gpus: float) -> int:
    resources = ray.cluster_resources()
    if num_gpus:
        return max(1, int(resources.get("GPU", 0) // num_gpus))
    return max(1, int(resources.get("CPU", 1)))


def run_ray(make_editor, job: BatchJob, out, address: str | None = None, actors: int | None = None,
            num_gpus: float = 0, progress: bool = False, renderer=ShardRenderer) -> dict:
    """Render the unfinished shards of `job` into `out` on Ray: joins the cluster at `address` ("auto",
    "ray://host:10001") or an already initialized Ray, else starts a local instance (shut down afterwards).
    `make_editor` is a picklable callable building the Editor inside each actor; `num_gpus` per actor."""
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
            size = actors or min(_default_actors(ray, num_gpus), len(pending))
            dataset = ray.data.from_items([{"shard": s} for s in pending], override_num_blocks=len(pending))
            rendered = dataset.map_batches(renderer, fn_constructor_args=(make_editor, job), batch_size=1,
                                           compute=ray.data.ActorPoolStrategy(size=size), num_cpus=1,
                                           num_gpus=num_gpus or None)
            for row in rendered.iter_rows():
                rows = json.loads(row["rows"])
                sink.commit(int(row["shard"]), row["tar"], rows)
                meter.add(len(rows))
    finally:
        stats = meter.close()
        if started:
            ray.shutdown()
    return {**sink.summary(), "skipped_shards": job.num_shards - len(pending), **stats}

