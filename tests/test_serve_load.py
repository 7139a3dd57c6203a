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
