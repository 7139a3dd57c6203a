"""The batching renderer: the service's one path to `Editor.apply`.

Requests are keyed (a websocket stream uses its connection as key): a newer request for a key still waiting
replaces the older one, whose caller gets `Superseded` (only the latest slider position is rendered). One
worker thread synthesizes; while it runs, requests of other keys queue, and the next synthesis takes all of
them (up to `max_batch` rows) through `Editor.apply_many`: N concurrent clients cost one batched synthesis,
not N. Before a synthesis the renderer waits (at most `gather_s`, or a tenth of the last synthesis if that is
longer) for the requests of the other active streams (keys that asked at least twice, the last time within
`active_s` or two syntheses' time, whichever is longer: a stream asks once per frame, so slow frames space its
requests out): each streaming client sends its next request as soon as its frame arrives, so right after a
synthesis the requests trickle in; taking the first one alone would split the clients into small batches, and
the next synthesis would compete for the CPU with the event loop still sending frames and reading requests. A
lone stream or a one-off request never waits.
A deployment (e.g. Ray Serve) can swap in another class with the same `render`/`start`/`stop`/`stats`.
"""
from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from ..editor import Result
from ..errors import EditGANFastError
from . import codec


class Superseded(EditGANFastError):
    """A newer request for the same key arrived before this one was rendered."""


@dataclass
class Frame:
    """One request's result (rows of a batch of scales stay stacked, as `Editor.apply` returns them), the
    number of rows in the synthesis that produced it, that synthesis's duration, and, when asked for, the
    result as base64 PNG fields (codec.frames, once for the batch), made in the render thread: no further
    thread hand-over."""
    result: Result
    batch_rows: int
    synthesis_s: float
    encoded: dict | None = None


@dataclass
class _Request:
    latent: object
    vectors: dict
    rows: int
    batched: bool
    labels: bool
    encode: bool
    future: asyncio.Future


def rows_of(vectors: dict) -> tuple[int, bool]:
    """(rows, whether a batch of scales was asked for) of a {vector: scale or [scales]} edit."""
    lengths = {len(s) for s in vectors.values() if isinstance(s, (list, tuple))}
    return (max(lengths) if lengths else 1), bool(lengths)


class BatchingRenderer:
    def __init__(self, editor, max_batch: int = 16, gather_s: float = 0.01, active_s: float = 0.25):
        self.editor, self.max_batch = editor, max_batch
        self.gather_s, self.active_s = gather_s, active_s
        self._pending: OrderedDict[object, _Request] = OrderedDict()
        self._seen: dict[object, tuple[int, float]] = {}  # key -> (requests, time of the latest), recent keys only
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="render")
        self._wakeup: asyncio.Event | None = None
        self._worker: asyncio.Task | None = None
        self.batches = 0
        self.frames = 0
        self.superseded = 0
        self.max_rows_seen = 0
        self._last_synthesis_s = 0.0

    async def start(self) -> None:
        self._wakeup = asyncio.Event()
        self._worker = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        for request in self._pending.values():
            request.future.cancel()
        self._pending.clear()
        self._executor.shutdown(wait=True)

    def stats(self) -> dict:
        return {"batches": self.batches, "frames": self.frames, "superseded": self.superseded,
                "max_batch_rows": self.max_rows_seen, "pending": len(self._pending)}

    async def render(self, key, latent, vectors: dict, labels: bool = True, encode: bool = False) -> Frame:
        """The frame of `latent` edited by `vectors` (its label map too unless `labels` is False; one row,
        encoded as PNGs too if `encode`); raises Superseded if a newer request for `key` came first."""
        if self._worker is None:
            raise RuntimeError("the renderer is not started (await renderer.start() in the app's lifespan)")
        rows, batched = rows_of(vectors)
        future = asyncio.get_running_loop().create_future()
        self._seen[key] = (self._seen.get(key, (0, 0.0))[0] + 1, time.perf_counter())
        old = self._pending.pop(key, None)
        if old is not None and not old.future.done():
            old.future.set_exception(Superseded("a newer edit of this stream replaced this one"))
            self.superseded += 1
        self._pending[key] = _Request(latent, vectors, rows, batched, labels, encode, future)
        self._wakeup.set()
        return await future

    def _take_batch(self) -> list[_Request]:
        """The oldest requests, up to max_batch rows, that all want labels or all do not (one synthesis)."""
        batch, rows = [], 0
        labels = next(iter(self._pending.values())).labels
        for key, request in list(self._pending.items()):
            if request.labels != labels:
                continue
            if batch and rows + request.rows > self.max_batch:
                break
            del self._pending[key]
            if not request.future.done():  # its caller may have gone away
                batch.append(request)
                rows += request.rows
        return batch

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._pending:
                await self._gather()
                batch = self._take_batch()
                if batch:
                    await loop.run_in_executor(self._executor, self._synthesize, batch, loop)

    def _active_streams(self) -> int:
        """Keys that asked at least twice, the last time within active_s or two syntheses' time (older keys are
        forgotten). The second bound keeps clients split over two batches together: when one group's synthesis
        ends, the other group asked one synthesis ago, and it must still count for the renderer to wait for it
        (with a fixed 0.25 s, 16 labelled streams at ~0.2 s a synthesis stayed split: 9.6 rows per batch)."""
        now = time.perf_counter()
        window = max(self.active_s, 2 * self._last_synthesis_s)
        for key in [k for k, (_, last) in self._seen.items() if now - last > window]:
            del self._seen[key]
        return sum(count > 1 for count, _ in self._seen.values())

    async def _gather(self) -> None:
        """Wait, at most gather_s or a tenth of the last synthesis (whichever is longer), until every active
        stream has a request waiting (or max_batch rows are). The second bound: after a long synthesis the event
        loop has as many frames to send and requests to read as there were rows (16 labelled streams on a busy
        host: over 10 ms), and a batch cut short splits the streams in two until a later wait rejoins them."""
        deadline = time.perf_counter() + max(self.gather_s, 0.1 * self._last_synthesis_s)
        while sum(r.rows for r in self._pending.values()) < self.max_batch and \
                len(self._pending) < self._active_streams():
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                return
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except asyncio.TimeoutError:
                return

    def _synthesize(self, batch: list[_Request], loop) -> None:
        """Runs in the worker thread: one synthesis for the batch; on an error, each request alone, so one
        request's bad input (a vector of another generator) fails only that request."""
        start = time.perf_counter()
        try:
            result = self.editor.apply_many([(r.latent, r.vectors) for r in batch], labels=batch[0].labels)
        except Exception as error:
            if len(batch) == 1:
                loop.call_soon_threadsafe(_settle, batch[0].future, None, error)
            else:
                for request in batch:
                    self._synthesize([request], loop)
            return
        seconds = time.perf_counter() - start
        self._last_synthesis_s = seconds
        rows = sum(r.rows for r in batch)
        self.batches += 1
        self.frames += len(batch)
        self.max_rows_seen = max(self.max_rows_seen, rows)
        frames = split_frames(result, [(r.rows, r.batched) for r in batch], [r.encode for r in batch], seconds)
        # One hand-over for the batch, after all its encoding: a frame settled as soon as it is made wakes the
        # event loop, whose thread then contends for the GIL with this one (16 frames: ~3.5 ms a batch more).
        loop.call_soon_threadsafe(_settle_all, list(zip((r.future for r in batch), frames)))


def split_frames(result: Result, shapes: list, encode: list, seconds: float) -> list[Frame]:
    """The frames of one synthesis: one per request, in order, given each request's (rows, whether a batch of
    scales was asked for) in `shapes`; the requests flagged in `encode` (one row each) also get their PNG fields,
    the whole batch converted at once (codec.frames)."""
    images = result.image.cpu()
    label_maps = None if result.labels is None else result.labels.cpu()
    total = sum(rows for rows, _ in shapes)
    starts = list(itertools.accumulate((rows for rows, _ in shapes), initial=0))
    wanted = [start for start, flag in zip(starts, encode) if flag]
    encoded = iter(codec.frames(images[wanted], None if label_maps is None else label_maps[wanted])
                   if wanted else ())
    frames = []
    for start, (rows, batched), flag in zip(starts, shapes, encode):
        image = images[start:start + rows]
        labels = None if label_maps is None else label_maps[start:start + rows]
        if not batched:
            image, labels = image[0], None if labels is None else labels[0]
        frames.append(Frame(Result(image, labels), total, seconds, next(encoded) if flag else None))
    return frames


def _settle_all(settled: list) -> None:
    for future, frame in settled:
        _settle(future, frame, None)


def _settle(future: asyncio.Future, value, error) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)
