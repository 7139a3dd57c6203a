"""The edit stream's speed: per-frame latency p50/p99 and frames/s over the websocket at K = 1, 4, 16 clients
on the bundled model, next to `Editor.apply` called directly in the same run; for frames of image + label map
(the default) and of the image alone (what the page streams while a slider moves).

    OMP_NUM_THREADS=2 python bench/serve.py [--seconds S] [--clients 1,4,16] [--json out/bench_serve.json]
    python bench/serve.py --in-process [--device cuda] [--markdown report.md]

The server is `editgan-fast serve` in a subprocess on 127.0.0.1 (its own interpreter, as deployed). It and
the direct measurement run with the same threading: OMP_NUM_THREADS (default 2) set before torch is imported,
the editor called from a worker thread (the server's renderer thread; OpenMP's settings are per thread).
Targets: stream overhead at K = 1 (p50) <= 15 % of apply's p50; K = 16 total frames/s >= 3x K = 1 (batching).
Each frame also carries the server's own timing, so the table splits the server's time into the synthesis and
the rest (queueing, PNG/base64 encoding, thread hand-overs).
Every row is measured in `--rounds` slices of seconds / rounds, the rows' slices interleaved (apply, K=1, K=4,
K=16, apply, ...), so that the ratios compare like with like on a drifting host; each load slice first runs
min(2, seconds) unrecorded (connections opening, the batching's phases settling: ~1 s at K = 16 with labels).
`--in-process`: the same K clients drive the service's BatchingRenderer in this process (frames encoded as the
stream's, no HTTP/websocket, no server process) on `--device`: the batching's own ratio, on any device, with no
web stack installed (the GPU check runs it on CUDA)."""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "2")  # before torch is imported; the server subprocess inherits it

import torch  # noqa: E402

from editgan_fast.editor import EditVector, default_editor  # noqa: E402
from editgan_fast.serve.load import (LoadResult, create_sessions, run_load, run_local_load,  # noqa: E402
                                     slider_positions)
from editgan_fast.serve.renderer import BatchingRenderer  # noqa: E402

START_TIMEOUT_S = 120


def percentile_ms(values, q):
    values = sorted(values)
    return 1e3 * values[min(len(values) - 1, math.ceil(q / 100 * len(values)) - 1)]


def time_apply(editor, latent, vector, seconds, labels):
    """Editor.apply (image and labels, or the image alone) at a moving scale, as a slider, for `seconds`: the
    per-frame times. Called in a worker thread, as the server's renderer calls the editor."""
    positions, times = slider_positions(0), []
    editor.apply(latent, {vector: 0.5})  # the styles' cache, warm as in the server
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(times) < 5:
        start = time.perf_counter()
        result = editor.apply_many([(latent, {vector: next(positions)})], labels=labels)
        result.image.cpu(), None if result.labels is None else result.labels.cpu()  # on the host, as a frame's
        times.append(time.perf_counter() - start)
    return times


def start_server(library):
    import httpx  # the web stack only where a server is measured: --in-process runs without it

    from editgan_fast.serve.local import free_port
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "editgan_fast.cli", "serve", "--quiet", "--port", str(port),
                                "--library", str(library)])
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        try:
            httpx.get(f"{url}/api/v1/info", timeout=5).raise_for_status()
            return process, url
        except httpx.HTTPError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise RuntimeError("the server did not start") from None
            time.sleep(0.2)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0, help="duration of each row's measurement")
    parser.add_argument("--rounds", type=int, default=3,
                        help="each row measured in this many slices, the rows' slices interleaved")
    parser.add_argument("--clients", default="1,4,16")
    parser.add_argument("--in-process", action="store_true",
                        help="in-process clients of the batching renderer instead of a server over websockets")
    parser.add_argument("--device", default="cpu", help="where the editor runs (--in-process only)")
    parser.add_argument("--json", help="also write the numbers here")
    parser.add_argument("--markdown", help="also append the table to this Markdown file")
    args = parser.parse_args(argv)
    if args.device != "cpu" and not args.in_process:
        parser.error("--device is for --in-process (the server takes its own --device)")
    clients = [int(k) for k in args.clients.split(",")]
    editor = default_editor(progress=False, device=args.device)
    g = editor.generator
    vector = EditVector(0.3 * torch.randn(g.num_ws, g.style_dim, generator=torch.Generator().manual_seed(1)), (5,),
                        "slide", editor.fingerprint)
    transport, loads = ("in-process", in_process_loads) if args.in_process else ("stream", server_loads)
    latent, slice_s, warm = editor.sample(1000), args.seconds / args.rounds, min(2.0, args.seconds)
    rows = []
    with loads(editor, vector, max(clients)) as load, ThreadPoolExecutor(1) as worker:
        for labels, mode in ((True, "image + labels"), (False, "image only")):
            load(max(clients), 0.0, labels, warm)  # the first frames of a mode (caches, allocator)
            times, results = [], {k: [] for k in clients}
            # Slices of every row in turn: the host's drift (a shared machine's neighbours) weighs on each row
            # alike, rather than on whichever row ran in a busy minute. Each slice's first `warm` seconds
            # (connections opening, the batching's phases settling) are not recorded.
            for _ in range(args.rounds):
                times += worker.submit(time_apply, editor, latent, vector, slice_s, labels).result()
                for k in clients:
                    results[k].append(load(k, slice_s, labels, warm))
            rows.append({"what": f"Editor.apply, {mode}", "p50_ms": percentile_ms(times, 50),
                         "p99_ms": percentile_ms(times, 99), "frames_per_s": len(times) / sum(times),
                         "batch_rows": 1})
            rows += [load_row(f"{transport} K={k}, {mode}", pooled(results[k])) for k in clients]
    table, verdicts = report(rows, clients, transport)
    print("\n".join(table + verdicts))
    if args.markdown:
        with open(args.markdown, "a") as f:
            f.write(f"\n#### bench/serve.py: the edit loop's batching, {transport}, on {editor.device}\n\n"
                    + "\n".join(table) + "\n\n" + "".join(f"- {v}\n" for v in verdicts))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(rows, indent=1))


def pooled(results):
    """One LoadResult of several slices of the same K."""
    return LoadResult(results[0].clients, sum(r.seconds for r in results), [run for r in results for run in r.runs])


def load_row(what, result):
    return {"what": what, "p50_ms": result.percentile_ms(50), "p99_ms": result.percentile_ms(99),
            "frames_per_s": result.frames_per_s, "batch_rows": result.mean_batch_rows,
            "synthesis_ms": result.median_ms("synthesis_ms"), "server_overhead_ms": result.median_ms("overhead_ms")}


@contextlib.contextmanager
def server_loads(editor, vector, clients):
    """`load(k, seconds, labels, warmup_s)`: k websocket clients (k <= clients, each its own session) of
    `editgan-fast serve` in a subprocess, serving `vector` as "slide"."""
    with tempfile.TemporaryDirectory() as tmp:
        vector.save(Path(tmp) / "library" / "slide.npz")
        process, url = start_server(Path(tmp) / "library")
        try:
            sessions = create_sessions(url, clients)
            yield lambda k, seconds, labels, warmup_s: asyncio.run(
                run_load(url, sessions[:k], "slide", seconds, labels=labels, warmup_s=warmup_s))
        finally:
            process.terminate()
            process.wait(timeout=30)


@contextlib.contextmanager
def in_process_loads(editor, vector, clients):
    """`load(k, seconds, labels, warmup_s)`: k in-process clients (each its own latent) of one BatchingRenderer on
    `editor`, kept with its render thread for every load on one event loop."""
    latents = [editor.sample(1000 + i) for i in range(clients)]
    loop = asyncio.new_event_loop()
    renderer = BatchingRenderer(editor)
    loop.run_until_complete(renderer.start())
    try:
        yield lambda k, seconds, labels, warmup_s: loop.run_until_complete(
            run_local_load(renderer, latents[:k], vector, seconds, labels, warmup_s))
    finally:
        loop.run_until_complete(renderer.stop())
        loop.close()


def report(rows, clients, transport):
    """The table's lines and the targets' verdicts."""
    table = ["| per frame | p50 ms | p99 ms | frames/s (all clients) | mean batch rows | server: synthesis ms | "
             "server: overhead ms |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        inside = (f"{r['synthesis_ms']:.1f} | {r['server_overhead_ms']:.1f}" if "synthesis_ms" in r else "- | -")
        table.append(f"| {r['what']} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['frames_per_s']:.1f} | "
                     f"{r['batch_rows']:.2f} | {inside} |")
    verdicts = []
    by_name = {r["what"]: r for r in rows}
    for mode in ("image + labels", "image only"):
        apply, one = by_name[f"Editor.apply, {mode}"], by_name.get(f"{transport} K=1, {mode}")
        if one:
            overhead = one["p50_ms"] / apply["p50_ms"] - 1
            verdicts.append(f"{mode}: {transport} overhead at K=1 (p50) {100 * overhead:+.1f} % of apply (target <= "
                         f"15 %): {'met' if overhead <= 0.15 else 'MISSED'}; inside the server "
                         f"{one['server_overhead_ms']:.1f} ms per frame besides a {one['synthesis_ms']:.1f} ms "
                         f"synthesis")
        many = by_name.get(f"{transport} K={max(clients)}, {mode}")
        if one and many and many is not one:
            ratio = many["frames_per_s"] / one["frames_per_s"]
            verdicts.append(f"{mode}: frames/s K={max(clients)} / K=1 {ratio:.2f}x (target >= 3x): "
                         f"{'met' if ratio >= 3 else 'MISSED'}")
    return table, verdicts


if __name__ == "__main__":
    main()
