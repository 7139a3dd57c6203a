"""`Editor.apply` replayed from captured graphs (editgan_fast/editor/graphs.py).

On any machine, through `EagerGraph` (the graph interface re-running the recorded function on the static
buffers, its outputs poisoned at "capture"): every replay equals eager `apply` while scales, latents, vectors,
batch shapes, weights and the backend selection change; graphs are reused, bounded and dropped when they must
be; results are copies; a capture-less machine gets a clear error. With a CUDA device (`gpu` tests, run by
bench/gpu_check.sh where a skip is a failure): real CUDA graph replays equal eager `apply` on the triton and
cuda backends, and replaying is faster than eager.
"""
import contextlib
import inspect
import os
import statistics
import threading
import time

import pytest
import torch

import editgan_fast
from editgan_fast import backend
from editgan_fast.editor import Editor, EditVector
from editgan_fast.editor import graphs
from editgan_fast.errors import BackendUnavailable, InputValueError
from editgan_fast.models.segmenter import Segmenter

from cuda_cases import random_members
from factories import small_generator


def make_models(size=16, device="cpu", seed=0):
    """16 px for the CPU tests; 64 px on a GPU, where eager apply's launch overhead is what a replay removes."""
    channels = {4: 8, 8: 6, 16: 4} if size == 16 else {4: 64, 8: 64, 16: 32, 32: 32, 64: 16}
    g = small_generator(size=size, style_dim=8 if size == 16 else 32, channels=channels, seed=seed).to(device)
    torch.manual_seed(seed)
    members = random_members(sum(g.feature_channels), classes=5, count=2, h1=12, h2=6, device=device)
    return g, Segmenter(members, out_size=size, crop=(2, size - 2, 0, size))


def vector(editor, seed, scale=0.4):
    g = editor.generator
    delta = scale * torch.randn(g.num_ws, g.style_dim, generator=torch.Generator().manual_seed(seed))
    return EditVector(delta, fingerprint=editor.fingerprint)


@pytest.fixture(scope="module")
def models():
    return make_models()


@pytest.fixture
def eager(models):
    return Editor(*models, progress=False)


def graphed(models, capacity=True):
    return Editor(*models, progress=False).use_cuda_graphs(capacity, graph_type=graphs.EagerGraph)


def assert_same(got, expected):
    """A replay runs the very ops of eager apply on equal inputs: equal up to nothing but a change of buffers."""
    torch.testing.assert_close(got.image, expected.image, rtol=1e-6, atol=1e-6)
    assert torch.equal(got.labels, expected.labels)


def test_replays_equal_eager_apply_as_the_scales_change(models, eager):
    editor = graphed(models)
    latent, v = eager.sample(0), vector(eager, 1)
    for scales in (0.5, -1.0, 2.0, [0.0, 1.0, -1.5], [3.0, -0.5, 0.25], 0.7):
        # Shapes and values: the first replay after a capture must overwrite the stand-in's poisoned outputs.
        assert_same(editor.apply(latent, {v: scales}), eager.apply(latent, {v: scales}))
    assert editor.graphs.captures == 2 and editor.graphs.held == 2  # one graph per batch shape, reused


def test_a_new_latent_or_vector_is_copied_into_the_buffers(models, eager):
    editor = graphed(models)
    latents = [eager.sample(s) for s in (0, 1)]
    a, b, c = (vector(eager, s) for s in (2, 3, 4))
    calls = [(latents[0], {a: 0.5, b: -1.0}), (latents[1], {a: 0.5, b: -1.0}), (latents[1], {c: 0.5, b: -1.0}),
             (latents[1], {b: -1.0, c: 0.5}), (latents[0], {a: 1.0, EditVector(a.delta, fingerprint=a.fingerprint): 1.0}),
             (latents[0].wplus, {b: 2.0, c: 1.0})]  # a tensor latent: a new Latent (and style list) each call
    for latent, vectors in calls:
        assert_same(editor.apply(latent, vectors), eager.apply(latent, vectors))
    assert editor.graphs.captures == 1
    assert_same(editor.render(latents[1]), eager.render(latents[1]))  # no vectors: its own graph (K = 0)


def test_a_missed_buffer_copy_would_show(models, eager, monkeypatch):
    """The stand-in catches what it is for: with the scales no longer copied, a replay repeats the last result."""
    editor = graphed(models)
    latent, v = eager.sample(0), vector(eager, 1)
    editor.apply(latent, {v: 0.5})
    monkeypatch.setattr(graphs, "_copy_scales", lambda static, scales: None)
    stale = editor.apply(latent, {v: -2.0})
    assert torch.equal(stale.image, eager.apply(latent, {v: 0.5}).image)
    assert not torch.allclose(stale.image, eager.apply(latent, {v: -2.0}).image)


def test_new_shapes_capture_anew_and_the_oldest_graph_goes(models, eager):
    editor = graphed(models, capacity=2)
    latent, a, b = eager.sample(3), vector(eager, 5), vector(eager, 6)
    shapes = [{a: 0.5}, {a: [0.5, 1.0]}, {a: 0.5, b: 1.0}, {a: -0.5}]  # (1,1) (2,1) (1,2) then (1,1) again
    for vectors in shapes:
        assert_same(editor.apply(latent, vectors), eager.apply(latent, vectors))
    assert editor.graphs.held == 2
    assert editor.graphs.captures == 4  # (1, 1) was the least recently used when (1, 2) came: dropped
    editor.apply(latent, {a: 0.1, b: 0.2})
    assert editor.graphs.captures == 4  # (1, 2) is still held


def test_results_are_copies(models, eager):
    editor = graphed(models)
    latent, v = eager.sample(0), vector(eager, 1)
    first = editor.apply(latent, {v: 0.5})
    kept = first.image.clone()
    editor.apply(latent, {v: -1.0})
    assert torch.equal(first.image, kept)


def test_weights_changed_in_place_or_moved_drop_the_graphs():
    g, seg = make_models(seed=7)  # models of this test's own: their weights are changed below
    editor = Editor(g, seg, progress=False).use_cuda_graphs(graph_type=graphs.EagerGraph)
    latent = editor.sample(0)
    v = EditVector(vector(editor, 1).delta)  # no fingerprint: the weights, and so the fingerprint, change below
    editor.apply(latent, {v: 0.5})
    with torch.no_grad():
        g.convs[1].conv.weight.mul_(1.5)  # the caller's module: the editor's copy shares its storage
    after = editor.apply(latent, {v: 0.5})
    assert editor.graphs.captures == 2
    assert_same(after, Editor(g, seg, progress=False).apply(latent, {v: 0.5}))
    editor.segmenter.eval()  # member views rebuilt: the packed ensembles a graph read may be gone
    editor.apply(latent, {v: 0.5})
    assert editor.graphs.captures == 3
    editor.to(torch.float32)
    assert editor.graphs.held == 0
    editor.apply(latent, {v: 0.5})
    assert editor.graphs.captures == 4


def test_another_backend_selection_recaptures(models, eager):
    editor = graphed(models)
    latent, v = eager.sample(2), vector(eager, 3)
    editor.apply(latent, {v: 0.5})
    with editgan_fast.use_backend("reference"):
        result = editor.apply(latent, {v: 0.5})
        expected = eager.apply(latent, {v: 0.5})
    assert editor.graphs.captures == 2 and editor.graphs.held == 1  # the other selection's graph is dropped
    assert_same(result, expected)


def test_threads_share_the_graphs_safely(models, eager):
    editor = graphed(models)
    latent, v = eager.sample(4), vector(eager, 8)
    scales = [[0.25 * i - 1.0, 0.5 * i] for i in range(12)]
    expected = [eager.apply(latent, {v: s}).image for s in scales]
    got = [None] * len(scales)

    def work(offset):
        for i in range(offset, len(scales), 3):
            got[i] = editor.apply(latent, {v: scales[i]}).image

    threads = [threading.Thread(target=work, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-6, atol=1e-6)
    assert editor.graphs.captures == 1


def test_turning_graphs_off_is_eager_again(models, eager):
    editor = graphed(models)
    assert editor.use_cuda_graphs(False).graphs is None
    latent, v = eager.sample(0), vector(eager, 1)
    assert_same(editor.apply(latent, {v: 0.5}), eager.apply(latent, {v: 0.5}))


def test_without_a_usable_device_the_errors_name_the_problem(models):
    if torch.cuda.is_available():  # construction works; the first apply finds the models on the CPU
        editor = Editor(*models, progress=False, cuda_graphs=True)
        with pytest.raises(BackendUnavailable, match=r"models are on cpu.*editor\.to\('cuda'\)"):
            editor.apply(editor.sample(0), {})
    else:
        with pytest.raises(BackendUnavailable, match="CUDA graphs need a CUDA device, but (this torch is built "
                                                     "without CUDA|torch sees no CUDA device)"):
            Editor(*models, progress=False, cuda_graphs=True)
    with pytest.raises(BackendUnavailable, match="models are on cpu"):
        graphs.CudaGraph(lambda: (torch.zeros(1),), torch.device("cpu"))
    for bad in (-1, 0.5, "yes"):
        with pytest.raises(InputValueError, match="cuda_graphs must be True, False or the number of graphs"):
            Editor(*models, progress=False).use_cuda_graphs(bad, graph_type=graphs.EagerGraph)


REAL_GRAPH = torch.cuda.graph  # the signature the fake checks its arguments against


class FakeCuda:
    """torch.cuda's stream and graph calls as CudaGraph makes them, recorded: its warm-up, capture and error
    handling run here without a device (the arguments are checked against the real signatures)."""

    def __init__(self, fail_capture=False):
        self.current, self.log, self.fail_capture = "main", [], fail_capture
        fake = self

        class Stream:
            def __init__(self, name="side"):
                self.name = name

            def wait_stream(self, other):
                fake.log.append(f"{self.name} waits for {other.name}")

        class Graph:
            def replay(self):
                fake.log.append("replay")

        @contextlib.contextmanager
        def stream(s):
            before, self.current = self.current, s.name
            yield
            self.current = before

        @contextlib.contextmanager
        def graph(g, capture_error_mode="global"):
            inspect.signature(REAL_GRAPH).bind(g, capture_error_mode=capture_error_mode)
            self.log.append(f"capture ({capture_error_mode})")
            before, self.current = self.current, "capture"
            yield
            if self.fail_capture:
                raise RuntimeError("CUDA error: operation not permitted when stream is capturing\nmore")
            self.current = before

        self.stream_cls, self.api = Stream, dict(
            device=lambda d: contextlib.nullcontext(), Stream=Stream, stream=stream, graph=graph, CUDAGraph=Graph,
            current_stream=lambda: Stream(self.current), set_stream=lambda s: setattr(self, "current", s.name))

    def install(self, monkeypatch):
        for name, value in self.api.items():
            monkeypatch.setattr(torch.cuda, name, value)


def test_cuda_graph_warms_up_on_a_side_stream_then_captures_and_replays(monkeypatch):
    fake = FakeCuda()
    fake.install(monkeypatch)
    out = torch.zeros(1)
    g = graphs.CudaGraph(lambda: fake.log.append(f"fn on {fake.current}") or (out,), torch.device("cuda"))
    assert fake.log == ["side waits for main", "fn on side", "fn on side", "main waits for side",
                        "capture (thread_local)", "fn on capture"]
    assert g.replay() == (out,) and fake.log[-1] == "replay" and fake.current == "main"

    failing = FakeCuda(fail_capture=True)
    failing.install(monkeypatch)
    with pytest.raises(BackendUnavailable, match=r"could not be captured in a CUDA graph under backend "
                                                 r"'\w+' .*: CUDA error: operation not permitted[^\n]*$"):
        graphs.CudaGraph(lambda: (out,), torch.device("cuda"))
    assert failing.current == "main"  # the capture stream is not left current


# ------------------------------------------------------------------------------------------ on a GPU
REQUIRE_GPU = os.environ.get("EDITGAN_FAST_REQUIRE_GPU") == "1"  # bench/gpu_check.sh: a skip is a failure


def gpu(test):
    skip = pytest.mark.skipif(not torch.cuda.is_available() and not REQUIRE_GPU, reason="no CUDA device")
    return pytest.mark.gpu(skip(test))


def _usable(name):
    """Fail (in the GPU check) or skip (elsewhere) when `name` cannot run compiled kernels on the GPU here."""
    reason = backend.unavailable_reason(name)
    if reason is None and name == "triton":
        from editgan_fast import kernels
        reason = "Triton runs under its interpreter in this process (TRITON_INTERPRET=1)" if kernels.INTERPRET \
            else None
    if reason is not None:
        if REQUIRE_GPU:
            pytest.fail(reason)
        pytest.skip(reason)


@pytest.fixture(scope="module")
def gpu_models():
    return make_models(size=64, device="cuda", seed=11)


def rel_err(got, ref):
    return ((got.double() - ref.double()).abs().max() / ref.double().abs().max()).item()


@pytest.mark.parametrize("name", ["triton", "cuda"])
@gpu
def test_cuda_graph_replay_equals_eager_apply(gpu_models, name):
    _usable(name)
    with editgan_fast.use_backend(name):
        editor = Editor(*gpu_models, progress=False)
        latents = [editor.sample(s) for s in (0, 1)]
        a, b = vector(editor, 2), vector(editor, 3)
        calls = [(latents[0], {a: 0.5, b: -1.0}), (latents[0], {a: [1.0, -1.0, 2.0], b: [0.0, 0.5, 0.5]}),
                 (latents[1], {a: -0.5, b: 1.5}), (latents[1], {b: 1.0, a: 0.25}),
                 (latents[1], {a: [0.1, 0.2, 0.3], b: [1.0, 1.0, 1.0]})]
        expected = [editor.apply(*call) for call in calls]
        editor.use_cuda_graphs(2)
        for call, want in zip(calls, expected):
            got = editor.apply(*call)
            assert rel_err(got.image, want.image) <= 1e-4  # the fp32 bound of bench/gpu.py; equal kernels
            assert (got.labels == want.labels).float().mean().item() >= 0.999
        assert editor.graphs.captures == 2


@gpu
def test_cuda_graph_replay_is_faster_than_eager(gpu_models):
    _usable("triton")
    with editgan_fast.use_backend("triton"):
        editor = Editor(*gpu_models, progress=False).use_cuda_graphs()
        latent, v = editor.sample(0), vector(editor, 1)

        def timed(fn):
            torch.cuda.synchronize()
            start = time.perf_counter()
            fn()
            torch.cuda.synchronize()
            return time.perf_counter() - start

        replay = lambda: editor.apply(latent, {v: [0.5, -0.5]})
        eager = lambda: editor.apply_many([(latent, {v: [0.5, -0.5]})])  # the same rows, never a graph
        for _ in range(3):
            replay(), eager()
        times = [(timed(replay), timed(eager)) for _ in range(30)]  # interleaved
    graph_s, eager_s = (statistics.median(t) for t in zip(*times))
    print(f"apply, batch 2, 64 px: CUDA graph replay {graph_s * 1e3:.3f} ms, eager {eager_s * 1e3:.3f} ms "
          f"({eager_s / graph_s:.2f}x)")
    assert graph_s < 0.7 * eager_s


@gpu
def test_a_capture_that_synchronizes_is_a_clear_error():
    # Last in this file: a failed capture is the one thing here that could leave the device in a bad state.
    x = torch.ones(4, device="cuda")
    stream = torch.cuda.current_stream()
    with pytest.raises(BackendUnavailable, match="could not be captured in a CUDA graph"):
        graphs.CudaGraph(lambda: (x * float(x.sum().item()),), x.device)
    assert torch.cuda.current_stream() == stream  # not left on the capture stream
    assert torch.ones(1, device="cuda").add_(1).item() == 2.0  # the device still works
