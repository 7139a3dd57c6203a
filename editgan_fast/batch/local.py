"""The in-process batch path: render the unfinished shards one after another in this process."""
from __future__ import annotations

from .job import BatchJob
from .progress import Throughput
from .render import render_shard
from .shards import ShardSink


def run_local(editor, job: BatchJob, out, progress: bool = False) -> dict:
    """Render every shard of `job` not yet finished in `out`; returns the manifest summary and the throughput."""
    sink = ShardSink(out, job)
    pending = sink.pending()
    meter = Throughput(len(pending), progress)
    try:
        for shard in pending:
            data, rows = render_shard(editor, job, shard)
            sink.commit(shard, data, rows)
            meter.add(len(rows))
    finally:
        stats = meter.close()
    return {**sink.summary(), "skipped_shards": job.num_shards - len(pending), **stats}
