"""`serve --ray`: the service's app on a local Ray Serve (127.0.0.1, 2 CPUs, started and shut down here).
The service's own API tests run against it over HTTP, and concurrent clients' applies are batched."""
import contextlib
import json
import threading

import pytest

ray = pytest.importorskip("ray")
httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
websockets_client = pytest.importorskip("websockets.sync.client")

import test_serve_api as api  # noqa: E402  (the service's tests, rerun below against Ray Serve)
# Every test of the service's client except those needing a fresh app (test_bad_photos counts 0 sessions) or
# an in-process one (monkeypatched errors); the websocket test talks to Ray Serve's proxy through `WebSocket`.
from test_serve_api import (  # noqa: E402,F401
    test_apply_matches_editor_single_and_batch, test_bad_apply_requests, test_bad_latent_upload_stores_nothing,
    test_bad_learn_requests_store_nothing, test_bad_session_requests,
    test_bad_vector_uploads_store_nothing, test_cancel_learn_job, test_info_and_openapi,
    test_learn_job_stores_vector_and_reports_progress, test_oversized_body_is_413_and_stores_nothing,
    test_photo_embed_and_paste_back, test_refine_replaces_latent_and_undo_restores,
    test_session_from_latent_round_trip, test_session_from_seed_renders_like_the_editor,
    test_stream_frames_match_apply_and_errors_keep_the_stream, test_vector_library_upload_download_delete)

from editgan_fast.editor import default_editor  # noqa: E402
from editgan_fast.serve import Limits  # noqa: E402
from editgan_fast.serve.local import free_port  # noqa: E402
from ray_helpers import local_ray  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore:no LPIPS weights")
TIME_LIMIT_S = 480
K_CLIENTS = 8


def make_default_editor():
    return default_editor(progress=False)


@pytest.fixture(scope="module")
def editor():
    return make_default_editor()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(base URL, library folder) of one Ray Serve deployment for the whole module."""
    from editgan_fast.serve import ray_serve
    library = tmp_path_factory.mktemp("ray_serve") / "library"
    with local_ray(TIME_LIMIT_S, "the Ray Serve tests", serve=True):
        # the limits and preview cadence of the service tests' own client
        limits = Limits(max_body_bytes=2 << 20, max_image_pixels=400 * 400, max_scales=4, max_steps=50)
        url = ray_serve.run(make_default_editor, host="127.0.0.1", port=free_port(),
                            app_options={"library_dir": str(library), "limits": limits, "preview_every": 2},
                            wait_s=0.05)
        yield url, library


class WebSocket:
    """The part of TestClient's websocket session the service's stream test uses, over a real connection."""

    def __init__(self, connection):
        self.connection = connection

    def send_json(self, message):
        self.connection.send(json.dumps(message))

    def send_text(self, text):
        self.connection.send(text)

    def receive_json(self):
        return json.loads(self.connection.recv(timeout=120))


@pytest.fixture
def client(served):
    """An HTTP client of the deployment, its library emptied first (the tests expect a fresh one)."""
    url, library = served
    with httpx.Client(base_url=url, timeout=120) as c:
        for vector in c.get(f"{api.API}/vectors").json()["vectors"]:
            assert c.delete(f"{api.API}/vectors/{vector['name']}").status_code == 204
        c.library_dir = library

        @contextlib.contextmanager
        def websocket_connect(path):
            with websockets_client.connect("ws" + url.removeprefix("http") + path, open_timeout=60) as connection:
                yield WebSocket(connection)
        c.websocket_connect = websocket_connect
        yield c


def test_concurrent_clients_are_batched(client, editor):
    sid = api.new_session(client, seed=6)
    vector, r = api.store_vector(client, editor)
    assert r.status_code == 200, r.text
    before = client.get(f"{api.API}/stats").json()["renderer"]
    scales = [0.1 * k for k in range(K_CLIENTS)]
    frames, errors = {}, []
    barrier = threading.Barrier(K_CLIENTS)

    def one_client(k):
        try:
            with httpx.Client(base_url=str(client.base_url), timeout=120) as c:
                barrier.wait()
                for _ in range(3):
                    response = c.post(f"{api.API}/sessions/{sid}/apply", json={"scales": {"grow": scales[k]}})
                    assert response.status_code == 200, response.text
                frames[k] = response.json()["frames"][0]
        except Exception as e:  # reported below, in the test's thread
            errors.append(e)

    threads = [threading.Thread(target=one_client, args=(k,)) for k in range(K_CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    after = client.get(f"{api.API}/stats").json()["renderer"]
    assert after["frames"] - before["frames"] == 3 * K_CLIENTS
    assert max(int(size) for size in after["batch_sizes"]) > 1, after  # some synthesis served several clients
    latent = editor.sample(6)
    for k, frame in frames.items():  # a batched frame is the client's own edit (float32 batch rounding: 1 level)
        want = api.expected_image(editor.apply(latent, {vector: scales[k]}).image).astype(int)
        assert abs(api.b64png(frame["image"]).astype(int) - want).max() <= 1
