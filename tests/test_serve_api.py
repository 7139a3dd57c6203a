"""The service's HTTP API and websocket stream through an in-process client, on the bundled model: every
endpoint against the editor called directly, and bad input -> 4xx with a message, nothing stored."""
import base64
import io as _io
import threading
import time
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from editgan_fast import io
from editgan_fast.editor import EditVector, default_editor
from editgan_fast.editor.demo import paint_enlarge
from editgan_fast.serve import Limits, codec, create_app

pytest.importorskip("fastapi")
with warnings.catch_warnings():  # starlette's notice that it prefers httpx2
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore:no LPIPS weights")

MOUTH = 5
API = "/api/v1"


@pytest.fixture(scope="module")
def editor():
    return default_editor(progress=False)


@pytest.fixture
def client(editor, tmp_path):
    limits = Limits(max_body_bytes=2 << 20, max_image_pixels=400 * 400, max_scales=4, max_steps=50)
    app = create_app(editor, library_dir=tmp_path / "library", limits=limits, preview_every=2)
    with TestClient(app, raise_server_exceptions=False) as c:
        c.library_dir = tmp_path / "library"
        yield c


def png_image(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(_io.BytesIO(data)))


def expected_image(result_image) -> np.ndarray:
    return np.asarray(io.tensor_to_pil(result_image))


def b64png(data: str) -> np.ndarray:
    return png_image(base64.b64decode(data))


def labels_b64(labels: torch.Tensor) -> str:
    buffer = _io.BytesIO()
    io.labels_to_pil(labels).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def assert_error(response, status, *words):
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) >= {"error", "message"} and "Traceback" not in response.text
    for w in words:
        assert w in body["message"], body["message"]


def wait_job(client, job_id, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"{API}/jobs/{job_id}").json()
        if job["state"] in ("done", "failed", "cancelled"):
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not finish in {timeout} s")


def new_session(client, seed=3):
    r = client.post(f"{API}/sessions", json={"seed": seed})
    assert r.status_code == 200, r.text
    return r.json()["id"]


def store_vector(client, editor, name="grow", seed=5, classes=(MOUTH,), fingerprint=None):
    delta = 0.3 * torch.randn(editor.generator.num_ws, editor.generator.style_dim,
                              generator=torch.Generator().manual_seed(seed))
    vector = EditVector(delta, classes, name, editor.fingerprint if fingerprint is None else fingerprint)
    buffer = _io.BytesIO()
    path = client.library_dir.parent / f"{name}-upload.npz"
    vector.save(path)
    buffer.write(path.read_bytes())
    return vector, client.post(f"{API}/vectors", files={"file": (f"{name}.npz", buffer.getvalue())})


def stored_files(client):
    return sorted(p.name for p in client.library_dir.iterdir())


# ---------------------------------------------------------------------------------------------- sessions
def test_info_and_openapi(client, editor):
    info = client.get(f"{API}/info").json()
    assert info["resolution"] == editor.generator.resolution and info["num_classes"] == editor.num_classes
    assert info["palette"][1] == [128, 0, 0] and info["limits"]["max_scales"] == 4
    paths = client.get("/openapi.json").json()["paths"]
    assert f"{API}/sessions/{{session_id}}/apply" in paths and f"{API}/vectors" in paths
    assert "editgan-fast" in client.get("/").text


def test_session_from_seed_renders_like_the_editor(client, editor):
    sid = new_session(client, seed=11)
    want = editor.render(editor.sample(11))
    assert np.array_equal(png_image(client.get(f"{API}/sessions/{sid}/image.png").content),
                          expected_image(want.image))
    assert np.array_equal(png_image(client.get(f"{API}/sessions/{sid}/labels.png").content), want.labels.numpy())
    assert client.get(f"{API}/sessions/{sid}").json()["id"] == sid
    assert client.delete(f"{API}/sessions/{sid}").status_code == 204
    assert_error(client.get(f"{API}/sessions/{sid}/image.png"), 404, sid)


def test_session_from_latent_round_trip(client, editor):
    sid = new_session(client, seed=4)
    data = client.get(f"{API}/sessions/{sid}/latent.npy").content
    assert np.array_equal(np.load(_io.BytesIO(data)), editor.sample(4).wplus.numpy())
    r = client.post(f"{API}/sessions/latent", files={"file": ("w.npy", data)})
    assert r.status_code == 200
    assert client.get(f"{API}/sessions/{r.json()['id']}/image.png").content == \
        client.get(f"{API}/sessions/{sid}/image.png").content


@pytest.mark.parametrize("payload, words", [
    (b"not a numpy file", ["not a NumPy .npy"]),
    (np.zeros((3, 4), np.float32), ["shape (3, 4)"]),
    (np.zeros((10, 64), np.int32), ["int32"]),
])
def test_bad_latent_upload_stores_nothing(client, payload, words):
    if isinstance(payload, np.ndarray):
        buffer = _io.BytesIO()
        np.save(buffer, payload)
        payload = buffer.getvalue()
    before = client.get(f"{API}/stats").json()["sessions"]
    assert_error(client.post(f"{API}/sessions/latent", files={"file": ("w.npy", payload)}), 422, *words)
    assert client.get(f"{API}/stats").json()["sessions"] == before


def test_bad_session_requests(client):
    assert_error(client.post(f"{API}/sessions", json={"seed": -1}), 422, "seed")
    assert_error(client.post(f"{API}/sessions", json={"seed": "x"}), 422, "seed")
    assert_error(client.get(f"{API}/sessions/nope"), 404, "nope")
    assert_error(client.get(f"{API}/jobs/nope"), 404, "nope")
    sid = new_session(client)
    assert_error(client.post(f"{API}/sessions/{sid}/undo"), 409, "nothing to undo")


def test_sessions_are_lru_bounded(editor, tmp_path):
    app = create_app(editor, library_dir=tmp_path / "lib", limits=Limits(max_sessions=2))
    with TestClient(app) as c:
        ids = [new_session(c, seed) for seed in range(3)]
        assert c.get(f"{API}/sessions/{ids[1]}").status_code == 200  # 1 becomes the most recent
        new_session(c, 9)                                               # evicts 2 (least recent), then 0 was gone
        assert [c.get(f"{API}/sessions/{i}").status_code for i in ids] == [404, 200, 404]


# ---------------------------------------------------------------------------------------------- apply
def test_apply_matches_editor_single_and_batch(client, editor):
    sid = new_session(client, seed=6)
    vector, r = store_vector(client, editor)
    assert r.status_code == 200, r.text
    latent = editor.sample(6)
    frames = client.post(f"{API}/sessions/{sid}/apply", json={"scales": {"grow": 0.7}}).json()["frames"]
    want = editor.apply(latent, {vector: 0.7})
    assert len(frames) == 1
    assert np.array_equal(b64png(frames[0]["image"]), expected_image(want.image))
    assert np.array_equal(b64png(frames[0]["labels"]), want.labels.numpy())
    frames = client.post(f"{API}/sessions/{sid}/apply", json={"scales": {"grow": [0, 0.5, 1.5]}}).json()["frames"]
    want = editor.apply(latent, {vector: [0, 0.5, 1.5]})
    assert len(frames) == 3
    for row, frame in enumerate(frames):
        assert np.array_equal(b64png(frame["image"]), expected_image(want.image[row]))
    png = client.post(f"{API}/sessions/{sid}/result.png", json={"scales": {"grow": 1.5}}).content
    assert np.array_equal(png_image(png), expected_image(want.image[2]))


def test_bad_apply_requests(client, editor):
    sid = new_session(client)
    store_vector(client, editor)
    url = f"{API}/sessions/{sid}/apply"
    assert_error(client.post(url, json={"scales": {"missing": 1}}), 404, "missing")
    assert_error(client.post(url, json={"scales": {"grow": [1, 2, 3, 4, 5]}}), 413, "max_scales")
    assert_error(client.post(url, json={"scales": {"grow": []}}), 422, "empty")
    assert_error(client.post(url, json={"scales": {"grow": "big"}}), 422, "scales")
    assert_error(client.post(url, content=b"{not json", headers={"content-type": "application/json"}), 422)
    assert_error(client.post(f"{API}/sessions/{sid}/result.png", json={"scales": {"grow": [1, 2]}}), 422,
                 "one scale")


def test_unexpected_error_is_500_without_traceback(client, editor, monkeypatch):
    sid = new_session(client)

    def broken(items):
        raise RuntimeError("secret internals")
    monkeypatch.setattr(editor, "apply_many", broken)
    r = client.get(f"{API}/sessions/{sid}/image.png")
    assert r.status_code == 500 and "secret" not in r.text and "Traceback" not in r.text
    assert r.json()["message"].startswith("internal error")


# ---------------------------------------------------------------------------------------------- learn, refine
def painted(editor, seed):
    labels = editor.render(editor.sample(seed)).labels
    return paint_enlarge(labels, grown=MOUTH)[0]


def test_learn_job_stores_vector_and_reports_progress(client, editor):
    sid = new_session(client, seed=2)
    r = client.post(f"{API}/sessions/{sid}/learn",
                    json={"labels_png": labels_b64(painted(editor, 2)), "name": "mouth", "steps": 4})
    assert r.status_code == 200, r.text
    job = wait_job(client, r.json()["id"])
    assert job["state"] == "done", job
    steps = [e["step"] for e in job["events"]]
    assert steps == list(range(5)) and {"total", "ce"} <= set(job["events"][-1]["terms"])
    previews = [e for e in job["events"] if "preview" in e]
    assert [e["step"] for e in previews] == [0, 2, 4]
    assert b64png(previews[0]["preview"]).shape == (64, 64, 3)
    assert len(client.get(f"{API}/jobs/{job['id']}", params={"after": 3}).json()["events"]) == 1
    assert job["result"]["vector"]["name"] == "mouth" and job["result"]["vector"]["classes"] == [MOUTH]
    assert stored_files(client) == ["mouth.npz"]
    # The stored vector is what the API applies: download it and apply it with the editor.
    vector = EditVector.load(_save(client, "mouth"), editor.generator)
    assert vector.delta.abs().sum() > 0
    frame = client.post(f"{API}/sessions/{sid}/apply", json={"scales": {"mouth": 1.0}}).json()["frames"][0]
    assert np.array_equal(b64png(frame["image"]), expected_image(editor.apply(editor.sample(2), {vector: 1.0}).image))


def _save(client, name):
    path = client.library_dir.parent / f"downloaded-{name}.npz"
    r = client.get(f"{API}/vectors/{name}")
    assert r.status_code == 200
    path.write_bytes(r.content)
    return path


def test_bad_learn_requests_store_nothing(client, editor):
    sid = new_session(client, seed=2)
    url = f"{API}/sessions/{sid}/learn"
    good = painted(editor, 2)
    unknown = good.clone()
    unknown[:4, :4] = 7
    unchanged = editor.render(editor.sample(2)).labels
    cases = [
        ({"labels_png": labels_b64(good[:32]), "name": "a"}, 422, ["64x32 (W x H)"]),
        ({"labels_png": labels_b64(unknown), "name": "a"}, 422, ["unknown class id(s) [7]"]),
        ({"labels_png": labels_b64(unchanged), "name": "a"}, 422, ["no edit"]),
        ({"labels_png": labels_b64(good), "name": "a", "classes": [9]}, 422, ["unknown class id 9"]),
        ({"labels_png": "%%%", "name": "a"}, 422, ["base64"]),
        ({"labels_png": base64.b64encode(b"GIF89a junk").decode(), "name": "a"}, 422, ["not an image"]),
        ({"labels_png": labels_b64(good), "name": "../etc"}, 422, ["vector names"]),
        ({"labels_png": labels_b64(good), "name": "a", "steps": 51}, 413, ["max_steps"]),
        ({"labels_png": labels_b64(good), "name": "a", "region": "all"}, 422, ["region"]),
    ]
    for body, status, words in cases:
        assert_error(client.post(url, json={"steps": 4, **body}), status, *words)
    store_vector(client, editor, name="taken")
    assert_error(client.post(url, json={"labels_png": labels_b64(good), "name": "taken", "steps": 4}), 409, "taken")
    assert stored_files(client) == ["taken.npz"]


def test_cancel_learn_job(client, editor):
    sid = new_session(client, seed=2)
    r = client.post(f"{API}/sessions/{sid}/learn",
                    json={"labels_png": labels_b64(painted(editor, 2)), "name": "slow", "steps": 50})
    job_id = r.json()["id"]
    assert client.delete(f"{API}/jobs/{job_id}").status_code == 200
    job = wait_job(client, job_id)
    assert job["state"] == "cancelled" and len(job["events"]) < 51
    assert stored_files(client) == [] and client.get(f"{API}/vectors").json()["vectors"] == []
    assert_error(client.delete(f"{API}/jobs/{job_id}"), 409, "already finished")


def test_job_queue_is_bounded(editor, tmp_path):
    app = create_app(editor, library_dir=tmp_path / "lib", limits=Limits(max_queued_jobs=1))
    with TestClient(app) as c:
        sid = new_session(c, seed=2)
        body = {"labels_png": labels_b64(painted(editor, 2)), "steps": 200}
        first = c.post(f"{API}/sessions/{sid}/learn", json={**body, "name": "one"}).json()["id"]
        assert_error(c.post(f"{API}/sessions/{sid}/learn", json={**body, "name": "two"}), 429, "max_queued_jobs")
        c.delete(f"{API}/jobs/{first}")
        assert wait_job(c, first)["state"] == "cancelled"
        assert c.post(f"{API}/sessions/{sid}/learn", json={**body, "name": "two", "steps": 1}).status_code == 200


def test_refine_replaces_latent_and_undo_restores(client, editor):
    sid = new_session(client, seed=2)
    vector, _ = store_vector(client, editor)
    before = client.get(f"{API}/sessions/{sid}/latent.npy").content
    job = wait_job(client, client.post(f"{API}/sessions/{sid}/refine",
                                       json={"scales": {"grow": 1.0}, "steps": 3}).json()["id"])
    assert job["state"] == "done" and job["result"]["session"]["undo_depth"] == 1
    refined = np.load(_io.BytesIO(client.get(f"{API}/sessions/{sid}/latent.npy").content))
    applied = editor.edited_wplus(editor.sample(2), {vector: 1.0}).numpy()
    assert not np.array_equal(refined, np.load(_io.BytesIO(before)))
    assert np.abs(refined - applied).max() < 0.5  # refine starts at the applied edit and moves a little
    client.post(f"{API}/sessions/{sid}/undo")
    assert client.get(f"{API}/sessions/{sid}/latent.npy").content == before
    assert_error(client.post(f"{API}/sessions/{sid}/refine", json={"scales": {"grow": [1, 2]}}), 422)


# ---------------------------------------------------------------------------------------------- vectors
def test_vector_library_upload_download_delete(client, editor):
    vector, r = store_vector(client, editor, name="v1")
    assert r.json()["vectors"][0]["name"] == "v1"
    npy = _io.BytesIO()
    np.save(npy, vector.delta.numpy()[None])
    r = client.post(f"{API}/vectors", files={"file": ("editgan.npy", npy.getvalue())}, data={"classes": "4,5"})
    assert r.status_code == 200 and r.json()["vectors"][0] == {**r.json()["vectors"][0], "name": "editgan",
                                                               "classes": [4, 5]}
    EditVector(-vector.delta, (4,), "st", editor.fingerprint).save(client.library_dir.parent / "st.safetensors")
    r = client.post(f"{API}/vectors", files={"file": ("st.safetensors",
                                                      (client.library_dir.parent / "st.safetensors").read_bytes())})
    assert r.status_code == 200, r.text
    assert [v["name"] for v in client.get(f"{API}/vectors").json()["vectors"]] == ["v1", "editgan", "st"]
    loaded = EditVector.load(_save(client, "v1"), editor.generator)
    assert torch.equal(loaded.delta, vector.delta) and loaded.classes == (MOUTH,)
    assert client.delete(f"{API}/vectors/v1").status_code == 204
    assert stored_files(client) == ["editgan.npz", "st.npz"]
    assert_error(client.get(f"{API}/vectors/v1"), 404, "v1")
    assert_error(client.delete(f"{API}/vectors/v1"), 404, "v1")


def test_library_persists_across_restarts(editor, tmp_path):
    for expected in ([], ["kept"]):
        with TestClient(create_app(editor, library_dir=tmp_path / "lib")) as c:
            c.library_dir = tmp_path / "lib"
            assert [v["name"] for v in c.get(f"{API}/vectors").json()["vectors"]] == expected
            if not expected:
                store_vector(c, editor, name="kept")


def test_bad_vector_uploads_store_nothing(client, editor):
    store_vector(client, editor, name="first")
    _, r = store_vector(client, editor, name="other", fingerprint="0123456789abcdef")
    assert_error(r, 409, "not for this one")
    _, r = store_vector(client, editor, name="first")
    assert_error(r, 409, "already has")
    _, r = store_vector(client, editor, name="badclass", classes=(9,))
    assert_error(r, 422, "unknown class id")
    wrong = _io.BytesIO()
    np.save(wrong, np.zeros((1, 3, 64), np.float32))
    assert_error(client.post(f"{API}/vectors", files={"file": ("w.npy", wrong.getvalue())}), 409, "shape")
    assert_error(client.post(f"{API}/vectors", files={"file": ("w.npz", b"PK\x03\x04garbage")}), 422, "readable")
    assert_error(client.post(f"{API}/vectors", files={"file": ("w.txt", b"hello")}), 422, ".npz")
    assert_error(client.post(f"{API}/vectors", files={"file": ("w.npy", b"\x93NUMPY junk")}), 422, "npy")
    assert stored_files(client) == ["first.npz"]


def test_oversized_body_is_413_and_stores_nothing(client):
    big = b"\0" * (3 << 20)
    assert_error(client.post(f"{API}/vectors", files={"file": ("big.npz", big)}), 413, "max_body_bytes")
    assert_error(client.post(f"{API}/sessions/latent", files={"file": ("w.npy", big)}), 413, "max_body_bytes")
    assert stored_files(client) == []


# ---------------------------------------------------------------------------------------------- photos
def photo_bytes(editor, size=(150, 120), fmt="PNG"):
    face = io.tensor_to_pil(editor.render(editor.sample(8)).image).resize((100, 100))
    canvas = Image.new("RGB", size, (40, 90, 160))
    canvas.paste(face, (30, 10))
    buffer = _io.BytesIO()
    canvas.save(buffer, format=fmt)
    return buffer.getvalue(), canvas


def test_photo_embed_and_paste_back(client, editor):
    data, photo = photo_bytes(editor)
    r = client.post(f"{API}/sessions/photo", files={"file": ("p.png", data)}, data={"steps": "3", "box": "30,10,100"})
    job = wait_job(client, r.json()["id"])
    assert job["state"] == "done" and [e["step"] for e in job["events"]] == [0, 1, 2, 3]
    session = job["result"]["session"]
    assert session["photo"] == {"width": 150, "height": 120, "box": [30, 10, 100]}
    store_vector(client, editor)
    out = png_image(client.post(f"{API}/sessions/{session['id']}/composite.png",
                                json={"scales": {"grow": 1.0}}).content).astype(int)
    original = np.asarray(photo).astype(int)
    assert out.shape == original.shape
    outside = np.ones(out.shape[:2], bool)
    outside[10:110, 30:130] = False
    assert np.array_equal(out[outside], original[outside])  # nothing outside the crop changes
    assert np.abs(out - original)[~outside].max() > 0       # the edit shows inside it
    no_photo = new_session(client)
    assert_error(client.post(f"{API}/sessions/{no_photo}/composite.png", json={"scales": {}}), 409, "photo")


def test_bad_photos(client, editor):
    url = f"{API}/sessions/photo"

    def post(data, **form):
        return client.post(url, files={"file": ("p.png", data)}, data={"steps": "3", **form})
    big, _ = photo_bytes(editor, size=(500, 400))
    assert_error(post(big), 413, "max_image_pixels")
    data, _ = photo_bytes(editor)
    assert_error(post(data[:200]), 422, "not an image")
    assert_error(post(data, box="100,100,80"), 422, "crop box")
    assert_error(post(data, box="a,b"), 422, "box")
    assert_error(post(data, steps="99"), 413, "max_steps")
    assert client.get(f"{API}/stats").json()["sessions"] == 0


# ---------------------------------------------------------------------------------------------- stream
def test_stream_frames_match_apply_and_errors_keep_the_stream(client, editor):
    sid = new_session(client, seed=7)
    vector, _ = store_vector(client, editor)
    with client.websocket_connect(f"{API}/sessions/{sid}/stream") as ws:
        ws.send_json({"seq": 1, "scales": {"nope": 1}})
        error = ws.receive_json()
        assert error["seq"] == 1 and error["status"] == 404 and "nope" in error["message"]
        ws.send_text("{broken")
        assert ws.receive_json()["status"] == 422
        ws.send_json({"seq": 2, "scales": {"grow": 0.5}})
        frame = ws.receive_json()
        assert frame["seq"] == 2 and frame["batch_rows"] == 1
        want = editor.apply(editor.sample(7), {vector: 0.5})
        assert np.array_equal(b64png(frame["image"]), expected_image(want.image))
        assert np.array_equal(b64png(frame["labels"]), want.labels.numpy())
        ws.send_json({"seq": 3, "scales": {"grow": 0.5}, "labels": False})
        frame = ws.receive_json()
        assert frame["seq"] == 3 and "labels" not in frame
        assert np.array_equal(b64png(frame["image"]), expected_image(want.image))
        ws.send_json({"seq": 4, "scales": {"grow": 0.5}, "labels": "no"})
        assert ws.receive_json()["status"] == 422
    with client.websocket_connect(f"{API}/sessions/unknown/stream") as ws:
        assert ws.receive_json()["error"] == "NotFound"


class GatedEditor:
    """The real editor behind a gate: apply_many waits until the test opens it, so requests pile up."""

    def __init__(self, editor):
        self.editor, self.gate, self.calls = editor, threading.Event(), []

    def __getattr__(self, name):
        return getattr(self.editor, name)

    def apply_many(self, items, labels=True):
        self.gate.wait(timeout=30)
        self.calls.append((len(items), labels))
        return self.editor.apply_many(items, labels=labels)


def test_renderer_coalesces_and_batches(editor):
    import asyncio
    from editgan_fast.serve.renderer import BatchingRenderer, Superseded

    gated = GatedEditor(editor)
    vector = EditVector(0.2 * torch.randn(editor.generator.num_ws, editor.generator.style_dim), (MOUTH,), "v",
                        editor.fingerprint)
    latents = [editor.sample(s) for s in range(3)]

    async def scenario():
        renderer = BatchingRenderer(gated, max_batch=16)
        await renderer.start()
        first = asyncio.create_task(renderer.render("a", latents[0], {vector: 1.0}))
        await asyncio.sleep(0.2)  # "a" is in the (gated) synthesis now
        stale = asyncio.create_task(renderer.render("b", latents[1], {vector: 0.1}))
        await asyncio.sleep(0)
        tasks = [asyncio.create_task(renderer.render("b", latents[1], {vector: 0.9}, encode=True)),
                 asyncio.create_task(renderer.render("image-only", latents[0], {vector: 0.3}, labels=False)),
                 asyncio.create_task(renderer.render("c", latents[2], {vector: [0.0, 2.0]})),
                 asyncio.create_task(renderer.render("d", latents[0], {vector: -0.4}, encode=True))]
        await asyncio.sleep(0.05)
        gated.gate.set()
        results = await asyncio.gather(first, tasks[0], tasks[2], tasks[1], tasks[3])
        with pytest.raises(Superseded):
            await stale
        await renderer.stop()
        return results, renderer.stats()

    (a, b, c, image_only, d), stats = asyncio.run(scenario())
    # "a" alone; then b, c and d (labels) in one synthesis; the image-only request in its own.
    assert gated.calls == [(1, True), (3, True), (1, False)]
    assert stats["superseded"] == 1 and stats["max_batch_rows"] == 4
    assert image_only.result.labels is None
    torch.testing.assert_close(image_only.result.image, editor.apply(latents[0], {vector: 0.3}).image,
                               atol=2e-5, rtol=0)
    assert (b.batch_rows, c.batch_rows, d.batch_rows) == (4, 4, 4)
    assert a.encoded is None and c.encoded is None  # PNG fields only where asked for (b and d, rows 0 and 3)
    for frame, (latent, scales) in zip((a, b, c, d), [(latents[0], 1.0), (latents[1], 0.9), (latents[2], [0.0, 2.0]),
                                                      (latents[0], -0.4)]):
        want = editor.apply(latent, {vector: scales})
        torch.testing.assert_close(frame.result.image, want.image, atol=2e-5, rtol=0)
        assert torch.equal(frame.result.labels, want.labels)
        if frame.encoded is not None:
            assert frame.encoded == codec.frames(frame.result.image[None], frame.result.labels[None])[0]
            shown = np.asarray(Image.open(_io.BytesIO(base64.b64decode(frame.encoded["image"])))).astype(int)
            assert np.abs(shown - np.asarray(io.tensor_to_pil(want.image)).astype(int)).max() <= 1


def test_renderer_waits_for_the_other_active_streams(editor):
    """Right after a synthesis the streams' next requests trickle in: a request waits (within gather_s) for the
    other active streams' (keys that asked twice) so they share one synthesis; a lone stream and a stream gone
    quiet for active_s never make it wait (gather_s is 30 s here: a wait would run into the 10 s timeouts)."""
    import asyncio
    from editgan_fast.serve.renderer import BatchingRenderer

    vector = EditVector(0.2 * torch.randn(editor.generator.num_ws, editor.generator.style_dim), (MOUTH,), "v",
                        editor.fingerprint)
    latent = editor.sample(4)

    async def scenario():
        renderer = BatchingRenderer(editor, max_batch=16, gather_s=30.0, active_s=1.0)
        await renderer.start()
        render = lambda key, scale: asyncio.wait_for(renderer.render(key, latent, {vector: scale}), 10)
        solo = [(await render("solo", 0.1 * i)).batch_rows for i in range(3)]  # one stream: never waits
        await asyncio.sleep(1.2)  # "solo" is no longer active
        rounds = [f.batch_rows for _ in range(2) for f in await asyncio.gather(render("a", 0.5), render("b", 0.6))]
        late_a = asyncio.create_task(render("a", 0.7))
        await asyncio.sleep(0.5)  # "a" waits for "b", a stream that is active too
        assert not late_a.done()
        pair = [(await render("b", 0.9)).batch_rows, (await late_a).batch_rows]
        await asyncio.sleep(1.2)  # "b" went quiet: "a" alone again
        alone = (await render("a", 0.2)).batch_rows
        await renderer.stop()
        return solo, rounds, pair, alone

    solo, rounds, pair, alone = asyncio.run(scenario())
    assert solo == [1, 1, 1] and rounds == [2, 2, 2, 2] and pair == [2, 2] and alone == 1


class SlowEditor(GatedEditor):
    """A synthesis that takes `seconds` (longer than the renderer's active_s), as 16 labelled frames on a slow
    host."""

    def __init__(self, editor, seconds):
        super().__init__(editor)
        self.gate.set()
        self.seconds = seconds

    def apply_many(self, items, labels=True):
        time.sleep(self.seconds)
        return super().apply_many(items, labels)


def late_partner_rows(editor, synthesis_s, gather_s, active_s, late_s):
    """Two streams "a" and "b" that asked twice together, then "b" asks `late_s` after "a", on a renderer whose
    syntheses take `synthesis_s`: the batch rows of both frames ([2, 2] when "a" waited for "b")."""
    import asyncio
    from editgan_fast.serve.renderer import BatchingRenderer

    vector = EditVector(0.2 * torch.randn(editor.generator.num_ws, editor.generator.style_dim), (MOUTH,), "v",
                        editor.fingerprint)
    latent = editor.sample(5)
    slow = SlowEditor(editor, synthesis_s)

    async def scenario():
        renderer = BatchingRenderer(slow, max_batch=16, gather_s=gather_s, active_s=active_s)
        await renderer.start()
        render = lambda key, scale: asyncio.wait_for(renderer.render(key, latent, {vector: scale}), 20)
        for scale in (0.1, 0.2):  # both streams asked twice, together
            await asyncio.gather(render("a", scale), render("b", scale))
        a = asyncio.create_task(render("a", 0.3))
        await asyncio.sleep(late_s)
        b = await render("b", 0.4)
        rows = [(await a).batch_rows, b.batch_rows]
        await renderer.stop()
        return rows

    return asyncio.run(scenario())


def test_renderer_keeps_streams_active_across_slow_syntheses(editor):
    """With syntheses slower than active_s, a stream's requests come further apart than active_s: it must still
    count as active (within two syntheses' time), or clients split over two batches never merge again. Here "b"
    asks 0.1 s after "a", 0.4 s after its previous request: "a" waits for it and they share one synthesis."""
    assert late_partner_rows(editor, synthesis_s=0.3, gather_s=5.0, active_s=0.05, late_s=0.1) == [2, 2]


def test_renderer_waits_longer_after_a_long_synthesis(editor):
    """After a long synthesis the other streams' requests take longer to come back (as many frames to send and
    requests to read as rows): the wait for them is bounded by a tenth of the last synthesis when that exceeds
    gather_s. Here gather_s is 1 ms, a synthesis 0.5 s, and "b" asks 15 ms after "a": they share one."""
    assert late_partner_rows(editor, synthesis_s=0.5, gather_s=0.001, active_s=5.0, late_s=0.015) == [2, 2]


def test_editor_caches_under_concurrent_threads(editor):
    """The server's threads (renderer, jobs, request handlers) share one editor: concurrent applies on fresh
    latents and vectors fill its style caches without a lost or mixed entry."""
    from concurrent.futures import ThreadPoolExecutor

    g = editor.generator
    latents = [editor.sample(100 + i) for i in range(6)]
    vectors = [EditVector(0.2 * torch.randn(g.num_ws, g.style_dim, generator=torch.Generator().manual_seed(i)),
                          (MOUTH,), f"v{i}", editor.fingerprint) for i in range(6)]
    with ThreadPoolExecutor(4) as pool:
        images = list(pool.map(lambda i: editor.apply(latents[i], {vectors[i]: 0.8, vectors[-1 - i]: -0.4}).image,
                               range(6)))
    assert all(latent in editor._latent_styles for latent in latents)
    for i, image in enumerate(images):  # each thread's result is its own edit, as computed alone afterwards
        want = editor.apply(latents[i], {vectors[i]: 0.8, vectors[-1 - i]: -0.4}).image
        torch.testing.assert_close(image, want, atol=2e-5, rtol=0)


def test_failed_job_reports_the_error_and_stores_nothing(client, editor, monkeypatch):
    from editgan_fast.errors import NonFiniteLoss

    def diverges(*args, **kwargs):
        raise NonFiniteLoss("learn: the loss became NaN or Inf (by step 3)")
    monkeypatch.setattr(editor, "learn_vector", diverges)
    sid = new_session(client, seed=2)
    r = client.post(f"{API}/sessions/{sid}/learn",
                    json={"labels_png": labels_b64(painted(editor, 2)), "name": "nan", "steps": 4})
    job = wait_job(client, r.json()["id"])
    assert job["state"] == "failed"
    assert job["error"] == {"error": "NonFiniteLoss", "message": "learn: the loss became NaN or Inf (by step 3)",
                            "status": 422}
    assert stored_files(client) == []
