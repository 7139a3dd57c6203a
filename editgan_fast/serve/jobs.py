"""Optimizing jobs (learn a vector, embed a photo, refine): each runs in the jobs' worker thread and records
progress events (step, loss terms, and every `preview_every` steps a preview frame); a job can be cancelled
between steps. Finished jobs are kept, oldest evicted first, up to `max_jobs`."""
from __future__ import annotations

import secrets
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

from .. import io
from ..errors import EditGANFastError
from . import codec
from .errormap import Busy, Conflict, NotFound, error_fields

MAX_EVENTS = 2000  # events kept per job (a preview is only in every preview_every-th)


class JobCancelled(EditGANFastError):
    """Raised inside a job's step callback once the job was cancelled."""


@dataclass
class Job:
    id: str
    kind: str
    steps: int
    state: str = "queued"      # queued, running, done, failed, cancelled
    events: list = field(default_factory=list)
    result: dict | None = None
    error: dict | None = None
    started: float = field(default_factory=time.time)
    cancel_requested: threading.Event = field(default_factory=threading.Event)

    @property
    def finished(self) -> bool:
        return self.state in ("done", "failed", "cancelled")

    def describe(self, after: int = -1) -> dict:
        last = self.events[-1] if self.events else None
        return {"id": self.id, "kind": self.kind, "state": self.state, "steps": self.steps,
                "step": last["step"] if last else 0, "terms": last["terms"] if last else {},
                "events": [e for e in self.events if e["index"] > after], "result": self.result,
                "error": self.error}


class JobManager:
    def __init__(self, max_jobs: int, max_queued: int, preview_every: int = 5):
        self.max_jobs, self.max_queued, self.preview_every = max_jobs, max_queued, preview_every
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="jobs")

    def submit(self, kind: str, steps: int, work: Callable) -> Job:
        """Run `work(callback)` in the worker thread; the dict it returns becomes the job's result. `callback`
        is an Editor step callback (step, terms, image) that records events and honours cancellation."""
        job = Job(secrets.token_hex(8), kind, steps)
        with self._lock:
            if sum(not j.finished for j in self._jobs.values()) >= self.max_queued:
                raise Busy(f"{self.max_queued} jobs are queued or running (max_queued_jobs); retry when one "
                           f"has finished")
            self._jobs[job.id] = job
            self._evict()
        self._executor.submit(self._run, job, work)
        return job

    def _evict(self) -> None:
        excess = len(self._jobs) - self.max_jobs
        for job_id in [j.id for j in self._jobs.values() if j.finished][:max(excess, 0)]:
            del self._jobs[job_id]

    def _callback(self, job: Job):
        def on_step(step: int, terms: dict, image) -> None:
            if job.cancel_requested.is_set():
                raise JobCancelled(f"job {job.id} was cancelled at step {step}")
            event = {"index": len(job.events), "step": step, "terms": {k: round(v, 6) for k, v in terms.items()}}
            if image is not None and (step % self.preview_every == 0 or step == job.steps):
                event["preview"] = codec.b64(io.image_png(image[0] if image.ndim == 4 else image))
            job.events.append(event)
            del job.events[:-MAX_EVENTS]
        return on_step

    def _run(self, job: Job, work: Callable) -> None:
        if job.cancel_requested.is_set():
            job.state = "cancelled"
            return
        job.state = "running"
        try:
            job.result = work(self._callback(job))
            job.state = "done"
        except JobCancelled:
            job.state = "cancelled"
        except Exception as error:  # reported through the job, mapped as the API maps errors
            job.error = error_fields(error)
            job.state = "failed"

    def get(self, job_id: str) -> Job:
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None:
            raise NotFound(f"no job {job_id!r}")
        return job

    def cancel(self, job_id: str) -> Job:
        job = self.get(job_id)
        if job.finished:
            raise Conflict(f"job {job_id} already finished ({job.state})")
        job.cancel_requested.set()
        return job

    def shutdown(self) -> None:
        with self._lock:
            for job in self._jobs.values():
                job.cancel_requested.set()
        self._executor.shutdown(wait=True)
