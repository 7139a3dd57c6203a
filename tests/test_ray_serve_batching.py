"""The Ray Serve renderer's batch handler without a Serve instance: a request superseded by a newer one of the
same key is answered `Superseded` and not synthesized; the others get their own edit, in one synthesis."""
import asyncio

import numpy as np
import pytest

pytest.importorskip("ray.serve")

from batch_helpers import editor as make_editor, vector_library  # noqa: E402
from editgan_fast.editor import VectorLibrary  # noqa: E402
from editgan_fast.serve.ray_serve import ServeBatchRenderer  # noqa: E402
from editgan_fast.serve.renderer import Superseded  # noqa: E402

HANDLER = ServeBatchRenderer._batched.__wrapped__  # what @serve.batch calls with a list of requests


@pytest.fixture(scope="module")
def editor():
    return make_editor()


class OneBatch:
    """Stands in for @serve.batch: waits for `size` concurrent requests, then hands them to the handler as one
    batch (as Serve does when they arrive within its wait)."""

    def __init__(self, renderer, size):
        self.renderer, self.size, self.waiting = renderer, size, []

    async def __call__(self, request):
        future = asyncio.get_running_loop().create_future()
        self.waiting.append((request, future))
        if len(self.waiting) == self.size:
            outcomes = await HANDLER(self.renderer, [r for r, _ in self.waiting])
            for (_, f), outcome in zip(self.waiting, outcomes):
                f.set_result(outcome)
        return await future


def test_a_stale_request_of_a_key_is_superseded_and_not_rendered(editor, tmp_path):
    vector = next(iter(VectorLibrary.load(vector_library(tmp_path / "lib.npz", editor))))
    renderer = ServeBatchRenderer(editor)
    renderer._batched = OneBatch(renderer, 3)
    stream, other = object(), object()
    a, b = editor.sample(1), editor.sample(2)

    async def three_requests():
        return await asyncio.gather(renderer.render(stream, a, {vector: 0.5}),
                                    renderer.render(other, b, {vector: -1.0}),
                                    renderer.render(stream, a, {vector: 1.0}), return_exceptions=True)

    stale, frame_b, frame_a = asyncio.run(three_requests())
    assert isinstance(stale, Superseded)
    for frame, latent, scale in ((frame_a, a, 1.0), (frame_b, b, -1.0)):
        want = editor.apply(latent, {vector: scale})
        assert frame.batch_rows == 2  # both live requests in one synthesis
        np.testing.assert_allclose(frame.result.image.numpy(), want.image.numpy(), atol=2e-5)
        assert (frame.result.labels == want.labels).float().mean() > 0.999
    stats = renderer.stats()
    assert stats["superseded"] == 1 and stats["frames"] == 2 and stats["batch_sizes"] == {"2": 1}
    assert renderer._latest == {}  # answered requests leave no key behind


def test_requests_of_distinct_keys_are_all_rendered(editor):
    renderer = ServeBatchRenderer(editor)
    latent = editor.sample(3)
    live = [(object(), object(), (latent, {}, True, False)) for _ in range(2)]
    renderer._latest.update({key: token for key, token, _ in live})
    outcomes = asyncio.run(HANDLER(renderer, live))
    assert all(not isinstance(o, Exception) for o in outcomes) and renderer.stats()["superseded"] == 0
