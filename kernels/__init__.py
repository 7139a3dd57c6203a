"""Triton kernels, one file per kernel (shipped as editgan_fast.kernels; wrapped by ops/_triton_backend.py).

Under TRITON_INTERPRET=1 the kernels run on CPU tensors through Triton's interpreter, whose cost is per
program instance, so the launchers then use larger tiles; the GPU tiles are the ones `aot.py` compiles.
The kernels use only Triton's builtins (tl.full, tl.reduce), never its @jit standard-library functions
(tl.zeros, tl.sum, tl.cdiv, ...): those were decorated when triton.language was imported, and if that happened
before TRITON_INTERPRET was set (torch or another test may import triton first) the interpreter cannot call them.
"""
import triton

INTERPRET = bool(triton.knobs.runtime.interpret)


def tile(gpu, interpreted):
    """The tile size for this process: `gpu` on a GPU, `interpreted` under TRITON_INTERPRET."""
    return interpreted if INTERPRET else gpu
