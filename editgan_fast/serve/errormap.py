"""The service's one mapping of the package's errors to HTTP: a status and a JSON body {"error", "message"},
never a traceback. Errors the service itself raises (NotFound, Conflict, Busy) join the package's hierarchy
here."""
from __future__ import annotations

import json
import logging

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from ..errors import (BackendUnavailable, EditGANFastError, FileFormatError, InputValueError, LimitExceeded,
                      MismatchError)

log = logging.getLogger("editgan_fast.serve")


class NotFound(EditGANFastError, KeyError):
    """A session, job or vector id that the server does not hold (or no longer: sessions are evicted LRU)."""

    def __str__(self):
        return self.args[0] if self.args else "not found"


class Conflict(EditGANFastError, ValueError):
    """The request clashes with the server's state (a vector name already taken, a job already finished)."""


class Busy(EditGANFastError):
    """The server has as much work queued as it accepts (jobs); the client may retry later."""


# Most specific first: NonFiniteLoss is an InputValueError, the vector errors are FileFormat/Mismatch errors.
STATUS = ((NotFound, 404), (Conflict, 409), (Busy, 429), (LimitExceeded, 413), (MismatchError, 409), (FileFormatError, 422),
          (InputValueError, 422), (BackendUnavailable, 503), (ValueError, 422))


def status_of(error: BaseException) -> int:
    for kind, status in STATUS:
        if isinstance(error, kind):
            return status
    return 500


def message_of(error: BaseException) -> str:
    if status_of(error) == 500:
        return "internal error (details are in the server's log)"
    return str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)


def json_error_body(kind: str, message: str) -> bytes:
    return json.dumps({"error": kind, "message": message}).encode()


def error_fields(error: BaseException) -> dict:
    """{"error", "message", "status"} of an error (for a websocket message or a job); an unexpected one is
    logged with its traceback on the server and reported without it."""
    status = status_of(error)
    if status == 500:
        log.error("unexpected error", exc_info=error)
    return {"error": type(error).__name__, "message": message_of(error), "status": status}


def error_response(error: BaseException) -> JSONResponse:
    fields = error_fields(error)
    return JSONResponse({"error": fields["error"], "message": fields["message"]}, status_code=fields["status"])


def install(app) -> None:
    """Register the handlers on a FastAPI app."""

    async def package_error(request: Request, error: Exception):
        return error_response(error)

    # The 4xx kinds by name: a handler for plain Exception runs in Starlette's outermost middleware, which
    # re-raises after responding; it stays the catch-all for unexpected errors (500, no traceback sent).
    for kind in (EditGANFastError, ValueError, Exception):
        app.add_exception_handler(kind, package_error)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError):
        parts = []
        for e in error.errors()[:5]:
            where = ".".join(str(p) for p in e.get("loc", ()) if p != "body")
            parts.append(f"{where}: {e.get('msg', 'invalid')}" if where else e.get("msg", "invalid"))
        return JSONResponse({"error": "InputValueError", "message": "; ".join(parts) or "invalid request"},
                            status_code=422)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException):
        return JSONResponse({"error": "HTTPError", "message": str(error.detail)}, status_code=error.status_code)
