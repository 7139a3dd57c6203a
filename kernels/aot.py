"""Ahead-of-time compilation of every kernel variant the launchers use, for real GPUs, without a GPU.

`python -m editgan_fast.kernels.aot [80 90]` compiles each variant to a cubin with `triton.compile` and a
`GPUTarget` (Triton ships ptxas), catching what the interpreter lets through: unsupported ops, dtype
mismatches in tl.dot, shapes the GPU code generator rejects, and reports each variant's register spill stores
(from ptxas -v on the variant's PTX). It must run without TRITON_INTERPRET (an
interpreted kernel cannot be compiled), so the tests run it in a subprocess.
"""
import os
import re
import subprocess
import sys
import tempfile

import triton
from triton.backends.compiler import GPUTarget

from . import INTERPRET, bias_act, modulated_conv, seg_head, upfirdn2d

FLOAT_ARGS = {"alpha", "gain", "clamp", "inv_e"}


def _variants(dtypes=("fp32", "bf16")):
    """(name, kernel, {pointer arg: element type}, {constexpr: value}); other args are i32, FLOAT_ARGS fp32."""
    out = []
    for dt in dtypes:
        exact = dt == "fp32"
        for backward in (False, True):
            out.append((f"bias_act_{dt}_{'bwd' if backward else 'fwd'}", bias_act.bias_act_kernel,
                        dict(x_ptr=dt, b_ptr="fp32", y_ptr=dt if not backward else "fp32",
                             gy_ptr="fp32"),
                        dict(HAS_BIAS=True, ACT=bias_act.LRELU, HAS_CLAMP=True, BACKWARD=backward,
                             BLOCK=bias_act.BLOCK)))
        for up, down in ((2, 1), (1, 2)):
            out.append((f"upfirdn2d_{dt}_up{up}_down{down}", upfirdn2d.upfirdn2d_kernel,
                        dict(x_ptr=dt, c_ptr="fp32", out_ptr=dt),
                        dict(FH=4, FW=4, UP=up, DOWN=down, BLOCK=upfirdn2d.BLOCK)))
        conv_ptrs = dict(x_ptr=dt, w_ptr=dt, in_scale_ptr="fp32", out_scale_ptr="fp32", noise_ptr="fp32",
                         bias_ptr="fp32", skip_ptr=dt, c_ptr="fp32", out_ptr=dt, pre_ptr="fp32", xds_ptr=dt,
                         ds_ptr="fp32")
        blocks = dict(DOT_FP32=exact, BLOCK_P=modulated_conv.BLOCK_P, BLOCK_CI=modulated_conv.BLOCK_CI,
                      BLOCK_CO=modulated_conv.BLOCK_CO)
        layer = dict(HAS_IN_SCALE=True, HAS_OUT_SCALE=True, HAS_NOISE=True, HAS_BIAS=True, ACT=1,
                     HAS_CLAMP=True, HAS_SKIP=False, FT=1, SAVE_PRE=True, STYLE_GRAD=False)
        out.append((f"modconv_{dt}_up1", modulated_conv.modconv_kernel, conv_ptrs,
                    dict(TAPS=3, OFFSET=-1, UP=1, **layer, **blocks)))
        out.append((f"modconv_{dt}_up2", modulated_conv.modconv_kernel, conv_ptrs,
                    dict(TAPS=3, OFFSET=-1, UP=2, **layer, **blocks)))
        out.append((f"modconv_{dt}_torgb", modulated_conv.modconv_kernel, conv_ptrs,
                    dict(layer, TAPS=1, OFFSET=0, UP=1, HAS_OUT_SCALE=False, HAS_NOISE=False, ACT=0,
                         HAS_CLAMP=False, HAS_SKIP=True, FT=4, **blocks)))
        out.append((f"modconv_{dt}_input_grad", modulated_conv.modconv_kernel, conv_ptrs,
                    dict(layer, TAPS=3, OFFSET=-1, UP=1, HAS_NOISE=False, HAS_BIAS=False, ACT=0,
                         HAS_CLAMP=False, SAVE_PRE=False, STYLE_GRAD=True, **blocks)))
        gemm_blocks = dict(DOT_FP32=exact, BLOCK_M=seg_head.GEMM_M, BLOCK_N=seg_head.GEMM_N,
                           BLOCK_K=seg_head.GEMM_K)
        out.append((f"gemm_{dt}", seg_head.gemm_kernel, dict(a_ptr=dt, b_ptr=dt, c_ptr=dt),
                    dict(ACCUMULATE=True, **gemm_blocks)))
        out.append((f"gemm_{dt}_feature_grad", seg_head.gemm_kernel, dict(a_ptr="fp32", b_ptr=dt, c_ptr="fp32"),
                    dict(ACCUMULATE=True, **gemm_blocks)))
        head_ptrs = dict(proj_ptr=dt, gproj_ptr="fp32", meta_ptr="i32", pix_ptr="i32", b1_ptr="fp32", w2_ptr=dt,
                         b2_ptr="fp32", w3_ptr=dt, b3_ptr="fp32", out_ptr=dt, g_ptr="fp32")
        for mode in (seg_head.BILINEAR, seg_head.NEAREST):
            for backward in (False, True):
                # EditGAN's car head: H1 = 256, H2 = 128, 32 classes (the widest member the tests compile).
                out.append((f"seg_head_{dt}_{'bilinear' if mode == 0 else 'nearest'}_{'bwd' if backward else 'fwd'}",
                            seg_head.head_kernel, head_ptrs,
                            dict(H1=256, H2=128, C=32, MODE=mode, HAS_PIXELS=backward, BACKWARD=backward,
                                 DOT_FP32=exact, BLOCK_P=seg_head.HEAD_P, H1C=seg_head.HEAD_H1C)))
    return out


def _signature(kernel, pointers, constexprs):
    sig = {}
    for name in kernel.arg_names:
        if name in constexprs:
            sig[name] = "constexpr"
        elif name in pointers:
            sig[name] = "*" + pointers[name]
        else:
            sig[name] = "fp32" if name in FLOAT_ARGS else "i32"
    return sig


def spill_stores(ptx, capability):
    """Bytes of register spill stores ptxas reports for the PTX (Triton's own ptxas and options)."""
    from triton.backends.nvidia.compiler import get_ptxas, sm_arch_from_capability
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "kernel.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        run = subprocess.run([get_ptxas(capability).path, "-v", "--regAllocOptLevel=2",
                              f"--gpu-name={sm_arch_from_capability(capability)}", src, "-o", src + ".o"],
                             capture_output=True, text=True, check=True)
    return sum(int(b) for b in re.findall(r"(\d+) bytes spill stores", run.stdout + run.stderr))


def compile_all(capabilities=(80, 90), dtypes=("fp32", "bf16"), prefixes=()):
    """Compile every variant in `dtypes` storage (whose name starts with one of `prefixes`, if any) for each
    compute capability: [(name, capability, cubin bytes, spill store bytes)]."""
    if INTERPRET:
        raise RuntimeError("unset TRITON_INTERPRET: interpreted kernels cannot be compiled")
    done = []
    for name, kernel, pointers, constexprs in _variants(dtypes):
        if prefixes and not name.startswith(tuple(prefixes)):
            continue
        src = triton.compiler.ASTSource(kernel, signature=_signature(kernel, pointers, constexprs),
                                        constexprs=constexprs)
        for cc in capabilities:
            compiled = triton.compile(src, target=GPUTarget("cuda", cc, 32))
            done.append((name, cc, len(compiled.asm["cubin"]), spill_stores(compiled.asm["ptx"], cc)))
    return done


def main(argv=None):
    """Arguments: compute capabilities (default 80 90), storage dtypes (fp32 bf16, default both) and variant name
    prefixes (default all)."""
    args = argv if argv is not None else sys.argv[1:]
    caps = [int(a) for a in args if a.isdigit()] or [80, 90]
    dtypes = [a for a in args if a in ("fp32", "bf16")] or ["fp32", "bf16"]
    prefixes = [a for a in args if not a.isdigit() and a not in ("fp32", "bf16")]
    for name, cc, size, spills in compile_all(caps, dtypes, prefixes):
        print(f"sm_{cc} {name}: cubin {size} bytes, spill stores {spills} bytes")


if __name__ == "__main__":
    main()
