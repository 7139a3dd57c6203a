"""EditVector / VectorLibrary: safe files that round-trip bit-exactly, and refusal of foreign vectors."""
import numpy as np
import pytest
import torch

from editgan_fast.editor import EditVector, VectorFileError, VectorLibrary, VectorMismatchError
from editgan_fast.models.generator import Generator


def small_generator(seed):
    torch.manual_seed(seed)
    return Generator(16, style_dim=16, n_mlp=2, channels={4: 8, 8: 8, 16: 4}).eval().requires_grad_(False)


@pytest.fixture(scope="module")
def generators():
    return small_generator(0), small_generator(1)


def random_vector(g, seed, name="v", classes=(1, 3)):
    delta = torch.randn(g.num_ws, g.style_dim, generator=torch.Generator().manual_seed(seed))
    return EditVector(delta, classes, name, g.fingerprint())


def test_save_load_round_trips_bit_exactly(tmp_path, generators):
    g, _ = generators
    v = random_vector(g, 0, "enlarge_eyes", (4, 2))
    path = v.save(tmp_path / "v.npz")
    back = EditVector.load(path, g)
    assert torch.equal(back.delta, v.delta) and back.delta.dtype == torch.float32
    assert (back.name, back.classes, back.fingerprint, back.num_ws) == ("enlarge_eyes", (2, 4), g.fingerprint(),
                                                                        g.num_ws)


def test_library_round_trip_and_lookup(tmp_path, generators):
    g, _ = generators
    lib = VectorLibrary([random_vector(g, 1, "a"), random_vector(g, 2, "b", (5,))])
    lib.save(tmp_path / "lib.npz")
    back = VectorLibrary.load(tmp_path / "lib.npz", g)
    assert back.names == ["a", "b"]
    for name in ("a", "b"):
        assert torch.equal(back[name].delta, lib[name].delta) and back[name].classes == lib[name].classes
    with pytest.raises(VectorFileError, match="holds 2 vectors"):
        EditVector.load(tmp_path / "lib.npz")
    assert torch.equal(EditVector.load(tmp_path / "lib.npz", name="b").delta, lib["b"].delta)
    with pytest.raises(KeyError, match="no vector named 'c'"):
        back["c"]
    with pytest.raises(ValueError, match="already has a vector named 'a'"):
        lib.add(random_vector(g, 3, "a"))


def test_vector_of_another_generator_is_refused(tmp_path, generators):
    g, other = generators
    random_vector(g, 0).save(tmp_path / "v.npz")
    with pytest.raises(VectorMismatchError, match="made for generator"):
        EditVector.load(tmp_path / "v.npz", other)
    bigger = Generator(32, style_dim=16, n_mlp=2, channels={4: 8, 8: 8, 16: 4, 32: 4})
    with pytest.raises(VectorMismatchError, match=r"shape \[6, 16\].*\[8, 16\]"):
        EditVector.load(tmp_path / "v.npz", bigger)


def test_addition_composes_deltas_and_refuses_foreign_vectors(generators):
    g, other = generators
    a, b = random_vector(g, 0, "a", (1,)), random_vector(g, 1, "b", (2,))
    s = a + b
    assert torch.equal(s.delta, a.delta + b.delta) and s.classes == (1, 2) and s.fingerprint == g.fingerprint()
    with pytest.raises(VectorMismatchError):
        a + random_vector(other, 2)


def test_editgan_npy_import(tmp_path, generators):
    g, _ = generators
    array = np.random.default_rng(0).standard_normal((1, g.num_ws, g.style_dim)).astype(np.float32)
    np.save(tmp_path / "wheel_enlarge.npy", array)
    v = EditVector.from_editgan_npy(tmp_path / "wheel_enlarge.npy", g, classes=(3,))
    assert torch.equal(v.delta, torch.from_numpy(array[0])) and v.name == "wheel_enlarge" and v.classes == (3,)
    assert v.fingerprint == g.fingerprint()
    np.save(tmp_path / "bad.npy", array[:, :-1])
    with pytest.raises(VectorMismatchError, match="shape"):
        EditVector.from_editgan_npy(tmp_path / "bad.npy", g)
    with pytest.raises(VectorFileError, match="from_editgan_npy"):
        VectorLibrary.load(tmp_path / "wheel_enlarge.npy")


def test_bad_files_are_clear_errors(tmp_path, generators):
    with pytest.raises(VectorFileError, match="does not exist"):
        VectorLibrary.load(tmp_path / "missing.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip file at all")
    with pytest.raises(VectorFileError, match="not a readable"):
        VectorLibrary.load(tmp_path / "junk.npz")
    # An object array needs pickle to load: it must be refused, never unpickled.
    np.savez(tmp_path / "pickled.npz", meta=np.array([{"format": "editgan-fast-vectors"}], dtype=object))
    with pytest.raises(VectorFileError, match="never pickles"):
        VectorLibrary.load(tmp_path / "pickled.npz")
    np.savez(tmp_path / "other.npz", meta=np.array('{"format": "something else", "version": 1}'))
    with pytest.raises(VectorFileError, match="not an editgan-fast-vectors file"):
        VectorLibrary.load(tmp_path / "other.npz")
    with pytest.raises(VectorFileError, match=r"\.npz"):
        random_vector(generators[0], 0).save(tmp_path / "v.pt")


def test_bad_deltas_are_refused():
    with pytest.raises(ValueError, match="NaN or Inf"):
        EditVector(torch.tensor([[float("nan")]]))
    with pytest.raises(ValueError, match=r"\[num_ws, style_dim\]"):
        EditVector(torch.randn(3))
    with pytest.raises(ValueError, match="class ids must be >= 0"):
        EditVector(torch.randn(2, 4), classes=(-1,))
