"""A load generator for the edit stream: K clients, each on its own latent, moving a slider for a fixed time.
Closed loop: a client asks for its next scale when the frame of the previous one arrived, so per-frame latency
is the round trip of one slider move. Every wait is bounded. Two transports:
- `run_load`: websocket clients of a running server (the service as deployed);
- `run_local_load`: in-process clients of a BatchingRenderer (the batching alone, no HTTP or websocket), which
  needs no web stack: the GPU check measures the batching with it where FastAPI is not installed."""
from __future__ import annotations

import asyncio
import json
import math
import statistics
import time
from dataclasses import dataclass, field

RECEIVE_TIMEOUT_S = 120.0


@dataclass
class ClientRun:
    latencies_s: list = field(default_factory=list)
    batch_rows: list = field(default_factory=list)
    synthesis_ms: list = field(default_factory=list)   # the server's synthesis of the frame's batch
    server_ms: list = field(default_factory=list)      # the server's time from receiving to sending
    last_frame: dict | None = None
    last_scale: float | None = None


@dataclass
class LoadResult:
    clients: int
    seconds: float
    runs: list

    @property
    def latencies_s(self) -> list:
        return [t for r in self.runs for t in r.latencies_s]

    @property
    def frames(self) -> int:
        return len(self.latencies_s)

    @property
    def frames_per_s(self) -> float:
        return self.frames / self.seconds

    def percentile_ms(self, q: float) -> float:
        values = sorted(self.latencies_s)
        return 1e3 * values[min(len(values) - 1, math.ceil(q / 100 * len(values)) - 1)] if values else math.nan

    def median_ms(self, what: str) -> float:
        """Median over all frames of a per-frame server figure: "synthesis_ms", "server_ms", or "overhead_ms"
        (server_ms - synthesis_ms: waiting, encoding and handing over, the part the service adds)."""
        if what == "overhead_ms":
            values = [a - b for r in self.runs for a, b in zip(r.server_ms, r.synthesis_ms)]
        else:
            values = [v for r in self.runs for v in getattr(r, what)]
        return statistics.median(values) if values else math.nan

    @property
    def max_batch_rows(self) -> int:
        return max((b for r in self.runs for b in r.batch_rows), default=0)

    @property
    def mean_batch_rows(self) -> float:
        rows = [b for r in self.runs for b in r.batch_rows]
        return statistics.fmean(rows) if rows else math.nan


def slider_positions(client: int):
    """A slider sweeping back and forth over [-1.5, 1.5], each client at its own phase."""
    step = 0
    while True:
        yield round(1.5 * math.sin(0.3 * step + client), 4)
        step += 1


async def _slide(client: int, deadline: float, record_from: float, render) -> ClientRun:
    """One client's closed loop until `deadline`: `await render(scale)` -> (frame, batch rows, synthesis ms,
    server ms, or None for the whole round trip) for the next slider position; frames received before
    `record_from` (the warm-up) are not recorded."""
    run = ClientRun()
    positions = slider_positions(client)
    while time.perf_counter() < deadline:
        scale = next(positions)
        sent = time.perf_counter()
        frame, batch_rows, synthesis_ms, server_ms = await render(scale)
        received = time.perf_counter()
        if received >= record_from:
            run.latencies_s.append(received - sent)
            run.batch_rows.append(batch_rows)
            run.synthesis_ms.append(synthesis_ms)
            run.server_ms.append((received - sent) * 1e3 if server_ms is None else server_ms)
        run.last_frame, run.last_scale = frame, scale
    return run


async def _client(ws_url: str, vector: str, client: int, deadline: float, record_from: float, labels: bool
                  ) -> ClientRun:
    import websockets  # here, not at the top: run_local_load runs without the web clients installed
    async with websockets.connect(ws_url, max_size=8 << 20, open_timeout=RECEIVE_TIMEOUT_S) as ws:
        seq = 0

        async def render(scale):
            nonlocal seq
            seq += 1
            await ws.send(json.dumps({"seq": seq, "scales": {vector: scale}, "labels": labels}))
            while True:
                frame = json.loads(await asyncio.wait_for(ws.recv(), RECEIVE_TIMEOUT_S))
                if "error" in frame:
                    raise RuntimeError(f"the stream answered an error: {frame['message']}")
                if frame["seq"] == seq:
                    return frame, frame["batch_rows"], frame["synthesis_ms"], frame["server_ms"]

        return await _slide(client, deadline, record_from, render)


def create_sessions(base_url: str, count: int) -> list[str]:
    import httpx  # here, not at the top: run_local_load runs without the web clients installed
    with httpx.Client(base_url=base_url, timeout=RECEIVE_TIMEOUT_S) as http:
        ids = []
        for i in range(count):
            response = http.post("/api/v1/sessions", json={"seed": 1000 + i})
            response.raise_for_status()
            ids.append(response.json()["id"])
    return ids


async def run_load(base_url: str, sessions: list[str], vector: str, seconds: float, labels: bool = True,
                   warmup_s: float = 0.0) -> LoadResult:
    """One client per session, all moving `vector`'s slider for `seconds` (the last frames may finish later)
    after `warmup_s` unrecorded (connections opening, the batching settling); `labels=False`: image-only frames."""
    ws_base = base_url.replace("http://", "ws://", 1)
    record_from = time.perf_counter() + warmup_s
    deadline = record_from + seconds
    runs = await asyncio.gather(*(_client(f"{ws_base}/api/v1/sessions/{sid}/stream", vector, i, deadline,
                                          record_from, labels) for i, sid in enumerate(sessions)))
    return LoadResult(len(sessions), time.perf_counter() - record_from, list(runs))


async def run_local_load(renderer, latents: list, vector, seconds: float, labels: bool = True,
                         warmup_s: float = 0.0) -> LoadResult:
    """One in-process client per latent on a started renderer (a BatchingRenderer or a drop-in), all moving
    `vector`'s (an EditVector) slider for `seconds` after `warmup_s` unrecorded; each frame is encoded as the
    stream's (PNG fields), so what is left out against `run_load` is only the HTTP/websocket transport and the
    client process. A client's `last_frame` is the renderer's Frame."""
    record_from = time.perf_counter() + warmup_s
    deadline = record_from + seconds

    async def client(i, latent):
        key = object()

        async def render(scale):
            frame = await asyncio.wait_for(renderer.render(key, latent, {vector: scale}, labels=labels, encode=True),
                                           RECEIVE_TIMEOUT_S)
            return frame, frame.batch_rows, frame.synthesis_s * 1e3, None  # in process the round trip is the server's

        return await _slide(i, deadline, record_from, render)

    runs = await asyncio.gather(*(client(i, latent) for i, latent in enumerate(latents)))
    return LoadResult(len(latents), time.perf_counter() - record_from, list(runs))
