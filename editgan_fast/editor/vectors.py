"""Editing vectors: an offset δ in w+ space that performs one semantic edit, and a named collection of them.

File format (ours): one `.npz` written without pickle, loadable with `numpy.load(allow_pickle=False)`:
    meta        a 0-d unicode array holding JSON: {"format": "editgan-fast-vectors", "version": 1,
                "vectors": [{"name", "classes", "fingerprint", "num_ws", "style_dim"}, ...]}
    delta_<i>   float32 [num_ws, style_dim], the i-th vector's δ (in the order of "vectors")
`EditVector.save` writes a library of one. EditGAN's own vector files (`.npy`, float32 [1, num_ws, 512]) are
imported with `EditVector.from_editgan_npy`; they carry no classes or generator fingerprint, so the caller
names the generator they belong to.
"""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import torch

from ..errors import FileFormatError, MismatchError

FORMAT = "editgan-fast-vectors"
VERSION = 1


class VectorFileError(FileFormatError):
    """A vector file is missing, unreadable, or not in a format we read."""


class VectorMismatchError(MismatchError):
    """A vector belongs to another generator (different weights, num_ws or style_dim)."""


def wplus_matrix(t, what: str) -> torch.Tensor:
    """A float tensor [num_ws, style_dim] (EditGAN's [1, num_ws, style_dim] accepted), or a ValueError naming
    `what` and the shape it got."""
    if not isinstance(t, torch.Tensor) or not t.is_floating_point():
        raise ValueError(f"{what} must be a float tensor [num_ws, style_dim], got {type(t).__name__}"
                         + (f" of {t.dtype}" if isinstance(t, torch.Tensor) else ""))
    if t.ndim == 3 and t.shape[0] == 1:
        t = t[0]
    if t.ndim != 2:
        raise ValueError(f"{what} must have shape [num_ws, style_dim], got {tuple(t.shape)}")
    return t


class EditVector:
    """δ [num_ws, style_dim] (float32, CPU), the class ids it edits, a name, and the fingerprint of its generator.

    Hashes by identity, so vectors can key the `{vector: scale}` dicts that `Editor.apply` takes.
    """

    def __init__(self, delta: torch.Tensor, classes=(), name: str = "edit", fingerprint: str = ""):
        delta = wplus_matrix(delta, "an editing vector's delta")
        if not torch.isfinite(delta).all():
            raise ValueError("delta contains NaN or Inf")
        self.delta = delta.detach().to("cpu", torch.float32).contiguous()
        self.classes = tuple(sorted({int(c) for c in classes}))
        if any(c < 0 for c in self.classes):
            raise ValueError(f"class ids must be >= 0, got {self.classes}")
        self.name = str(name)
        self.fingerprint = str(fingerprint)

    @property
    def num_ws(self) -> int:
        return self.delta.shape[0]

    @property
    def style_dim(self) -> int:
        return self.delta.shape[1]

    def __repr__(self):
        return (f"EditVector(name={self.name!r}, classes={list(self.classes)}, num_ws={self.num_ws}, "
                f"style_dim={self.style_dim}, fingerprint={self.fingerprint!r}, |δ|={self.delta.norm():.3g})")

    def __add__(self, other: "EditVector") -> "EditVector":
        """The composition of two edits: δ₁ + δ₂ (same generator), the union of their classes."""
        if not isinstance(other, EditVector):
            return NotImplemented
        other.check_compatible(self.fingerprint, self.num_ws, self.style_dim)
        return EditVector(self.delta + other.delta, self.classes + other.classes, f"{self.name}+{other.name}",
                          self.fingerprint)

    def check_compatible(self, fingerprint: str, num_ws: int, style_dim: int) -> None:
        """Raise VectorMismatchError unless this vector was made for a generator with these properties."""
        if (self.num_ws, self.style_dim) != (num_ws, style_dim):
            raise VectorMismatchError(
                f"editing vector {self.name!r} has shape [{self.num_ws}, {self.style_dim}], the generator's w+ is "
                f"[{num_ws}, {style_dim}]: it was made for another generator")
        if self.fingerprint and fingerprint and self.fingerprint != fingerprint:
            raise VectorMismatchError(
                f"editing vector {self.name!r} was made for generator {self.fingerprint}, not for this one "
                f"({fingerprint}); vectors only transfer between images of the same generator")

    def check_for(self, generator) -> None:
        self.check_compatible(generator.fingerprint(), generator.num_ws, generator.style_dim)

    def save(self, path) -> Path:
        return VectorLibrary([self]).save(path)

    @classmethod
    def load(cls, path, generator=None, name: str | None = None) -> "EditVector":
        """The one vector in `path` (or the one called `name`); checked against `generator` when given."""
        lib = VectorLibrary.load(path, generator)
        if name is not None:
            return lib[name]
        if len(lib) != 1:
            raise VectorFileError(f"{path} holds {len(lib)} vectors ({', '.join(lib.names)}); say which one by name")
        return next(iter(lib))

    @classmethod
    def from_editgan_npy(cls, path, generator, classes=(), name: str | None = None) -> "EditVector":
        """Import an EditGAN vector (`.npy`, float [1, num_ws, 512] or [num_ws, 512]) for `generator`."""
        path = Path(path)
        if not path.is_file():
            raise VectorFileError(f"vector file {path} does not exist")
        try:
            array = np.load(path, allow_pickle=False)
        except (ValueError, OSError) as e:
            raise VectorFileError(f"{path} is not a NumPy .npy array file: {e}") from None
        if array.dtype.kind != "f":
            raise VectorFileError(f"{path}: an EditGAN vector holds floats, got dtype {array.dtype}")
        want = (generator.num_ws, generator.style_dim)
        if array.shape not in (want, (1, *want)):
            raise VectorMismatchError(f"{path} has shape {array.shape}; vectors for this generator have shape "
                                      f"[1, {want[0]}, {want[1]}] (EditGAN) or [{want[0]}, {want[1]}]")
        return cls(torch.from_numpy(array.reshape(want).astype(np.float32)), classes, name or path.stem,
                   generator.fingerprint())


class VectorLibrary:
    """An ordered set of uniquely named EditVectors, saved to and loaded from one `.npz` file."""

    def __init__(self, vectors=()):
        self._vectors: dict[str, EditVector] = {}
        for v in vectors:
            self.add(v)

    def add(self, vector: EditVector) -> None:
        if not isinstance(vector, EditVector):
            raise ValueError(f"a VectorLibrary holds EditVectors, got {type(vector).__name__}")
        if vector.name in self._vectors:
            raise ValueError(f"the library already has a vector named {vector.name!r}")
        self._vectors[vector.name] = vector

    @property
    def names(self) -> list[str]:
        return list(self._vectors)

    def __len__(self):
        return len(self._vectors)

    def __iter__(self):
        return iter(self._vectors.values())

    def __getitem__(self, name: str) -> EditVector:
        try:
            return self._vectors[name]
        except KeyError:
            raise KeyError(f"no vector named {name!r}; the library has {self.names}") from None

    def save(self, path) -> Path:
        path = Path(path)
        if path.suffix != ".npz":
            raise VectorFileError(f"vector files are .npz, got {path.name!r}")
        meta = {"format": FORMAT, "version": VERSION,
                "vectors": [{"name": v.name, "classes": list(v.classes), "fingerprint": v.fingerprint,
                             "num_ws": v.num_ws, "style_dim": v.style_dim} for v in self]}
        arrays = {f"delta_{i}": v.delta.numpy() for i, v in enumerate(self)}
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as f:  # a file object: numpy would otherwise append .npz to other names
            np.savez(f, meta=np.array(json.dumps(meta)), **arrays)
        return path

    @classmethod
    def load(cls, path, generator=None) -> "VectorLibrary":
        """Read a file written by `save` (never unpickles); check every vector against `generator` if given."""
        path = Path(path)
        if not path.is_file():
            raise VectorFileError(f"vector file {path} does not exist")
        if path.suffix == ".npy":
            raise VectorFileError(f"{path} is a bare .npy array (EditGAN's format?); import it with "
                                  f"EditVector.from_editgan_npy, which needs the generator it belongs to")
        try:
            with np.load(path, allow_pickle=False) as data:
                meta = json.loads(str(data["meta"][()]))
                if meta.get("format") != FORMAT or meta.get("version") != VERSION:
                    raise VectorFileError(f"{path} is not an {FORMAT} file of version {VERSION}")
                vectors = []
                for i, m in enumerate(meta["vectors"]):
                    delta = torch.from_numpy(np.array(data[f"delta_{i}"]))
                    if tuple(delta.shape) != (m["num_ws"], m["style_dim"]) or delta.dtype != torch.float32:
                        raise VectorFileError(f"{path}: vector {m['name']!r} has a {delta.dtype} array of shape "
                                              f"{tuple(delta.shape)}, its header says float32 "
                                              f"[{m['num_ws']}, {m['style_dim']}]")
                    vectors.append(EditVector(delta, m["classes"], m["name"], m["fingerprint"]))
        except VectorFileError:
            raise
        except (ValueError, KeyError, TypeError, OSError, zipfile.BadZipFile, json.JSONDecodeError) as e:
            raise VectorFileError(f"{path} is not a readable {FORMAT} .npz file: {type(e).__name__}: {e}") from None
        if generator is not None:
            for v in vectors:
                v.check_for(generator)
        return cls(vectors)
