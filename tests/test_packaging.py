"""Packaging: the sdist holds what a wheel build needs, its metadata requires the torch the extension is built
against, and a mismatched torch is reported clearly. The wheel build from the sdist is `heavy`: at reduced size
it checks that every header the native sources include ships in the sdist (the preprocessor resolves them from
the unpacked sdist alone); with EDITGAN_FAST_FULL=1 it builds the wheel and checks it (stripped, complete)."""
import os
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest
import torch
from torch.utils import cpp_extension

import editgan_fast
from editgan_fast import native
from editgan_fast.ops import _cpu_backend

ROOT = Path(__file__).resolve().parents[1]
FULL = os.environ.get("EDITGAN_FAST_FULL") == "1"


@pytest.fixture(scope="module")
def sdist(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "build", "--sdist", "--no-isolation", "--outdir", str(out), str(ROOT)],
                   check=True, capture_output=True, text=True)
    (path,) = out.glob("editgan_fast-*.tar.gz")
    return path


def _sdist_names(path):
    with tarfile.open(path) as tar:
        top = tar.getnames()[0].split("/")[0]
        return top, {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}


def _on_disk(pattern_dir, suffixes):
    return {str(p.relative_to(ROOT)) for p in (ROOT / pattern_dir).rglob("*")
            if p.is_file() and p.suffix in suffixes and "__pycache__" not in p.parts}


def test_sdist_holds_every_source_and_no_build_output(sdist):
    top, names = _sdist_names(sdist)
    assert top == f"editgan_fast-{editgan_fast.__version__}"
    wanted = (_on_disk("csrc", {".cpp", ".h", ".cu", ".cuh"}) | _on_disk("kernels", {".py"})
              | _on_disk("editgan_fast", {".py", ".pt", ".pth", ".json", ".html", ".js", ".css"}) | _on_disk("tests", {".py"})
              | {"setup.py", "pyproject.toml", "MANIFEST.in", "LICENSE", "README.md", "editgan_fast/py.typed"})
    wanted.discard("editgan_fast/_build_info.py")  # written by each build, never shipped
    assert wanted - names == set()
    assert not [n for n in names if n.endswith((".so", ".pyc")) or n.endswith("_build_info.py")]


def test_sdist_metadata_requires_the_torch_release_it_builds_against(sdist):
    with tarfile.open(sdist) as tar:
        info = tar.extractfile(f"{_sdist_names(sdist)[0]}/PKG-INFO").read().decode()
    requires = [line.split(": ", 1)[1] for line in info.splitlines() if line.startswith("Requires-Dist: ")]
    assert f"torch=={native.release(torch.__version__)}.*" in requires
    assert "tqdm" in requires
    extras = {line.split(": ", 1)[1] for line in info.splitlines() if line.startswith("Provides-Extra: ")}
    assert {"triton", "serve", "ray", "test"} <= extras
    assert "License-File: LICENSE" in info


def test_a_torch_of_another_release_is_named_in_the_backend_error(monkeypatch):
    assert native.release("2.13.0+cpu") == "2.13"
    monkeypatch.setattr(native, "built_with_torch", lambda: "2.12.1")
    assert native.torch_mismatch("2.12.3+cu121") is None  # same release: same ABI
    message = native.torch_mismatch("2.13.0")
    assert "built against torch 2.12.1" in message and "torch 2.13.0 is installed" in message
    monkeypatch.setattr(native, "built_with_torch", lambda: "1.0.0")
    assert "built against torch 1.0.0" in _cpu_backend.unavailable_reason()


def _unpacked(sdist, directory):
    with tarfile.open(sdist) as tar:
        tar.extractall(directory, filter="data")
    return directory / _sdist_names(sdist)[0]


@pytest.mark.heavy
def test_wheel_builds_from_the_sdist(sdist, tmp_path):
    src = _unpacked(sdist, tmp_path)
    if not FULL:
        # Reduced: every include of every native source resolves inside the unpacked sdist (plus torch and
        # Python headers): what a missing MANIFEST entry breaks.
        system = [*cpp_extension.include_paths(), sysconfig.get_paths()["include"]]
        includes = [f"-I{src / 'csrc' / 'include'}", *(f"-isystem{p}" for p in system)]  # -MM omits -isystem
        for cpp in sorted((src / "csrc" / "cpu").glob("*.cpp")):
            deps = subprocess.run(["c++", "-std=c++17", "-MM", *includes, str(cpp)], check=True,
                                  capture_output=True, text=True).stdout
            assert all(Path(d).resolve().is_relative_to(src.resolve())
                       for d in deps.replace("\\\n", " ").split()[1:]), deps
        return
    out = tmp_path / "wheel"
    subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(out), str(src)],
                   check=True, capture_output=True, text=True, env={**os.environ, "MAX_JOBS": "2"})
    (wheel,) = out.glob("*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        (so,) = [n for n in names if n.startswith("editgan_fast/_C.") and n.endswith(".so")]
        z.extract(so, tmp_path)
        build_info = z.read("editgan_fast/_build_info.py").decode()
    assert {"editgan_fast/py.typed", "editgan_fast/kernels/seg_head.py", "editgan_fast/assets/toyfaces_g.pt",
            "editgan_fast/native.py"} <= names
    assert any(n.endswith(".dist-info/licenses/LICENSE") or n.endswith(".dist-info/LICENSE") for n in names)
    assert f'TORCH_VERSION = "{torch.__version__}"' in build_info
    sections = subprocess.run(["readelf", "-S", "-W", str(tmp_path / so)], check=True, capture_output=True,
                              text=True).stdout
    assert ".debug_info" not in sections  # release builds are stripped of debug information
