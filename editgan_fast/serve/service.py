"""The state one app serves: the editor, limits, sessions, vector library, jobs and renderer, and the one
translation of a request's {vector name: scale} into the editor's {EditVector: scale}."""
from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import InputValueError
from .jobs import JobManager
from .library import VectorStore
from .limits import Limits
from .sessions import SessionStore


@dataclass
class Service:
    editor: object
    limits: Limits
    sessions: SessionStore
    library: VectorStore
    jobs: JobManager
    renderer: object  # BatchingRenderer or a drop-in (render/start/stop/stats)
    class_names: list | None = None

    def edit_of(self, scales: dict, one_row: bool = False) -> dict:
        """{name: scale or [scales]} -> {EditVector: ...}: names in the library, scales finite numbers, counts
        within the limits; `one_row` refuses lists (requests that make one image)."""
        self.limits.check("the number of vectors in the edit", len(scales), "max_vectors_per_edit")
        vectors = {}
        for name, scale in scales.items():
            values = scale if isinstance(scale, list) else [scale]
            if isinstance(scale, list):
                if one_row:
                    raise InputValueError(f"this request takes one scale per vector, got a list for {name!r}")
                if not scale:
                    raise InputValueError(f"the scales of {name!r} are an empty list")
                self.limits.check(f"the number of scales of {name!r}", len(scale), "max_scales")
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values):
                raise InputValueError(f"the scale(s) of {name!r} must be finite numbers, got {scale!r}")
            vectors[self.library.get(name)] = [float(v) for v in scale] if isinstance(scale, list) else float(scale)
        return vectors
