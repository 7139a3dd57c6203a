"""Every Triton kernel compiled ahead of time for real GPUs (sm_80, sm_90) on this GPU-less machine, and the
kernel tests re-run compiled on a GPU where there is one.

Both run in subprocesses: compilation needs kernels decorated without TRITON_INTERPRET, which
test_triton_kernels.py sets for the whole pytest process. By default the bf16-storage variants (the GPU
production mode) are compiled, ~90 s on 2 cores (a few seconds once Triton's cache holds them);
EDITGAN_FAST_FULL=1 adds the fp32 ones and every modulated-conv variant of every tuning candidate.
"""
import os
import subprocess
import sys

import pytest
import torch

pytest.importorskip("triton")

FULL = os.environ.get("EDITGAN_FAST_FULL") == "1"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(extra)
    return env


def _modconv_names(dt, full):
    """{capability: modulated-conv variant names}: by default every tuning candidate's up1 layer (the full
    epilogue with the fp32 `pre` store: the most registers) and every kind for each capability's default
    candidate; with EDITGAN_FAST_FULL=1 every kind of every candidate."""
    from editgan_fast.kernels import modulated_conv as mc
    kinds = ("up1", "up1_c64", "up1_c32", "up2", "torgb", "input_grad", "torgb_input_grad")
    names = {}
    for (cc, size), configs in mc.CANDIDATES.items():
        if size != (4 if dt == "fp32" else 2):
            continue
        tags = [f"{c.layout}{c.block_p}x{c.block_co}x{c.block_ci}w{c.num_warps}s{c.num_stages}" for c in configs]
        names[cc] = {f"modconv_{dt}_{kind}_{tag}" for i, tag in enumerate(tags) for kind in kinds
                     if full or i == 0 or kind == "up1"} | {f"modconv_{dt}_channels_last"}
    return names


def test_every_kernel_compiles_for_sm80_and_sm90():
    dtypes = ["fp32", "bf16"] if FULL else ["bf16"]
    conv = {cc: set().union(*(_modconv_names(dt, FULL)[cc] for dt in dtypes)) for cc in (80, 90)}
    # Exact modconv names are prefixes too: the conv variants to compile, everything else whole.
    prefixes = ["bias_act", "upfirdn2d", "gemm", "seg_head", *sorted(conv[80] | conv[90])]
    proc = subprocess.run([sys.executable, "-m", "editgan_fast.kernels.aot", "80", "90", *dtypes, *prefixes],
                          cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-4000:]
    lines = proc.stdout.splitlines()
    compiled = {(line.split()[0], line.split()[1].rstrip(":")) for line in lines}
    spills = {(line.split()[0], line.split()[1].rstrip(":")): int(line.split()[-2]) for line in lines}
    kernels = {name.split("_")[0] for _, name in compiled}
    assert kernels == {"bias", "upfirdn2d", "modconv", "gemm", "seg"}, kernels
    for cc in (80, 90):
        names = {name for a, name in compiled if a == f"sm_{cc}"}
        assert {name for name in names if name.startswith("modconv")} == conv[cc]
        assert {f"seg_head_{dt}_bilinear_bwd" for dt in dtypes} <= names
    assert all(int(line.split()[3]) > 0 for line in lines), "an empty cubin"
    # The seg head at EditGAN's car shapes (H1=256, H2=128, 32 classes), its GEMMs, and every modulated-conv
    # tuning candidate keep every value in registers (ptxas -v: 0 bytes spill stores): on sm_90 for all, and on
    # sm_80 for the conv's sm_80 candidates.
    spilling = {(arch, name): b for (arch, name), b in spills.items() if b > 0 and (
        name.startswith("modconv") or arch == "sm_90" and name.startswith(("seg_head", "gemm")))}
    assert not spilling, f"register spill stores: {spilling}"


@pytest.mark.skipif(not FULL, reason="EDITGAN_FAST_FULL=1: the fp16-storage convolutions (~1.5 min)")
def test_modulated_conv_fp16_compiles_without_spills():
    """fp16 storage takes the bf16 candidates (same element size): every variant of each, no spill stores."""
    proc = subprocess.run([sys.executable, "-m", "editgan_fast.kernels.aot", "80", "90", "fp16", "modconv"],
                          cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-4000:]
    spills = {(line.split()[0], line.split()[1].rstrip(":")): int(line.split()[-2])
              for line in proc.stdout.splitlines()}
    expected = _modconv_names("fp16", True)
    for cc in (80, 90):
        assert {name for arch, name in spills if arch == f"sm_{cc}"} == expected[cc]
    assert not any(spills.values()), f"register spill stores: {spills}"


def test_seg_head_fp32_has_no_spills_on_sm90():
    """The fp32-storage head (tf32x3 products: three dots per product, the most registers) at the car shapes."""
    proc = subprocess.run([sys.executable, "-m", "editgan_fast.kernels.aot", "90", "fp32", "seg_head", "gemm"],
                          cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    spills = {line.split()[1].rstrip(":"): int(line.split()[-2]) for line in proc.stdout.splitlines()}
    assert len(spills) == 6 and all(name.startswith(("seg_head_fp32", "gemm_fp32")) for name in spills), spills
    assert not any(spills.values()), f"register spill stores on sm_90: {spills}"


def test_triton_backend_refuses_cpu_tensors_without_the_interpreter():
    code = ("import torch, editgan_fast\n"
            "from editgan_fast.ops import bias_act\n"
            "from editgan_fast.ops import _triton_backend as t\n"
            "print('DEVICES', sorted(t.DEVICES))\n"
            "print('REASON', t.unavailable_reason())\n"
            "if t.unavailable_reason() is None:\n"
            "    try:\n"
            "        with editgan_fast.use_backend('triton'): bias_act(torch.randn(2, 3))\n"
            "    except editgan_fast.BackendUnavailable as e: print('ERROR', e)\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=_env(), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "DEVICES ['cuda']" in proc.stdout
    if torch.cuda.is_available():
        assert "ERROR backend 'triton' runs on cuda tensors, got a tensor on cpu" in proc.stdout
    else:
        assert "REASON no CUDA device" in proc.stdout


@pytest.mark.gpu
def test_kernels_on_a_real_gpu():
    if not torch.cuda.is_available() and os.environ.get("EDITGAN_FAST_REQUIRE_GPU") != "1":
        pytest.skip("needs a CUDA device")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "tests/test_triton_kernels.py"], cwd=ROOT,
                          env=_env(EDITGAN_FAST_TRITON_DEVICE="cuda"), capture_output=True, text=True,
                          timeout=1800)
    assert proc.returncode == 0, proc.stdout[-6000:]
