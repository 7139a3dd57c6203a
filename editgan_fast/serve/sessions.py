"""Editing sessions: a latent (and, for an uploaded photo, the photo and where it was cropped), kept in an LRU
of bounded size. Evicting a session drops its Latent, and with it the editor's cached styles of that latent
(the editor's style cache is keyed weakly by Latent), so per-session memory is bounded too."""
from __future__ import annotations

import io as _io
import secrets
import threading
from collections import OrderedDict
from dataclasses import dataclass, field

from PIL import Image

from ..editor import Latent
from .errormap import Conflict, NotFound


@dataclass(frozen=True)
class Photo:
    """The photo a session was embedded from, kept as uploaded (compressed: decoded, a 16-megapixel photo would
    hold 48 MB per session), its size, and the square `box` (x0, y0, side) of it that was resized to the
    generator's resolution: edits are pasted back there."""
    data: bytes
    width: int
    height: int
    box: tuple[int, int, int]

    def image(self) -> Image.Image:
        return Image.open(_io.BytesIO(self.data)).convert("RGB")  # checked when it was uploaded


@dataclass
class Session:
    id: str
    latent: Latent
    photo: Photo | None = None
    history: list = field(default_factory=list)  # earlier latents (refine replaces the latent; undo restores)


class SessionStore:
    def __init__(self, max_sessions: int):
        self.max_sessions = max_sessions
        self._sessions: OrderedDict[str, Session] = OrderedDict()
        self._lock = threading.Lock()

    def create(self, latent: Latent, photo: Photo | None = None) -> Session:
        session = Session(secrets.token_hex(8), latent, photo)
        with self._lock:
            self._sessions[session.id] = session
            while len(self._sessions) > self.max_sessions:
                self._sessions.popitem(last=False)
        return session

    def get(self, session_id: str) -> Session:
        with self._lock:
            session = self._sessions.get(session_id)
            if session is None:
                raise NotFound(f"no session {session_id!r} (unknown, deleted, or evicted: the server keeps the "
                               f"{self.max_sessions} most recently used)")
            self._sessions.move_to_end(session_id)
            return session

    def replace_latent(self, session_id: str, latent: Latent) -> Session:
        session = self.get(session_id)
        with self._lock:
            session.history = (session.history + [session.latent])[-8:]
            session.latent = latent
        return session

    def undo(self, session_id: str) -> Session:
        """Restore the latent a refine replaced."""
        session = self.get(session_id)
        with self._lock:
            if not session.history:
                raise Conflict("nothing to undo: the session's latent was never replaced")
            session.latent = session.history.pop()
        return session

    def delete(self, session_id: str) -> None:
        with self._lock:
            if self._sessions.pop(session_id, None) is None:
                raise NotFound(f"no session {session_id!r}")

    def __len__(self):
        return len(self._sessions)
