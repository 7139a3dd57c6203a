"""torch.compile vs eager on the cpu backend: synthesis, Editor.apply and one refinement step (the editing
objective's forward and its gradient w.r.t. w+) of the demo model (`random_editor(0)`, 128 px), the compile time
of each, and what inductor makes of the graph around the custom ops.

    python bench/compile.py [--repeats N] [--threads N]

Eager and compiled runs come in pairs whose order alternates (eager first, then compiled first, ...), so that a
shared machine's load swings and any order effect hit both alike. The table gives each side's median time and,
per case, the median of the pairs' eager/compiled ratios with their interquartile range: a speedup whose range
straddles 1.00x is no speedup. "compile" is the first call of the compiled function (trace + inductor code
generation + the first run). "graph" counts the traced (forward) graph's nodes: the custom ops (editgan_fast::*,
opaque to inductor) and the ATen ops between them, and the kernels inductor generated for the whole case.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from editgan_fast import backend  # noqa: E402
from editgan_fast.editor import random_editor  # noqa: E402
from editgan_fast.editor.demo import paint_enlarge  # noqa: E402


class GraphCensus:
    """A torch.compile backend that counts the traced graph's nodes, then hands it to inductor."""

    def __init__(self):
        self.custom, self.aten = {}, 0

    def __call__(self, gm, example_inputs):
        for node in gm.graph.nodes:
            if node.op != "call_function":
                continue
            name = str(node.target)
            if "editgan_fast" in name:
                self.custom[name] = self.custom.get(name, 0) + 1
            else:
                self.aten += 1
        from torch._inductor.compile_fx import compile_fx
        return compile_fx(gm, example_inputs)


def timed_compile(fn, *args, first_call=None, options=None):
    """(compiled fn, seconds of its first call, census, inductor kernels generated). `first_call(compiled)` makes
    that call (default: compiled(*args)); a step that differentiates includes the backward's compilation.
    `options`: torch.compile's."""
    from torch._inductor import metrics
    torch._dynamo.reset()
    metrics.reset()
    census = GraphCensus()
    compiled = torch.compile(fn, fullgraph=True, backend=census, options=options)
    t0 = time.perf_counter()
    (first_call or (lambda c: c(*args)))(compiled)
    return compiled, time.perf_counter() - t0, census, metrics.generated_kernel_count


def interleaved_times(first, second, repeats):
    """Seconds of each run of first() and second(), timed in pairs of alternating order after one warm-up call
    each."""
    first(), second()
    times = ([], [])
    for i in range(repeats):
        for k in ((0, 1) if i % 2 == 0 else (1, 0)):
            t0 = time.perf_counter()
            (first, second)[k]()
            times[k].append(time.perf_counter() - t0)
    return times


def row(label, times, compile_s, census, kernels):
    eager, compiled = times
    ratios = [e / c for e, c in zip(eager, compiled)]
    q1, median, q3 = statistics.quantiles(ratios, n=4, method="inclusive")
    ms = lambda t: f"{statistics.median(t) * 1e3:7.1f}"  # noqa: E731
    custom = ", ".join(f"{n.split('.')[1]} x{c}" for n, c in sorted(census.custom.items()))
    return (f"{label:<32} {ms(eager):>9} {ms(compiled):>12} {median:5.2f}x [{q1:.2f}, {q3:.2f}] {compile_s:9.1f}   "
            f"{custom}; {census.aten} ATen ops -> {kernels} inductor kernels")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    editor = random_editor(0, progress=False)
    g = editor.generator
    latent = editor.sample(0)
    styles = [s.detach() for s in g.styles(latent.wplus[None])]
    print(f"torch {torch.__version__}, {args.threads} threads, cpu backend, generator {g.resolution} px, "
          f"{args.repeats} runs each")
    print(f"{'case':<32} {'eager ms':>9} {'compiled ms':>12} {'eager/compiled [IQR]':>20} {'compile s':>9}   graph")
    print(f"load average before: {os.getloadavg()[0]:.1f}")
    with backend.use_backend("cpu"), torch.no_grad():
        synthesis = lambda s: g.synthesis_from_styles(s)  # noqa: E731
        compiled, compile_s, census, kernels = timed_compile(synthesis, styles)
        times = interleaved_times(lambda: synthesis(styles), lambda: compiled(styles), args.repeats)
        print(row("synthesis", times, compile_s, census, kernels))

        # Dynamo checks its guards before every call: ~1,600 at this size (module structure, and each of the ~110
        # tensors the graph reads: the styles and the module's weights), ~50 us with warm caches but ~0.4 ms
        # right after a synthesis has evicted them. A frozen generator can skip the modules' guards.
        frozen = {"guard_filter_fn": torch.compiler.skip_guard_on_all_nn_modules_unsafe}
        compiled, compile_s, census, kernels = timed_compile(synthesis, styles, options=frozen)
        times = interleaved_times(lambda: synthesis(styles), lambda: compiled(styles), args.repeats)
        print(row("synthesis, module guards skipped", times, compile_s, census, kernels))

        # The same at a production size: what compiling costs per call (dynamo's guards, the compiled graph's
        # wrapper: a fixed ~0.5-1 ms) against a synthesis of ~0.5 s instead of ~10 ms.
        from editgan_fast.models.generator import Generator
        big = Generator(512, channel_multiplier=2).eval().requires_grad_(False)
        big_styles = [s.detach() for s in big.styles(big.mapping(torch.randn(1, big.style_dim))[:, None]
                                                     .expand(-1, big.num_ws, -1))]
        big_synthesis = lambda s: big.synthesis_from_styles(s)  # noqa: E731
        compiled, compile_s, census, kernels = timed_compile(big_synthesis, big_styles)
        times = interleaved_times(lambda: big_synthesis(big_styles), lambda: compiled(big_styles),
                                  max(3, args.repeats // 3))
        print(row("synthesis 512 config-f", times, compile_s, census, kernels))

        render = editor._render_chunk  # what Editor(compile=True) compiles: synthesis + segmentation
        compiled, compile_s, census, kernels = timed_compile(render, styles, True)
        editor._render = compiled
        eager = random_editor(0, progress=False)
        times = interleaved_times(lambda: eager.apply(latent, {}), lambda: editor.apply(latent, {}), args.repeats)
        print(row("apply (synthesis+seg)", times, compile_s, census, kernels))

    with backend.use_backend("cpu"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the demo model has no LPIPS weights: the objective says so
        edited, _ = paint_enlarge(editor.segment(latent)[0], iterations=2)
        objective = editor.edit_objective(latent, edited)

        def step(fn):
            w = latent.wplus.clone().requires_grad_(True)
            return torch.autograd.grad(fn(w)[0], w)[0]
        compiled, compile_s, census, kernels = timed_compile(objective, first_call=step)
        times = interleaved_times(lambda: step(objective), lambda: step(compiled), args.repeats)
        print(row("refinement step (f+b)", times, compile_s, census, kernels))
    print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
