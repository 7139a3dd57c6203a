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
from typing import NamedTuple

import triton
from triton.backends.compiler import GPUTarget

from . import INTERPRET, bias_act, modulated_conv, seg_head, upfirdn2d

FLOAT_ARGS = {"alpha", "gain", "clamp", "inv_e"}
STORAGE = ("fp32", "bf16", "fp16")


class Variant(NamedTuple):
    """One compiled variant: {pointer arg: element type}, {constexpr: value}, other args i32 (FLOAT_ARGS fp32).
    options: triton.compile options (num_warps, num_stages); capabilities: the ones to compile for (None: all
    asked); divisible: i32 args known to be multiples of 16, as the JIT specializes them (pointers are then
    16-byte aligned too); without it nothing is assumed aligned."""
    name: str
    kernel: object
    pointers: dict
    constexprs: dict
    options: dict = {}
    capabilities: tuple = None
    divisible: tuple = ()


def _variants(dtypes=("fp32", "bf16")):
    out = []
    for dt in dtypes:
        exact = dt == "fp32"
        for backward in (False, True):
            out.append(Variant(f"bias_act_{dt}_{'bwd' if backward else 'fwd'}", bias_act.bias_act_kernel,
                               dict(x_ptr=dt, b_ptr="fp32", y_ptr=dt if not backward else "fp32", gy_ptr="fp32"),
                               dict(HAS_BIAS=True, ACT=bias_act.LRELU, HAS_CLAMP=True, BACKWARD=backward,
                                    BLOCK=bias_act.BLOCK)))
        for up, down in ((2, 1), (1, 2)):
            out.append(Variant(f"upfirdn2d_{dt}_up{up}_down{down}", upfirdn2d.upfirdn2d_kernel,
                               dict(x_ptr=dt, c_ptr="fp32", out_ptr=dt),
                               dict(FH=4, FW=4, UP=up, DOWN=down, BLOCK=upfirdn2d.BLOCK)))
        out += _modconv_variants(dt)
        gemm_blocks = dict(DOT_FP32=exact, BLOCK_M=seg_head.GEMM_M, BLOCK_N=seg_head.GEMM_N,
                           BLOCK_K=seg_head.GEMM_K)
        out.append(Variant(f"gemm_{dt}", seg_head.gemm_kernel, dict(a_ptr=dt, b_ptr=dt, c_ptr=dt),
                           dict(ACCUMULATE=True, **gemm_blocks)))
        out.append(Variant(f"gemm_{dt}_feature_grad", seg_head.gemm_kernel,
                           dict(a_ptr="fp32", b_ptr=dt, c_ptr="fp32"), dict(ACCUMULATE=True, **gemm_blocks)))
        head_ptrs = dict(proj_ptr=dt, gproj_ptr="fp32", meta_ptr="i32", pix_ptr="i32", b1_ptr="fp32", w2_ptr=dt,
                         b2_ptr="fp32", w3_ptr=dt, b3_ptr="fp32", out_ptr=dt, g_ptr="fp32")
        for mode in (seg_head.BILINEAR, seg_head.NEAREST):
            for backward in (False, True):
                # EditGAN's car head: H1 = 256, H2 = 128, 32 classes (the widest member the tests compile).
                name = f"seg_head_{dt}_{'bilinear' if mode == 0 else 'nearest'}_{'bwd' if backward else 'fwd'}"
                out.append(Variant(name, seg_head.head_kernel, head_ptrs,
                                   dict(H1=256, H2=128, C=32, MODE=mode, HAS_PIXELS=backward, BACKWARD=backward,
                                        DOT_FP32=exact, BLOCK_P=seg_head.HEAD_P, H1C=seg_head.HEAD_H1C)))
    return out


def _modconv_variants(dt):
    """The modulated conv's 7 layer variants x every tuning candidate of the storage size, each for its own
    capability only, specialized as the JIT specializes them at a 64 px layer (16-byte aligned pointers; channel
    counts, sizes and strides that are multiples of 16 marked so), so the channel-contiguous loads compile as
    they will run; plus the "nhwc" layout's pre-pass."""
    exact = dt == "fp32"
    ptrs = dict(x_ptr=dt, w_ptr=dt, in_scale_ptr="fp32", out_scale_ptr="fp32", noise_ptr="fp32", bias_ptr="fp32",
                skip_ptr=dt, c_ptr="fp32", out_ptr=dt, pre_ptr="fp32", xds_ptr=dt, ds_ptr="fp32")
    layer = dict(HAS_OUT_SCALE=True, HAS_NOISE=True, HAS_BIAS=True, ACT=1, HAS_CLAMP=True, HAS_SKIP=False, FT=1,
                 SAVE_PRE=True, STYLE_GRAD=False, DOT_FP32=exact, EVEN_CI=True)
    # (constexprs, Cin, Cout) of each kind at StyleGAN2's shapes, which set the tiles (modulated_conv.resolve):
    # 512 channels up to 64 px, 64 at 512 px (car), 32 at 1024 px (face); ToRGB's 3 and its gradient's.
    kinds = dict(up1=(dict(layer, TAPS=3, OFFSET=-1, UP=1), 512, 512),
                 up1_c64=(dict(layer, TAPS=3, OFFSET=-1, UP=1), 64, 64),
                 up1_c32=(dict(layer, TAPS=3, OFFSET=-1, UP=1), 32, 32),
                 up2=(dict(layer, TAPS=3, OFFSET=-1, UP=2), 512, 512),
                 torgb=(dict(layer, TAPS=1, OFFSET=0, UP=1, HAS_OUT_SCALE=False, HAS_NOISE=False, ACT=0,
                             HAS_CLAMP=False, HAS_SKIP=True, FT=4), 512, 3),
                 input_grad=(dict(layer, TAPS=3, OFFSET=-1, UP=1, HAS_NOISE=False, HAS_BIAS=False, ACT=0,
                                  HAS_CLAMP=False, SAVE_PRE=False, STYLE_GRAD=True), 512, 512),
                 torgb_input_grad=(dict(layer, TAPS=1, OFFSET=0, UP=1, HAS_NOISE=False, HAS_BIAS=False, ACT=0,
                                        HAS_CLAMP=False, SAVE_PRE=False, STYLE_GRAD=True, EVEN_CI=False), 3, 512))
    out = []
    for (cc, size), configs in modulated_conv.CANDIDATES.items():
        if size != (4 if exact else 2):
            continue
        for cfg in configs:
            tag = f"{cfg.layout}{cfg.block_p}x{cfg.block_co}x{cfg.block_ci}w{cfg.num_warps}s{cfg.num_stages}"
            for kind, (flags, cin, cout) in kinds.items():
                run = modulated_conv.resolve(cfg, cin, cout)
                nhwc = run.layout == "nhwc"
                sizes = dict(CIN=cin, COUT=cout, H=64, W=64, **(dict(SX_P=cin) if nhwc else dict(SX_C=64 * 64)))
                out.append(Variant(f"modconv_{dt}_{kind}_{tag}", modulated_conv.modconv_kernel, ptrs,
                                   dict(flags, HAS_IN_SCALE=not nhwc, BLOCK_P=run.block_p, BLOCK_CI=run.block_ci,
                                        BLOCK_CO=run.block_co, **(dict(SX_C=1) if nhwc else dict(SX_P=1))),
                                   dict(num_warps=run.num_warps, num_stages=run.num_stages), (cc,),
                                   tuple(name for name, value in sizes.items() if value % 16 == 0)))
    out.append(Variant(f"modconv_{dt}_channels_last", modulated_conv.channels_last_kernel,
                       dict(x_ptr=dt, s_ptr="fp32", out_ptr=dt),
                       dict(HAS_SCALE=True, BLOCK_P=modulated_conv.PREPASS_P, BLOCK_C=modulated_conv.PREPASS_C),
                       divisible=("C", "HW")))
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
    for v in _variants(dtypes):
        if prefixes and not v.name.startswith(tuple(prefixes)):
            continue
        signature = _signature(v.kernel, v.pointers, v.constexprs)
        aligned = [name for name, ty in signature.items() if v.divisible and ty.startswith("*") or name in v.divisible]
        src = triton.compiler.ASTSource(v.kernel, signature=signature, constexprs=v.constexprs, attrs={
            (v.kernel.arg_names.index(name),): [["tt.divisibility", 16]] for name in aligned})
        for cc in capabilities:
            if v.capabilities is None or cc in v.capabilities:
                compiled = triton.compile(src, target=GPUTarget("cuda", cc, 32), options=v.options)
                done.append((v.name, cc, len(compiled.asm["cubin"]), spill_stores(compiled.asm["ptx"], cc)))
    return done


def main(argv=None):
    """Arguments: compute capabilities (default 80 90), storage dtypes (fp32 bf16 fp16, default fp32 bf16) and
    variant name prefixes (default all)."""
    args = argv if argv is not None else sys.argv[1:]
    caps = [int(a) for a in args if a.isdigit()] or [80, 90]
    dtypes = [a for a in args if a in STORAGE] or ["fp32", "bf16"]
    prefixes = [a for a in args if not a.isdigit() and a not in STORAGE]
    for name, cc, size, spills in compile_all(caps, dtypes, prefixes):
        print(f"sm_{cc} {name}: cubin {size} bytes, spill stores {spills} bytes")


if __name__ == "__main__":
    main()
