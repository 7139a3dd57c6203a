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


async def _client(ws_url: str, vector: str, client: int, deadline: float, labels: bool) -> ClientRun:
    import websockets  # here, not at the top: run_local_load runs without the web clients installed
    run = ClientRun()
    positions = slider_positions(client)
    async with websockets.connect(ws_url, max_size=8 << 20, open_timeout=RECEIVE_TIMEOUT_S) as ws:
        seq = 0
        while time.perf_counter() < deadline:
            seq += 1
            scale = next(positions)
            sent = time.perf_counter()
            await ws.send(json.dumps({"seq": seq, "scales": {vector: scale}, "labels": labels}))
            while True:
                frame = json.loads(await asyncio.wait_for(ws.recv(), RECEIVE_TIMEOUT_S))
                if "error" in frame:
                    raise RuntimeError(f"the stream answered an error: {frame['message']}")
                if frame["seq"] == seq:
                    break
            run.latencies_s.append(time.perf_counter() - sent)
            run.batch_rows.append(frame["batch_rows"])
            run.synthesis_ms.append(frame["synthesis_ms"])
            run.server_ms.append(frame["server_ms"])
            run.last_frame, run.last_scale = frame, scale
    return run


def create_sessions(base_url: str, count: int) -> list[str]:
    import httpx  # here, not at the top: run_local_load runs without the web clients installed
    with httpx.Client(base_url=base_url, timeout=RECEIVE_TIMEOUT_S) as http:
        ids = []
        for i in range(count):
            response = http.post("/api/v1/sessions", json={"seed": 1000 + i})
            response.raise_for_status()
            ids.append(response.json()["id"])
    return ids


async def run_load(base_url: str, sessions: list[str], vector: str, seconds: float, labels: bool = True
                   ) -> LoadResult:
    """One client per session, all moving `vector`'s slider for `seconds` (the last frames may finish later);
    `labels=False`: image-only frames."""
    ws_base = base_url.replace("http://", "ws://", 1)
    start = time.perf_counter()
    deadline = start + seconds
    runs = await asyncio.gather(*(_client(f"{ws_base}/api/v1/sessions/{sid}/stream", vector, i, deadline, labels)
                                  for i, sid in enumerate(sessions)))
    return LoadResult(len(sessions), time.perf_counter() - start, list(runs))


async def _local_client(renderer, latent, vector, client: int, deadline: float, labels: bool) -> ClientRun:
    run = ClientRun()
    positions = slider_positions(client)
    key = object()
    while time.perf_counter() < deadline:
        scale = next(positions)
        sent = time.perf_counter()
        frame = await asyncio.wait_for(renderer.render(key, latent, {vector: scale}, labels=labels, encode=True),
                                       RECEIVE_TIMEOUT_S)
        elapsed = time.perf_counter() - sent
        run.latencies_s.append(elapsed)
        run.batch_rows.append(frame.batch_rows)
        run.synthesis_ms.append(frame.synthesis_s * 1e3)
        run.server_ms.append(elapsed * 1e3)  # in process, the client's round trip is all "server"
        run.last_frame, run.last_scale = frame, scale
    return run


async def run_local_load(renderer, latents: list, vector, seconds: float, labels: bool = True) -> LoadResult:
    """One in-process client per latent on a started renderer (a BatchingRenderer or a drop-in), all moving
    `vector`'s (an EditVector) slider for `seconds`; each frame is encoded as the stream's (PNG fields), so
    what is left out against `run_load` is only the HTTP/websocket transport and the client process."""
    start = time.perf_counter()
    deadline = start + seconds
    runs = await asyncio.gather(*(_local_client(renderer, latent, vector, i, deadline, labels)
                                  for i, latent in enumerate(latents)))
    return LoadResult(len(latents), time.perf_counter() - start, list(runs))
