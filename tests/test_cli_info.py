"""`editgan-fast info`, `--version`, `--dtype` and `--device` checks."""
import json

import pytest
import torch
from PIL import Image

import editgan_fast
from editgan_fast import backend
from editgan_fast.cli import main


@pytest.fixture
def restore_backend():
    yield
    editgan_fast.set_backend("auto")  # --backend / --dtype set the process-wide selection


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and editgan_fast.__version__ in capsys.readouterr().out


def test_info_reports_versions_backends_and_branches(capsys):
    assert main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["version"] == editgan_fast.__version__ and info["torch"] == torch.__version__
    assert info["auto_backend"]["cpu"] == ("cpu" if backend.available("cpu") else "reference")
    if backend.available("cpu"):
        cpu = info["cpu_backend"]
        assert cpu["isa"]["running"] in ("portable", "avx2", "avx512")
        assert cpu["bf16_products"]["running"] in ("native", "fp32")
    assert main(["info"]) == 0 and "auto_backend:" in capsys.readouterr().out


def test_dtype_bf16_generates(capsys, tmp_path, restore_backend):
    out = tmp_path / "bf16.png"
    assert main(["generate", "--seed", "3", "--dtype", "bf16", "--out", str(out), "--quiet", "--json"]) == 0
    assert backend.current().dtype == torch.bfloat16
    assert Image.open(out).size[0] > 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error of a torch without a usable GPU")
def test_device_cuda_without_cuda_is_one_clear_line(capsys, tmp_path):
    for argv in (["generate", "--out", str(tmp_path / "x.png")], ["demo", "--out", str(tmp_path / "d")]):
        assert main([*argv, "--device", "cuda", "--quiet"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("editgan-fast: error: --device cuda:")
    assert not (tmp_path / "x.png").exists() and not (tmp_path / "d").exists()
