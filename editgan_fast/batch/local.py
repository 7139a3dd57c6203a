"""The in-process batch path: render the unfinished shards one after another in this process.

One encoder thread PNG-encodes, tars and commits what the main thread has rendered while it renders on: the
encoding of a synthesis's samples overlaps the next synthesis, and a shard's commit overlaps the next shard. At
most one finished shard waits for its commit (bounded memory); an interrupted run still commits every shard
rendered before the interruption, so it loses only the shard in flight."""
from __future__ import annotations

from collections import deque
from concurrent.futures import ThreadPoolExecutor

from .job import BatchJob
from .progress import Throughput
from .render import start_shard
from .shards import ShardSink


def run_local(editor, job: BatchJob, out, progress: bool = False) -> dict:
    """Render every shard of `job` not yet finished in `out`; returns the manifest summary and the throughput."""
    sink = ShardSink(out, job)
    pending = sink.pending()
    meter = Throughput(len(pending), progress)

    def commit(shard, encoded):  # on the encoder thread, queued behind the shard's encoding
        data, rows = encoded.result()
        sink.commit(shard, data, rows)
        meter.add(len(rows))

    try:
        with ThreadPoolExecutor(1, thread_name_prefix="encode") as encoder:
            commits = deque()
            for shard in pending:
                while len(commits) > 1:  # raises a failed commit (disk full...) before rendering on
                    commits.popleft().result()
                commits.append(encoder.submit(commit, shard, start_shard(editor, job, shard, encoder)))
            for done in commits:
                done.result()
    finally:
        stats = meter.close()
    return {**sink.summary(), "skipped_shards": job.num_shards - len(pending), **stats}
