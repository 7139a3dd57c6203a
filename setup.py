"""Builds the native extensions with ninja.

- editgan_fast._C: C++ CPU kernels (csrc/cpu/*.cpp), OpenMP, run-time ISA selection inside the kernels.
- editgan_fast._cuda: CUDA kernels (csrc/cuda/*.cu, bound from csrc/cuda/*.cpp), only when torch was built
  with CUDA and nvcc is present; skipped with a message otherwise.
The Triton kernels in kernels/ are pure Python and ship as the package editgan_fast.kernels.

Release builds carry no debug information (EDITGAN_FAST_DEBUG=1 keeps it: -g). The torch version the extensions
were built against is written to editgan_fast/_build_info.py and becomes the runtime requirement (same
major.minor: torch's C++ ABI changes between releases); editgan_fast.native checks it at import.
"""
import glob
import os
import re
import shutil

import torch
from setuptools import find_packages, setup
from torch.utils import cpp_extension

ROOT = os.path.dirname(os.path.abspath(__file__))
INCLUDE = [os.path.join(ROOT, "csrc", "include")]


def rel(paths):
    return sorted(os.path.relpath(p, ROOT) for p in paths)


# Floating-point exceptions are never observed here; without this flag GCC keeps every loop holding a select on
# a float comparison (leaky ReLU, clamp) scalar, as the comparison might trap.
NO_TRAPS = ["-fno-trapping-math"]
# Python's CFLAGS carry -g: 18 of the extension's 19 MB were debug information. -g0 (last wins) drops it.
DEBUG_INFO = ["-g"] if os.environ.get("EDITGAN_FAST_DEBUG") else ["-g0"]
TORCH_RELEASE = ".".join(torch.__version__.split("+")[0].split(".")[:2])


def cpu_extension():
    sources = rel(glob.glob(os.path.join(ROOT, "csrc", "cpu", "*.cpp")))
    if not sources:
        return []
    return [cpp_extension.CppExtension(
        "editgan_fast._C", sources, include_dirs=INCLUDE,
        extra_compile_args=["-O3", "-fopenmp", "-std=c++17", *NO_TRAPS, *DEBUG_INFO], extra_link_args=["-fopenmp"])]


def cuda_extension():
    if torch.version.cuda is None or shutil.which("nvcc") is None or os.environ.get("EDITGAN_FAST_NO_CUDA"):
        print("editgan_fast: building without CUDA kernels (needs a CUDA build of torch and nvcc)")
        return []
    sources = rel(glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cu"))
                  + glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cpp")))
    return [cpp_extension.CUDAExtension(
        "editgan_fast._cuda", sources, include_dirs=INCLUDE,
        extra_compile_args={"cxx": ["-O3", "-std=c++17", *DEBUG_INFO],
                            "nvcc": ["-O3", "-std=c++17", "--use_fast_math",
                                     "-gencode=arch=compute_80,code=sm_80",
                                     "-gencode=arch=compute_90,code=sm_90"]})]



class BuildExt(cpp_extension.BuildExtension.with_options(use_ninja=True)):
    """Also records the torch version the extensions are built against (editgan_fast/_build_info.py), in the
    build tree and, for in-place and editable builds, beside the sources."""

    def run(self):
        super().run()
        text = ('"""Written by setup.py when the native extensions were built (see editgan_fast/native.py)."""\n'
                f'TORCH_VERSION = "{torch.__version__}"\n')
        targets = [os.path.join(self.build_lib, "editgan_fast")]
        if self.inplace or getattr(self, "editable_mode", False):
            targets.append(os.path.join(ROOT, "editgan_fast"))
        for directory in targets:
            os.makedirs(directory, exist_ok=True)
            with open(os.path.join(directory, "_build_info.py"), "w") as f:
                f.write(text)


def version():
    """The one place the version is written is editgan_fast/__init__.py (read here without importing it)."""
    with open(os.path.join(ROOT, "editgan_fast", "__init__.py")) as f:
        return re.search(r'^__version__ = "([^"]+)"', f.read(), re.M).group(1)


packages = find_packages(include=["editgan_fast", "editgan_fast.*"]) + ["editgan_fast.kernels"]
setup(
    name="editgan-fast",
    version=version(),
    description="Fast EditGAN-style semantic image editing",
    packages=packages,
    package_dir={"editgan_fast.kernels": "kernels"},
    package_data={"editgan_fast": ["assets/*", "py.typed", "serve/static/*", "ops/gpu_choice.json"]},
    license="MIT",
    license_files=["LICENSE"],
    python_requires=">=3.10",
    install_requires=[f"torch=={TORCH_RELEASE}.*", "numpy", "pillow", "tqdm", "safetensors"],
    extras_require={
        "triton": ["triton>=3.8"],
        "serve": ["fastapi", "uvicorn", "httpx", "python-multipart", "websockets"],
        "ray": ["ray[data,serve]"],
        "test": ["pytest", "pytest-benchmark", "build"],
    },
    ext_modules=cpu_extension() + cuda_extension(),
    cmdclass={"build_ext": BuildExt},
    entry_points={"console_scripts": ["editgan-fast=editgan_fast.cli:main"]},
)
