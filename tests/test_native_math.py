"""The per-element math shared by the CPU and CUDA kernels (csrc/include/editgan/elementwise.h), compiled
with the system C++ compiler: its own assert-based checks (csrc/tests/test_elementwise.cpp), its resampling
taps against torch.nn.functional.interpolate, and the CMake/ctest build of the same tests."""
import os
import shutil
import subprocess

import pytest
import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INCLUDE = os.path.join(ROOT, "csrc", "include")
TESTS = os.path.join(ROOT, "csrc", "tests")
CXX = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")

needs_cxx = pytest.mark.skipif(CXX is None, reason="no C++ compiler (g++/c++/clang++) on PATH")


def _build(tmp_path, name):
    exe = tmp_path / name
    subprocess.run([CXX, "-std=c++17", "-O1", f"-I{INCLUDE}", os.path.join(TESTS, f"{name}.cpp"), "-o", str(exe)],
                   check=True, capture_output=True, text=True)
    return exe


@needs_cxx
def test_elementwise_native_checks_pass(tmp_path):
    run = subprocess.run([str(_build(tmp_path, "test_elementwise"))], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


def _interpolation_matrix(in_len, out_len, mode):
    """[out_len, in_len]: torch's 1-D resampling applied to each unit impulse."""
    eye = torch.eye(in_len, dtype=torch.float32).reshape(in_len, 1, in_len)
    kwargs = {"align_corners": False} if mode == "linear" else {}
    return F.interpolate(eye, size=out_len, mode=mode, **kwargs)[:, 0, :].t()


def _sizes():
    gen = torch.Generator().manual_seed(0)
    sizes = [(4, 512), (8, 512), (16, 512), (32, 512), (64, 512), (128, 512), (256, 512), (512, 512),
             (4, 1024), (1, 7), (7, 1), (5, 3), (3, 5), (13, 384), (384, 13)]
    sizes += [tuple(int(v) for v in torch.randint(1, 300, (2,), generator=gen)) for _ in range(60)]
    return sizes


@needs_cxx
def test_taps_match_torch_interpolate(tmp_path):
    sizes = _sizes()
    stdin = "".join(f"{i} {o}\n" for i, o in sizes)
    run = subprocess.run([str(_build(tmp_path, "dump_taps"))], input=stdin, capture_output=True, text=True,
                         check=True)
    rows = iter(run.stdout.splitlines())
    for in_len, out_len in sizes:
        linear = torch.zeros(out_len, in_len)
        nearest = torch.zeros(out_len, in_len)
        for o in range(out_len):
            i0, i1, w0, w1, near = next(rows).split()
            linear[o, int(i0)] += float(w0)
            linear[o, int(i1)] += float(w1)
            nearest[o, int(near)] = 1.0
        # Both compute the fp32 source coordinate (o + 0.5) * in/out - 0.5; torch's vectorized kernel may round
        # it differently by an ulp (FMA contraction), which moves the weights by up to ~in_len * 2^-23.
        atol = 4 * in_len * torch.finfo(torch.float32).eps
        torch.testing.assert_close(linear, _interpolation_matrix(in_len, out_len, "linear"), rtol=0, atol=atol,
                                   msg=f"linear taps differ for {in_len} -> {out_len}")
        assert torch.equal(nearest, _interpolation_matrix(in_len, out_len, "nearest")), \
            f"nearest index differs for {in_len} -> {out_len}"


@pytest.mark.skipif(CXX is None or shutil.which("cmake") is None or shutil.which("ctest") is None,
                    reason="needs cmake, ctest and a C++ compiler")
def test_cmake_ctest(tmp_path):
    build = tmp_path / "build"
    env = dict(os.environ, CUDACXX="")  # configure the C++ tests only; tests/test_cuda_compile.py covers nvcc
    subprocess.run(["cmake", "-S", ROOT, "-B", str(build), "-DCMAKE_BUILD_TYPE=Release",
                    "-DCMAKE_CUDA_COMPILER=NOTFOUND"], check=True, capture_output=True, env=env)
    subprocess.run(["cmake", "--build", str(build), "--target", "test_elementwise"], check=True,
                   capture_output=True)
    run = subprocess.run(["ctest", "--test-dir", str(build), "--output-on-failure"], capture_output=True,
                         text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "test_elementwise" in run.stdout
