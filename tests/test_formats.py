"""Formats users already have: stylegan2-ada's projected_w.npz and seeds, EditGAN's latent .npy, vectors as
.safetensors with their metadata in the header (and the .npz format still read)."""
import json

import numpy as np
import pytest
import safetensors
import torch

from editgan_fast import io
from editgan_fast.cli import main
from editgan_fast.editor import EditVector, VectorLibrary, random_editor
from editgan_fast.editor.seeds import seed_z
from editgan_fast.errors import FileFormatError, InputValueError


@pytest.fixture(scope="module")
def editor():
    return random_editor(0, progress=False)


def test_projected_w_npz_and_editgan_npy_latents(tmp_path):
    w = torch.randn(6, 16)
    np.savez(tmp_path / "projected_w.npz", w=w.numpy()[None])          # stylegan2-ada's projector output
    assert torch.equal(io.load_latent(tmp_path / "projected_w.npz", 6, 16), w)
    np.save(tmp_path / "editgan.npy", w.double().numpy()[None])          # EditGAN: [1, num_ws, 512], any float
    assert torch.allclose(io.load_latent(tmp_path / "editgan.npy", 6, 16), w)
    np.savez(tmp_path / "other.npz", z=w.numpy())
    with pytest.raises(FileFormatError, match="holds \\['z'\\]"):
        io.load_latent(tmp_path / "other.npz", 6, 16)
    EditVector(w).save(tmp_path / "v.npz")
    with pytest.raises(FileFormatError, match="editing-vector file"):
        io.load_latent(tmp_path / "v.npz", 6, 16)
    np.save(tmp_path / "nan.npy", np.full((6, 16), np.nan, np.float32))
    with pytest.raises(FileFormatError, match="NaN"):
        io.load_latent(tmp_path / "nan.npy", 6, 16)


def test_ada_seed_style_reproduces_stylegan2_ada_z(editor, tmp_path, capsys):
    g = editor.generator
    for seed in (0, 5, 2 ** 32 - 1):
        want = np.random.RandomState(seed).randn(1, g.style_dim)
        assert torch.equal(seed_z(seed, g.style_dim, "ada"), torch.from_numpy(want).float())
    with pytest.raises(InputValueError, match="2\\*\\*32"):
        seed_z(2 ** 32, g.style_dim, "ada")
    # stylegan2-ada's generate.py: w = mapping(z) at truncation 1.0, the same w in every layer.
    z = seed_z(5, g.style_dim, "ada")
    with torch.no_grad():
        w = g.mapping(z)[0]
    code = main(["generate", "--seed", "5", "--seed-style", "ada", "--random-model", "--out", str(tmp_path / "a.png"),
                 "--latent-out", str(tmp_path / "a.npy"), "--quiet", "--json"])
    assert code == 0, capsys.readouterr().err
    latent = io.load_latent(tmp_path / "a.npy", g.num_ws, g.style_dim)
    assert torch.allclose(latent, w.expand(g.num_ws, -1), atol=1e-5)
    torch_style = editor.sample(5, truncation=1.0).wplus
    assert not torch.allclose(torch_style, latent)


def test_vectors_as_safetensors_with_metadata_in_the_header(tmp_path):
    vectors = [EditVector(torch.randn(6, 16), (2, 1), "wider wheels", "0123456789abcdef"),
               EditVector(torch.randn(6, 16), (3,), "smile", "0123456789abcdef")]
    VectorLibrary(vectors).save(tmp_path / "lib.safetensors")
    with safetensors.safe_open(str(tmp_path / "lib.safetensors"), framework="np") as f:
        metadata = f.metadata()
        assert sorted(f.keys()) == ["delta_0", "delta_1"]
        assert np.array_equal(f.get_tensor("delta_1"), vectors[1].delta.numpy())
    assert metadata["format"] == "editgan-fast-vectors" and metadata["version"] == "1"
    assert json.loads(metadata["vectors"]) == [
        {"name": "wider wheels", "classes": [1, 2], "fingerprint": "0123456789abcdef", "num_ws": 6, "style_dim": 16},
        {"name": "smile", "classes": [3], "fingerprint": "0123456789abcdef", "num_ws": 6, "style_dim": 16}]
    for suffix in (".safetensors", ".npz"):
        VectorLibrary(vectors).save(tmp_path / f"again{suffix}")
        loaded = VectorLibrary.load(tmp_path / f"again{suffix}")
        assert loaded.names == ["wider wheels", "smile"]
        assert all(torch.equal(loaded[v.name].delta, v.delta) and loaded[v.name].classes == v.classes
                   and loaded[v.name].fingerprint == v.fingerprint for v in vectors)
