"""The streaming edit loop: a websocket per client on which it sends scale changes as fast as a slider moves,
{"seq": n, "scales": {name: scale}, "labels": true}, and receives frames {"seq", "image", "labels" (base64
PNGs), "batch_rows", "synthesis_ms", "server_ms"}. `"labels": false` asks for the image only (no segmentation,
most of a frame's cost on CPU): a client can drag with image-only frames and ask for labels when it settles.
Only the latest request is rendered: a message arriving while a frame is being made replaces any request still
waiting, and the renderer batches this client's frame with other clients'.
A bad message gets {"seq", "error", "message"} and the stream goes on."""
from __future__ import annotations

import asyncio
import contextlib
import json
import time

from fastapi import WebSocket, WebSocketDisconnect

from ..errors import InputValueError
from .errormap import error_fields
from .renderer import Superseded

CLOSE_NOT_FOUND = 4404


async def edit_stream(websocket: WebSocket, service, session_id: str) -> None:
    """Serve one client's stream until it disconnects."""
    await websocket.accept()
    try:
        session = service.sessions.get(session_id)
    except KeyError as e:
        await websocket.send_json(error_fields(e))
        await websocket.close(CLOSE_NOT_FOUND)
        return
    latest: dict = {}
    arrived = asyncio.Event()
    key = object()

    async def receive() -> None:
        while True:
            text = await websocket.receive_text()
            seq = None
            try:
                service.limits.check("the websocket message's size", len(text), "max_ws_message_bytes")
                message = json.loads(text)
                if not isinstance(message, dict) or not isinstance(message.get("scales", {}), dict) \
                        or not isinstance(message.get("labels", True), bool):
                    raise InputValueError('a stream message is {"seq": n, "scales": {vector name: scale}, '
                                          '"labels": true or false}')
                seq = message.get("seq")
                vectors = service.edit_of(message.get("scales", {}), one_row=True)
                latest.update(seq=seq, vectors=vectors, labels=message.get("labels", True),
                              received=time.perf_counter())
                arrived.set()
            except (ValueError, KeyError) as e:  # JSON, scale and vector-name errors: answer, keep streaming
                await websocket.send_json({"seq": seq, **error_fields(e)})

    async def render() -> None:
        while True:
            await arrived.wait()
            arrived.clear()
            request = dict(latest)
            try:
                frame = await service.renderer.render(key, session.latent, request["vectors"],
                                                      labels=request["labels"], encode=True)
            except Superseded:
                continue
            except Exception as e:
                await websocket.send_json({"seq": request["seq"], **error_fields(e)})
                continue
            await websocket.send_json({"seq": request["seq"], **frame.encoded, "batch_rows": frame.batch_rows,
                                       "synthesis_ms": round(frame.synthesis_s * 1e3, 3),
                                       "server_ms": round((time.perf_counter() - request["received"]) * 1e3, 3)})

    tasks = [asyncio.create_task(receive()), asyncio.create_task(render())]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            error = task.exception()
            if error is not None and not isinstance(error, WebSocketDisconnect):
                raise error
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, WebSocketDisconnect, RuntimeError):
                await task
