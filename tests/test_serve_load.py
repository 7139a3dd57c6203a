"""The websocket edit loop under load on 127.0.0.1: K = 1, 4, 16 clients moving sliders for a fixed short time
(bounded waits). Every client gets frames; at K = 16 the renderer batches several clients into one synthesis,
and the batched frames equal `Editor.apply` of each client's own latent and scale."""
import asyncio
import base64
import io as _io

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from editgan_fast import io
from editgan_fast.editor import EditVector, default_editor
from editgan_fast.serve import create_app
from editgan_fast.serve.load import create_sessions, run_load
from editgan_fast.serve.local import serving

SECONDS = 1.5


def test_stream_load_batches_concurrent_clients(tmp_path):
    editor = default_editor(progress=False)
    g = editor.generator
    vector = EditVector(0.3 * torch.randn(g.num_ws, g.style_dim, generator=torch.Generator().manual_seed(1)), (5,),
                        "slide", editor.fingerprint)
    vector.save(tmp_path / "slide.npz")
    results = {}
    with serving(create_app(editor, tmp_path / "library")) as url:
        response = httpx.post(f"{url}/api/v1/vectors", timeout=60,
                              files={"file": ("slide.npz", (tmp_path / "slide.npz").read_bytes())})
        assert response.status_code == 200, response.text
        for clients in (1, 4, 16):
            sessions = create_sessions(url, clients)
            results[clients] = asyncio.run(run_load(url, sessions, "slide", SECONDS))
        stats = httpx.get(f"{url}/api/v1/stats", timeout=60).json()["renderer"]
    for clients, result in results.items():
        assert all(run.latencies_s for run in result.runs), f"a client got no frame at K={clients}"
    assert results[1].max_batch_rows == 1
    assert results[16].max_batch_rows > 1, "16 concurrent clients were never batched"
    assert stats["batches"] < stats["frames"]
    for i in (0, 15):  # frames made in a batch are each client's own edit
        run = results[16].runs[i]
        want = editor.apply(editor.sample(1000 + i), {vector: run.last_scale}).image
        shown = np.asarray(Image.open(_io.BytesIO(base64.b64decode(run.last_frame["image"])))).astype(int)
        assert np.abs(shown - np.asarray(io.tensor_to_pil(want)).astype(int)).max() <= 1


def test_local_load_batches_in_process_clients():
    """run_local_load: K in-process clients of a BatchingRenderer (no HTTP) get frames encoded as the stream's;
    several are batched into one synthesis at K = 8, and each batched frame is its client's own edit."""
    from editgan_fast.serve.load import run_local_load
    from editgan_fast.serve.renderer import BatchingRenderer
    editor = default_editor(progress=False)
    g = editor.generator
    vector = EditVector(0.3 * torch.randn(g.num_ws, g.style_dim, generator=torch.Generator().manual_seed(2)))
    latents = [editor.sample(2000 + i) for i in range(8)]

    async def loads():
        renderer = BatchingRenderer(editor)
        await renderer.start()
        try:
            return [await run_local_load(renderer, latents[:k], vector, 1.0) for k in (1, 8)]
        finally:
            await renderer.stop()

    one, eight = asyncio.run(loads())
    assert one.max_batch_rows == 1 and one.frames > 0
    assert all(run.latencies_s for run in eight.runs) and eight.max_batch_rows > 1
    assert one.median_ms("overhead_ms") >= 0
    for i in (0, 7):
        run = eight.runs[i]
        want = editor.apply(latents[i], {vector: run.last_scale})
        shown = np.asarray(Image.open(_io.BytesIO(base64.b64decode(run.last_frame.encoded["image"])))).astype(int)
        assert np.abs(shown - np.asarray(io.tensor_to_pil(want.image)).astype(int)).max() <= 1
        labels = np.asarray(Image.open(_io.BytesIO(base64.b64decode(run.last_frame.encoded["labels"]))))
        assert np.array_equal(labels, want.labels.numpy())


def test_in_process_bench_runs_without_a_web_stack():
    """bench/serve.py --in-process (the GPU check's batching step) imports and runs with FastAPI, Starlette,
    uvicorn, httpx and websockets all unimportable, as on the GPU machine."""
    import os
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = ("import runpy, sys\n"
            "sys.modules.update(dict.fromkeys(['fastapi', 'starlette', 'uvicorn', 'httpx', 'websockets']))\n"
            "sys.argv = ['serve.py', '--in-process', '--seconds', '0.3', '--clients', '1,2']\n"
            "runpy.run_path('bench/serve.py', run_name='__main__')\n"
            "assert not any(sys.modules.get(m) for m in ('fastapi', 'httpx')), 'a web module was imported'\n")
    run = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, OMP_NUM_THREADS="2"))
    assert run.returncode == 0, run.stdout + run.stderr
    assert "| in-process K=2, image + labels |" in run.stdout and "| in-process K=1, image only |" in run.stdout
    assert "image + labels: frames/s K=2 / K=1" in run.stdout and "in-process overhead at K=1" in run.stdout
