"""`editgan-fast serve --ray`: the editing service's app (`create_app`, same API and page) deployed on Ray Serve.

Each replica builds the editor once and serves the FastAPI app built on it; its renderer batches the apply
requests of concurrent clients with Ray Serve's `@serve.batch` (up to `max_batch` requests, waiting at most
`wait_s` for more) into one `Editor.apply_many`.

Sessions, jobs and the loaded vector library live in a replica, so with more than one replica a client must
keep talking to the same one: **replica affinity**. Every response names its replica (header
`x-editgan-replica`, and a cookie `editgan_replica` when the request did not already carry that name); the
deployment's request router (`ReplicaAffinityRouter`) sends a request that names a live replica (the header,
else the cookie) to that replica, and any other request where Ray Serve's power-of-two-choices would. Browsers
keep the cookie (the page and its websocket stream stick to one replica with no change to the page); API
clients keep it with a cookie jar or send the header. A client whose replica died starts over on another
(its sessions are gone with the replica). Vectors uploaded through one replica are written to `library_dir`
but loaded by the others only when they start: give the replicas a shared folder and restart to share them.
"""
from __future__ import annotations

import asyncio
import pickle
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

from ray import serve
from ray.serve.config import RequestRouterConfig
# Serve's default router (power of two choices), which ReplicaAffinityRouter extends; not re-exported publicly
from ray.serve._private.request_router.pow_2_router import PowerOfTwoChoicesRequestRouter

from .app import create_app
from .renderer import Frame, Superseded, rows_of, split_frames

DEFAULT_MAX_BATCH = 16
DEFAULT_WAIT_S = 0.01


class ServeBatchRenderer:
    """The service's renderer interface (`render`, `start`, `stop`, `stats`) with Ray Serve doing the batching.
    Like the local BatchingRenderer, a request still waiting when a newer one of the same key arrives is not
    rendered (its caller gets `Superseded`): when Serve hands over a batch, each request that is no longer its
    key's latest is answered at once and only the rest are synthesized."""

    def __init__(self, editor, max_batch: int = DEFAULT_MAX_BATCH, wait_s: float = DEFAULT_WAIT_S):
        self.editor = editor
        self._batched.set_max_batch_size(max_batch)
        self._batched.set_batch_wait_timeout_s(wait_s)
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="render")  # synthesis off the event loop
        self._latest: dict = {}        # key -> token of its newest request not yet answered
        self.batch_sizes = Counter()   # requests per synthesis -> how many syntheses
        self.max_rows_seen = 0
        self.superseded = 0

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        self._executor.shutdown(wait=False)

    def stats(self) -> dict:
        return {"batches": sum(self.batch_sizes.values()),
                "frames": sum(size * n for size, n in self.batch_sizes.items()),
                "superseded": self.superseded, "max_batch_rows": self.max_rows_seen,
                "batch_sizes": {str(size): n for size, n in sorted(self.batch_sizes.items())}}

    async def render(self, key, latent, vectors: dict, labels: bool = True, encode: bool = False) -> Frame:
        """The frame of `latent` edited by `vectors` (its label map too unless `labels` is False; encoded as
        PNGs too if `encode`)."""
        token = object()
        self._latest[key] = token
        try:
            outcome = await self._batched((key, token, (latent, vectors, labels, encode)))
        finally:
            if self._latest.get(key) is token:
                del self._latest[key]
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    @serve.batch(max_batch_size=DEFAULT_MAX_BATCH, batch_wait_timeout_s=DEFAULT_WAIT_S)
    async def _batched(self, requests: list) -> list:
        outcomes = [None] * len(requests)
        live = []
        for i, (key, token, request) in enumerate(requests):
            if self._latest.get(key) is token:
                live.append(i)
            else:
                outcomes[i] = Superseded("a newer edit of this stream replaced this one")
                self.superseded += 1
        if live:
            loop = asyncio.get_running_loop()
            rendered = await loop.run_in_executor(self._executor, self._render_all, [requests[i][2] for i in live])
            for i, outcome in zip(live, rendered):
                outcomes[i] = outcome
        return outcomes

    def _render_all(self, requests: list) -> list:
        """Outcomes in request order: one synthesis for the requests that want labels, one for the others."""
        outcomes = [None] * len(requests)
        for want_labels in (True, False):
            group = [i for i, r in enumerate(requests) if r[2] == want_labels]
            if group:
                for i, outcome in zip(group, self._synthesize([requests[i][:2] for i in group], want_labels,
                                                              [requests[i][3] for i in group])):
                    outcomes[i] = outcome
        return outcomes

    def _synthesize(self, items: list, labels: bool, encode: list) -> list:
        """Frames of one synthesis; on an error, each request alone, so one request's bad input fails only it."""
        start = time.perf_counter()
        try:
            result = self.editor.apply_many(items, labels=labels)
        except Exception as error:
            return [error] if len(items) == 1 else [self._synthesize([item], labels, [e])[0]
                                                    for item, e in zip(items, encode)]
        seconds = time.perf_counter() - start
        shapes = [rows_of(vectors) for _, vectors in items]
        total = sum(rows for rows, _ in shapes)
        self.batch_sizes[len(items)] += 1
        self.max_rows_seen = max(self.max_rows_seen, total)
        return split_frames(result, shapes, encode, seconds)


AFFINITY_HEADER = "x-editgan-replica"
AFFINITY_COOKIE = "editgan_replica"


def affinity_token(headers) -> str | None:
    """The replica an ASGI request's [(name, value)] byte headers ask for: the header, else the cookie."""
    cookie = None
    for name, value in headers:
        name = name.lower()
        if name == AFFINITY_HEADER.encode():
            return value.decode("latin-1")
        if name == b"cookie":
            for part in value.decode("latin-1").split(";"):
                key, _, token = part.strip().partition("=")
                if key == AFFINITY_COOKIE:
                    cookie = token
    return cookie


class NameTheReplica:
    """ASGI middleware of a replica's app: every HTTP response carries the replica's name (header), and sets
    the cookie when the request did not name this replica (a new client, or one whose replica is gone)."""

    def __init__(self, app, replica: str):
        self.app, self.replica = app, replica

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        named = affinity_token(scope.get("headers", [])) == self.replica

        async def send_named(message):
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", [])) + [(AFFINITY_HEADER.encode(), self.replica.encode())]
                if not named:
                    headers.append((b"set-cookie", f"{AFFINITY_COOKIE}={self.replica}; Path=/; SameSite=Lax"
                                    .encode()))
                message = {**message, "headers": headers}
            await send(message)
        await self.app(scope, receive, send_named)


def _request_headers(pending_request) -> list:
    """The HTTP headers of a request being routed; [] for others. The proxy passes its ASGI scope pickled (by
    itself, inside the cluster: the replica unpickles the same bytes), the body apart, so this is small."""
    args = getattr(pending_request, "args", None) or [None]
    request = args[0]
    if isinstance(request, bytes):
        try:
            request = pickle.loads(request)
        except Exception:  # not an HTTP request from the proxy: no affinity
            return []
    scope = getattr(request, "asgi_scope", None) or getattr(request, "_asgi_scope", None)
    return scope.get("headers", []) if isinstance(scope, dict) else []


class ReplicaAffinityRouter(PowerOfTwoChoicesRequestRouter):
    """Ray Serve's default router, except that a request naming a live replica goes to that replica (it
    waits, with Serve's backoff, while that replica is full: affinity is never traded for load)."""

    async def choose_replicas(self, candidate_replicas, pending_request=None):
        token = affinity_token(_request_headers(pending_request)) if pending_request is not None else None
        if token:
            for replica in candidate_replicas:
                if replica.replica_id.unique_id == token:
                    return [[replica]]
        return await super().choose_replicas(candidate_replicas, pending_request)


@serve.ingress()
class EditingService:
    """One replica: the editor, built once by `make_editor()`, and the app over it."""

    def __init__(self, make_editor, app_options: dict, max_batch: int, wait_s: float):
        self.editor = make_editor()
        self.editor.progress = False  # jobs report progress through the API
        self.renderer = ServeBatchRenderer(self.editor, max_batch, wait_s)
        self.app_options = app_options
        self.replica = serve.get_replica_context().replica_id.unique_id

    def __serve_build_asgi_app__(self):
        app = create_app(self.editor, renderer=self.renderer, **self.app_options)
        app.add_middleware(NameTheReplica, replica=self.replica)
        return app


def deployment(make_editor, app_options: dict | None = None, num_replicas: int = 1, num_gpus: float = 0,
               max_batch: int = DEFAULT_MAX_BATCH, wait_s: float = DEFAULT_WAIT_S):
    """The bound Ray Serve application; `app_options` go to `create_app` (library_dir, limits, ...)."""
    options = {"num_replicas": num_replicas, "ray_actor_options": {"num_cpus": 1, "num_gpus": num_gpus},
               "request_router_config": RequestRouterConfig(request_router_class=ReplicaAffinityRouter)}
    return serve.deployment(EditingService, name="editgan-fast", **options).bind(
        make_editor, dict(app_options or {}), max_batch, wait_s)


def run(make_editor, host: str = "127.0.0.1", port: int = 8000, address: str | None = None, **options) -> str:
    """Start Ray Serve's HTTP proxy on host:port (joining the cluster at `address`, or a local Ray if none is
    initialized) and deploy the service at /; returns its URL while it keeps serving in the background."""
    import ray
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False)
    serve.start(http_options={"host": host, "port": port})
    serve.run(deployment(make_editor, **options), name="editgan-fast", route_prefix="/", blocking=False)
    return f"http://{host}:{port}"
