"""`serve --ray --replicas 2`: replica affinity on a local Ray Serve (127.0.0.1, started and shut down here).
A client that keeps the replica cookie (or sends the header) reaches its sessions on every request and its
websocket stream; requests naming no replica are spread over both replicas (so affinity is what makes the
first work)."""
import json

import pytest

ray = pytest.importorskip("ray")
httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
websockets_client = pytest.importorskip("websockets.sync.client")

from editgan_fast.editor import default_editor  # noqa: E402
from editgan_fast.serve.local import free_port  # noqa: E402
from ray_helpers import local_ray  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore:no LPIPS weights")
TIME_LIMIT_S = 420
API = "/api/v1"
CLIENTS = 12  # fresh clients: all landing on one of 2 replicas by chance has probability 2 ** -11


def make_default_editor():
    return default_editor(progress=False)


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    from editgan_fast.serve import ray_serve
    with local_ray(TIME_LIMIT_S, "the Ray Serve affinity tests", serve=True):
        yield ray_serve.run(make_default_editor, host="127.0.0.1", port=free_port(), num_replicas=2,
                            app_options={"library_dir": str(tmp_path_factory.mktemp("affinity") / "library")})


def test_a_client_keeps_its_replica_and_sessions(url):
    from editgan_fast.serve.ray_serve import AFFINITY_COOKIE, AFFINITY_HEADER
    replicas = set()
    for k in range(CLIENTS):
        with httpx.Client(base_url=url, timeout=120) as client:  # its own cookie jar
            created = client.post(f"{API}/sessions", json={"seed": k})
            assert created.status_code == 200, created.text
            replica, sid = created.headers[AFFINITY_HEADER], created.json()["id"]
            assert client.cookies[AFFINITY_COOKIE] == replica
            replicas.add(replica)
            for _ in range(4):
                r = client.get(f"{API}/sessions/{sid}")
                assert r.status_code == 200 and r.headers[AFFINITY_HEADER] == replica, r.text
                assert "set-cookie" not in r.headers  # the request named its replica: nothing to pin again
    assert len(replicas) == 2, "new clients all went to one replica"

    # the header alone pins a cookie-less client; no name at all spreads requests over both replicas
    with httpx.Client(base_url=url, timeout=120) as client:
        created = client.post(f"{API}/sessions", json={"seed": 99})
        replica, sid = created.headers[AFFINITY_HEADER], created.json()["id"]
    served_by = set()
    for _ in range(CLIENTS):
        pinned = httpx.get(f"{url}{API}/sessions/{sid}", headers={AFFINITY_HEADER: replica}, timeout=120)
        assert pinned.status_code == 200 and pinned.headers[AFFINITY_HEADER] == replica
        unpinned = httpx.get(f"{url}{API}/info", timeout=120)
        served_by.add(unpinned.headers[AFFINITY_HEADER])
    assert served_by == replicas


def test_the_stream_reaches_the_session_through_the_cookie(url):
    from editgan_fast.serve.ray_serve import AFFINITY_COOKIE
    with httpx.Client(base_url=url, timeout=120) as client:
        sid = client.post(f"{API}/sessions", json={"seed": 7}).json()["id"]
        cookie = f"{AFFINITY_COOKIE}={client.cookies[AFFINITY_COOKIE]}"
    for _ in range(4):  # unpinned, some of these would open on the other replica and be closed "not found"
        with websockets_client.connect("ws" + url.removeprefix("http") + f"{API}/sessions/{sid}/stream",
                                       additional_headers={"Cookie": cookie}, open_timeout=60) as ws:
            ws.send(json.dumps({"seq": 1, "scales": {}, "labels": False}))
            frame = json.loads(ws.recv(timeout=120))
            assert frame["seq"] == 1 and "image" in frame, frame
