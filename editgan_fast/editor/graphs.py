"""CUDA graphs for the real-time path: `Editor(..., cuda_graphs=True)` (or `editor.use_cuda_graphs()`) captures
`apply` once per batch shape and replays it.

Why: a warm `apply` is a few dozen kernel launches whose host-side cost (Python, dispatch, launches) rivals the
kernels themselves at preview sizes; a replay issues them all at once. The real-time path never synchronizes
with the host on the Triton backend (tests/test_triton_sync_free.py), so it can be captured.

What is captured, per key (number of scales B and of vectors K, noise mode, device and dtype of the styles):
one graph over static input buffers (the latent's per-layer styles [1, C], each vector's style deltas [1, C],
the scales [B, K]) writing static outputs (image [B, 3, H, W], labels [B, h, w]). Each call copies its scales
into the buffer, and a latent's or a vector's styles only when another cached style list than last time sits in
that slot (the graph keeps the lists it copied referenced, so the same list means the same values), replays,
and returns copies of the outputs: the next replay overwrites them.

What invalidates: a key not seen yet is a new capture, never a graph of another shape; a change of the backend
selection (`use_backend`), the models' weights changed in place (their version counters move) or the
segmenter's member views rebuilt drop every graph; so does `Editor.to`. At most `capacity` graphs are kept,
least recently used dropped first: each holds a private memory pool as large as one apply's activations.

A graph also reads what the backends derived from the weights (packed weights, filters, packed ensembles) at the
addresses it had at capture. The backends keep one such value per weight set and setting (dtype, shapes, device:
ops/_derived.py) for as long as the weights live, and rebuild it only when a weight changes in place, which drops
the graphs too: an eager call in another dtype or on another backend never frees what a graph reads.

The graph is an interface, `graph_type(fn, device)` with `.replay() -> outputs`: `CudaGraph` captures fn
with torch.cuda.CUDAGraph; `EagerGraph` re-runs fn on the same static buffers at every replay, so the
bookkeeping above runs and is tested without a GPU (a missed buffer copy shows there as a wrong result).
"""
from __future__ import annotations

import threading
import weakref
from collections import OrderedDict

import torch

from .. import backend
from ..errors import BackendUnavailable, InputValueError
from ..ops._derived import version
from .editor import Result, combine_styles

DEFAULT_CAPACITY = 4
WARMUP_CALLS = 2  # before a capture, on a side stream: compiles and autotunes kernels, fills per-layer caches


class CudaGraph:
    """fn captured in a torch.cuda.CUDAGraph: warmed up on a side stream (as torch requires: lazily built state
    must exist before capture, and nothing may synchronize during it), captured, replayed on demand."""

    @staticmethod
    def check_available():
        if not torch.cuda.is_available():
            why = "this torch is built without CUDA" if torch.version.cuda is None else "torch sees no CUDA device"
            raise BackendUnavailable(f"CUDA graphs need a CUDA device, but {why}; turn cuda_graphs off")

    def __init__(self, fn, device: torch.device):
        if device.type != "cuda":
            raise BackendUnavailable(f"CUDA graphs capture CUDA work, but the editor's models are on {device}: "
                                     f"move the editor with editor.to('cuda') or turn cuda_graphs off")
        with torch.cuda.device(device):
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(WARMUP_CALLS):
                    fn()
            current = torch.cuda.current_stream()
            current.wait_stream(side)
            self._graph = torch.cuda.CUDAGraph()
            try:
                # thread_local: a server's other threads may keep using the device while this one captures.
                with torch.cuda.graph(self._graph, capture_error_mode="thread_local"):
                    self.outputs = fn()
            except RuntimeError as e:
                torch.cuda.set_stream(current)  # a failed capture_end leaves the capture stream current
                raise BackendUnavailable(
                    f"apply could not be captured in a CUDA graph under backend {backend.current().name!r} "
                    f"(something in it synchronizes with the host; the triton backend's apply does not): "
                    f"{str(e).splitlines()[0]}") from e

    def replay(self):
        self._graph.replay()
        return self.outputs


class EagerGraph:
    """The graph interface without CUDA: "capture" runs fn once and keeps its outputs as the static ones, then
    poisons them (NaN, -1) as a real capture leaves them unwritten until the first replay; replay re-runs fn,
    which reads the static input buffers, and copies its results into those same outputs."""

    @staticmethod
    def check_available():
        pass

    def __init__(self, fn, device: torch.device):
        self._fn = fn
        self.outputs = fn()
        for t in self.outputs:
            t.fill_(float("nan") if t.is_floating_point() else -1)

    def replay(self):
        for static, fresh in zip(self.outputs, self._fn()):
            static.copy_(fresh)
        return self.outputs


class GraphedApply:
    """An editor's captured applies (see the module docstring); `Editor.apply` calls `apply` when graphs are on.
    `captures` counts the captures made, `held` the graphs held."""

    def __init__(self, editor, capacity: bool | int = True, graph_type=None):
        self.graph_type = graph_type or CudaGraph
        self.graph_type.check_available()
        if capacity is True:
            capacity = DEFAULT_CAPACITY
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise InputValueError(f"cuda_graphs must be True, False or the number of graphs to keep (>= 1), "
                                  f"got {capacity!r}")
        self.capacity = capacity
        self.captures = 0
        self._editor = weakref.proxy(editor)  # the editor holds this object: no cycle keeping graphs alive
        self._render = _renderer(self._editor)
        self._lock = threading.Lock()  # the static buffers are shared by a server's threads
        self._entries: OrderedDict = OrderedDict()  # key -> _Captured, least recently used first
        self.clear()

    @property
    def held(self) -> int:
        return len(self._entries)

    def clear(self):
        """Drop every graph (and what the graphs' state checks hold): the models moved or changed."""
        with self._lock:
            self._entries.clear()
            self._tensors = self._state = self._members = None

    def apply(self, latent, vectors) -> tuple[Result, bool]:
        """(Result [B, ...] as copies, whether a batch was asked for), like the editor's eager path."""
        base, deltas, scales, batched = self._editor._style_terms(latent, vectors)
        key = (tuple(scales.shape), self._editor.noise_mode, base[0].device, base[0].dtype)
        with self._lock:
            self._drop_if_stale()
            entry = self._entries.get(key)
            if entry is None:
                if len(self._entries) >= self.capacity:
                    self._entries.popitem(last=False)  # before capturing: its memory pool is freed first
                entry = _Captured(self.graph_type, self._render, base, deltas, scales)
                self._entries[key] = entry
                self.captures += 1
            else:
                self._entries.move_to_end(key)
                entry.load(base, deltas, scales)
            image, labels = entry.graph.replay()
            return Result(image.clone(), labels.clone()), batched

    def _drop_if_stale(self):
        """Drop every graph when the backend selection, the models' weights (in place) or the segmenter's member
        views changed since the graphs were captured: they would replay the old kernels or read old memory."""
        editor = self._editor
        if self._tensors is None:
            self._tensors = [t for m in (editor.generator, editor.segmenter)
                             for t in (*m.parameters(), *m.buffers())]
        state = (backend.current(), sum(version(t) for t in self._tensors))  # versions only grow
        members = editor.segmenter.members  # kept referenced, so `is` cannot match a recycled object
        if state != self._state or members is not self._members:
            self._entries.clear()
            self._state, self._members = state, members


class _Captured:
    """One captured apply: its static inputs, the graph, and the cached style lists the inputs were copied from
    (kept referenced, so an identity match means the buffers already hold those values)."""

    def __init__(self, graph_type, render, base, deltas, scales):
        device = base[0].device
        static_base = [s.clone() for s in base]
        static_deltas = [[s.clone() for s in delta] for delta in deltas]
        static_scales = torch.empty(scales.shape, dtype=scales.dtype, device=device)
        _copy_scales(static_scales, scales)
        self.buffers = [static_base, *static_deltas]
        self.sources = [base, *deltas]
        self.scales = static_scales
        # The recorded function reads only the static buffers (closed over, not through self: no cycle).
        self.graph = graph_type(lambda: render(combine_styles(static_base, static_deltas, static_scales)), device)

    def load(self, base, deltas, scales):
        for k, source in enumerate([base, *deltas]):
            if self.sources[k] is not source:
                for static, value in zip(self.buffers[k], source):
                    static.copy_(value)
                self.sources[k] = source
        _copy_scales(self.scales, scales)


def _renderer(editor):
    def render(styles):
        result = editor._render_styles(styles)
        return result.image, result.labels
    return render


def _copy_scales(static: torch.Tensor, scales: torch.Tensor):
    """Host scales into the device buffer without a host sync: from pinned memory, asynchronously (the caching
    host allocator keeps the pinned block until the copy has run)."""
    if static.is_cuda:
        scales = scales.pin_memory()
    static.copy_(scales, non_blocking=static.is_cuda)
