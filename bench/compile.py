"""torch.compile vs eager on the cpu backend: synthesis and Editor.apply of the demo model (`random_editor(0)`,
128 px), medians of the same run, the compile time of each, and what inductor makes of the graph around the
custom ops.

    python bench/compile.py [--repeats N] [--threads N]

Eager and compiled runs alternate (one of each per repeat), so that a shared machine's load swings hit both
alike; the table gives the median and, in brackets, the fastest run (the least disturbed one on a loaded machine). "compile" is the first call of the compiled function (trace + inductor code generation + the first run).
"fused" counts the traced graph's nodes: the custom ops (editgan_fast::*, opaque to inductor) and the ATen
ops between them, and the kernels inductor generated for those ATen ops.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from editgan_fast import backend  # noqa: E402
from editgan_fast.editor import random_editor  # noqa: E402


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


def timed_compile(fn, *args):
    """(compiled fn, seconds of its first call, census, inductor kernels generated)."""
    from torch._inductor import metrics
    torch._dynamo.reset()
    metrics.reset()
    census = GraphCensus()
    compiled = torch.compile(fn, fullgraph=True, backend=census)
    t0 = time.perf_counter()
    compiled(*args)
    return compiled, time.perf_counter() - t0, census, metrics.generated_kernel_count


def interleaved_times(first, second, repeats):
    """Seconds of each run of first() and second(), timed alternately after one warm-up call each."""
    first(), second()
    times = ([], [])
    for _ in range(repeats):
        for fn, out in zip((first, second), times):
            t0 = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t0)
    return times


def row(label, times, compile_s, census, kernels):
    eager, compiled = times
    ms = lambda t: f"{statistics.median(t) * 1e3:7.1f} ({min(t) * 1e3:6.1f})"  # noqa: E731
    ratio = f"{statistics.median(eager) / statistics.median(compiled):5.2f}x ({min(eager) / min(compiled):4.2f}x)"
    custom = ", ".join(f"{n.split('.')[1]} x{c}" for n, c in sorted(census.custom.items()))
    return (f"{label:<22} {ms(eager)} {ms(compiled)} {ratio} {compile_s:9.1f}   {custom}; {census.aten} ATen ops "
            f"-> {kernels} inductor kernels")


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
    print(f"{'case':<22} {'eager ms (min)':>16} {'compiled ms (min)':>17} {'speedup (min)':>15} {'compile s':>9}   graph")
    with backend.use_backend("cpu"), torch.no_grad():
        synthesis = lambda s: g.synthesis_from_styles(s)  # noqa: E731
        compiled, compile_s, census, kernels = timed_compile(synthesis, styles)
        times = interleaved_times(lambda: synthesis(styles), lambda: compiled(styles), args.repeats)
        print(row("synthesis", times, compile_s, census, kernels))

        render = editor._render_chunk  # what Editor(compile=True) compiles: synthesis + segmentation
        compiled, compile_s, census, kernels = timed_compile(render, styles, True)
        editor._render = compiled
        eager = random_editor(0, progress=False)
        times = interleaved_times(lambda: eager.apply(latent, {}), lambda: editor.apply(latent, {}), args.repeats)
        print(row("apply (synthesis+seg)", times, compile_s, census, kernels))


if __name__ == "__main__":
    main()
