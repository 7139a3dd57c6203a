"""torch.compile(fullgraph=True) and torch.export through the engine, on the cpu and the reference backends:
synthesis, the segmenter's logits, apply's synthesis + segmentation and one refinement step trace as ONE graph
(fullgraph refuses any graph break), give eager's results, and do not recompile for new inputs.

Compiled with the aot_eager backend (AOT autograd over the fake kernels, no code generation): what decides
graph breaks and traceability, at a fraction of inductor's compile time on 2 cores. bench/compile.py runs
inductor."""
import pytest
import torch

from editgan_fast import backend
from editgan_fast.editor import Editor
from editgan_fast.editor.default import random_segmenter
from editgan_fast.editor.demo import paint_enlarge
from factories import small_generator

BACKENDS = [pytest.param("cpu", marks=pytest.mark.skipif(not backend.available("cpu"), reason="not built")),
            "reference"]


@pytest.fixture(scope="module")
def models():
    g = small_generator(size=16)
    return g, random_segmenter(g)


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    with torch._dynamo.config.patch(error_on_recompile=True):
        yield
    torch._dynamo.reset()


def _compiled(fn):
    return torch.compile(fn, fullgraph=True, backend="aot_eager")


def _styles(g, seed, n=1):
    w = torch.randn(n, g.num_ws, g.style_dim, generator=torch.Generator().manual_seed(seed))
    return [s.detach() for s in g.styles(w)]


def _close(a, b):
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", BACKENDS)
def test_synthesis_and_logits_compile_to_one_graph(models, name):
    g, seg = models

    def generate(styles):
        image, features = g.synthesis_from_styles(styles, return_features=True)
        return image, seg.logits(features)

    compiled = _compiled(generate)
    with backend.use_backend(name), torch.no_grad():
        for seed in (0, 1):  # the second input reuses the graph (a recompile would raise)
            styles = _styles(g, seed, n=2)
            for got, want in zip(compiled(styles), generate(styles)):
                _close(got, want)


@pytest.mark.parametrize("name", BACKENDS)
def test_editor_apply_compiles_to_one_graph(models, name):
    g, seg = models
    eager, compiled = Editor(g, seg, progress=False), Editor(g, seg, progress=False, compile="aot_eager")
    with backend.use_backend(name):
        for seed in (0, 1):
            latent = eager.sample(seed)
            got, want = compiled.apply(latent, {}), eager.apply(latent, {})
            _close(got.image, want.image)
            assert torch.equal(got.labels, want.labels)


@pytest.mark.parametrize("name", BACKENDS)
def test_a_refinement_step_compiles_to_one_graph_forward_and_backward(models, name):
    g, seg = models
    editor = Editor(g, seg, progress=False)
    with backend.use_backend(name):
        latent = editor.sample(3)
        edited, _ = paint_enlarge(editor.segment(latent)[0], iterations=2)
        objective = editor.edit_objective(latent, edited)
        compiled = _compiled(objective)
        for step in range(2):
            w = (latent.wplus + 0.1 * step).requires_grad_(True)
            total, terms, image = compiled(w)
            (grad,) = torch.autograd.grad(total, w)
            w_eager = w.detach().requires_grad_(True)
            total_eager, _, _ = objective(w_eager)
            (grad_eager,) = torch.autograd.grad(total_eager, w_eager)
            _close(total, total_eager)
            _close(grad, grad_eager)
            assert grad.abs().sum() > 0


class _SynthesisFromStyles(torch.nn.Module):
    def __init__(self, generator):
        super().__init__()
        self.generator = generator

    def forward(self, *styles):
        return self.generator.synthesis_from_styles(list(styles))


@pytest.mark.parametrize("name", BACKENDS)
def test_export_synthesis_from_styles(models, name):
    g, _ = models
    module = _SynthesisFromStyles(g)
    with backend.use_backend(name), torch.no_grad():
        program = torch.export.export(module, tuple(_styles(g, 0)))
        if name == "cpu":
            targets = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
            assert "editgan_fast.modulated_conv2d_nograd.default" in targets  # exported under no_grad
        styles = _styles(g, 1)
        _close(program.module()(*styles), module(*styles))


@pytest.mark.parametrize("name", BACKENDS)
def test_vmap_over_latents_compiles_to_one_graph(models, name):
    """torch.func.vmap of synthesis inside torch.compile: on the cpu backend each custom op's vmap rule folds the
    vmapped latents into its batch (PyTorch's per-sample fallback loop is disabled, so using it would raise)."""
    g, _ = models
    compiled = _compiled(torch.func.vmap(g.synthesis))
    wplus = torch.randn(3, 1, g.num_ws, g.style_dim, generator=torch.Generator().manual_seed(0))
    torch._C._functorch._set_vmap_fallback_enabled(False)
    try:
        with backend.use_backend(name), torch.no_grad():
            got = compiled(wplus)
            want = torch.stack([g.synthesis(w) for w in wplus])
    finally:
        torch._C._functorch._set_vmap_fallback_enabled(True)
    _close(got, want)
