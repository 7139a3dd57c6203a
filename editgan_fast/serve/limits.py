"""Resource limits of the service: every request is checked against them before any work or storage."""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import LimitExceeded


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int = 16 << 20          # any HTTP request body (uploads included)
    max_image_pixels: int = 4096 * 4096     # an uploaded photo, checked before it is decoded
    max_scales: int = 16                    # rows of one apply request (a batch of scales)
    max_vectors_per_edit: int = 16          # vectors composed in one edit
    max_steps: int = 1000                   # optimization steps of one job
    max_sessions: int = 64                  # sessions kept (least recently used evicted first)
    max_jobs: int = 64                      # jobs kept (finished ones evicted first)
    max_queued_jobs: int = 8                # jobs queued or running at once (more: 429, try later)
    max_library_vectors: int = 256          # vectors in the on-disk library
    max_ws_message_bytes: int = 64 << 10    # one websocket message from a client
    max_batch: int = 16                     # rows the renderer synthesizes at once

    def check(self, what: str, value: int, limit_name: str) -> None:
        limit = getattr(self, limit_name)
        if value > limit:
            raise LimitExceeded(f"{what} is {value}, the server's limit is {limit} ({limit_name})")


class BodySizeLimit:
    """ASGI middleware: a request whose body exceeds `max_bytes` gets 413 before the app reads all of it
    (checked against Content-Length up front and against the bytes actually received)."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or ()).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await _too_large(send, self.max_bytes)
        received = 0
        responded = False

        async def counting_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _BodyTooLarge()
            return message

        async def tracking_send(message):
            nonlocal responded
            responded = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except _BodyTooLarge:
            if not responded:
                await _too_large(send, self.max_bytes)


class _BodyTooLarge(Exception):
    pass


async def _too_large(send, limit: int) -> None:
    from .errormap import json_error_body
    body = json_error_body("LimitExceeded", f"the request body exceeds the server's limit of {limit} bytes "
                                            f"(max_body_bytes)")
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
