"""`create_app(editor, ...)`: the ASGI app of the editing service (API, websocket stream, the page).

One Editor serves every client; a deployment that scales differently (Ray Serve) passes its own renderer."""
from __future__ import annotations

import contextlib
from pathlib import Path

from fastapi import FastAPI, WebSocket
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from .. import __version__
from . import errormap
from .api import build_router
from .jobs import JobManager
from .library import VectorStore
from .limits import BodySizeLimit, Limits
from .renderer import BatchingRenderer
from .service import Service
from .sessions import SessionStore
from .stream import edit_stream

STATIC = Path(__file__).parent / "static"


def create_app(editor, library_dir="editgan-vectors", limits: Limits | None = None, renderer=None,
               preview_every: int = 5, class_names=None) -> FastAPI:
    """The service over `editor`, its vector library kept in `library_dir`; `renderer` defaults to a
    BatchingRenderer (anything with its async render/start/stop and stats will do); `class_names` label the
    page's brushes."""
    limits = limits or Limits()
    service = Service(editor, limits, SessionStore(limits.max_sessions), VectorStore(library_dir, editor, limits),
                      JobManager(limits.max_jobs, limits.max_queued_jobs, preview_every),
                      renderer or BatchingRenderer(editor, max_batch=limits.max_batch),
                      list(class_names) if class_names else None)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        await service.renderer.start()
        try:
            yield
        finally:
            await service.renderer.stop()
            service.jobs.shutdown()

    app = FastAPI(title="editgan-fast", version=__version__, lifespan=lifespan,
                  description="EditGAN-style semantic image editing: sessions, edits, vector library, jobs, and a "
                              "websocket edit stream (/api/v1/sessions/{id}/stream).")
    app.state.service = service
    errormap.install(app)
    app.include_router(build_router(service))

    @app.websocket("/api/v1/sessions/{session_id}/stream")
    async def stream(websocket: WebSocket, session_id: str):
        await edit_stream(websocket, service, session_id)

    @app.get("/", include_in_schema=False)
    def page():
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.add_middleware(BodySizeLimit, max_bytes=limits.max_body_bytes)
    return app
