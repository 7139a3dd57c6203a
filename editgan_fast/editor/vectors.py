"""Editing vectors: an offset δ in w+ space that performs one semantic edit, and a named collection of them.

File formats (ours), both written atomically and read without pickle:
- `.safetensors` (the default; the model-sharing ecosystem's convention): tensors `delta_<i>` float32
  [num_ws, style_dim], and in the header's string metadata "format" = "editgan-fast-vectors", "version" = "1",
  "vectors" = JSON [{"name", "classes", "fingerprint", "num_ws", "style_dim"}, ...] (in the order of the tensors).
- `.npz` (still read and written): `meta`, a 0-d unicode array holding JSON {"format", "version", "vectors"} as
  above, and the same `delta_<i>` arrays.
`EditVector.save` writes a library of one. EditGAN's own vector files (`.npy`, float32 [1, num_ws, 512]) are
imported with `EditVector.from_editgan_npy`; they carry no classes or generator fingerprint, so the caller
names the generator they belong to. Every array is checked against `editgan_fast.limits` before it is read.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import safetensors
import safetensors.numpy
import torch

from .. import io, limits
from ..errors import FileFormatError, InputValueError, LimitExceeded, MismatchError

FORMAT = "editgan-fast-vectors"
VERSION = 1
SUFFIXES = (".safetensors", ".npz")


class VectorFileError(FileFormatError):
    """A vector file is missing, unreadable, or not in a format we read."""


class VectorMismatchError(MismatchError):
    """A vector belongs to another generator (different weights, num_ws or style_dim)."""


def wplus_matrix(t, what: str) -> torch.Tensor:
    """A finite float tensor [num_ws, style_dim] (EditGAN's [1, num_ws, style_dim] accepted), or an
    InputValueError naming `what` and what is wrong."""
    if not isinstance(t, torch.Tensor) or not t.is_floating_point():
        raise InputValueError(f"{what} must be a float tensor [num_ws, style_dim], got {type(t).__name__}"
                              + (f" of {t.dtype}" if isinstance(t, torch.Tensor) else ""))
    if t.ndim == 3 and t.shape[0] == 1:
        t = t[0]
    if t.ndim != 2:
        raise InputValueError(f"{what} must have shape [num_ws, style_dim], got {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise InputValueError(f"{what} contains NaN or Inf")
    return t


class EditVector:
    """δ [num_ws, style_dim] (float32, CPU), the class ids it edits, a name, and the fingerprint of its generator.

    Hashes by identity, so vectors can key the `{vector: scale}` dicts that `Editor.apply` takes.
    """

    def __init__(self, delta: torch.Tensor, classes=(), name: str = "edit", fingerprint: str = ""):
        delta = wplus_matrix(delta, "an editing vector's delta")
        self.delta = delta.detach().to("cpu", torch.float32).contiguous()
        try:
            self.classes = tuple(sorted({int(c) for c in classes}))
        except (TypeError, ValueError, OverflowError):
            raise InputValueError(f"classes must be a sequence of integer class ids, got {classes!r}") from None
        if any(c < 0 for c in self.classes):
            raise InputValueError(f"class ids must be >= 0, got {self.classes}")
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
            array = io.load_npy(path)
        except FileFormatError as e:
            raise VectorFileError(str(e)) from None
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
        if not isinstance(vectors, (list, tuple, VectorLibrary)) and not hasattr(vectors, "__next__"):
            raise InputValueError(f"a VectorLibrary is built from a list of EditVectors, got {type(vectors).__name__}")
        for v in vectors:
            self.add(v)

    def add(self, vector: EditVector) -> None:
        if not isinstance(vector, EditVector):
            raise InputValueError(f"a VectorLibrary holds EditVectors, got {type(vector).__name__}")
        if vector.name in self._vectors:
            raise InputValueError(f"the library already has a vector named {vector.name!r}")
        limits.check("vectors_per_library", len(self._vectors) + 1, "vectors in one library")
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

    def _header(self) -> dict:
        return {"format": FORMAT, "version": VERSION,
                "vectors": [{"name": v.name, "classes": list(v.classes), "fingerprint": v.fingerprint,
                             "num_ws": v.num_ws, "style_dim": v.style_dim} for v in self]}

    def save(self, path) -> Path:
        """Write the library atomically as `.safetensors` or `.npz` (by the file's suffix)."""
        path = Path(path)
        if path.suffix not in SUFFIXES:
            raise VectorFileError(f"vector files are .safetensors (or .npz), got {path.name!r}")
        arrays = {f"delta_{i}": v.delta.numpy() for i, v in enumerate(self)}
        header = self._header()
        with io.atomic_write(path) as f:
            if path.suffix == ".safetensors":
                metadata = {"format": FORMAT, "version": str(VERSION), "vectors": json.dumps(header["vectors"])}
                f.write(safetensors.numpy.save(arrays, metadata=metadata))
            else:
                np.savez(f, meta=np.array(json.dumps(header)), **arrays)
        return path

    @classmethod
    def load(cls, path, generator=None) -> "VectorLibrary":
        """Read a file written by `save` (never unpickles; sizes checked before reading); check every vector
        against `generator` if given."""
        path = Path(path)
        if not path.is_file():
            raise VectorFileError(f"vector file {path} does not exist")
        head = io.file_magic(path, 9)
        if head.startswith(io.NPY_MAGIC):
            raise VectorFileError(f"{path} is a bare .npy array (EditGAN's format?); import it with "
                                  f"EditVector.from_editgan_npy, which needs the generator it belongs to")
        try:
            if head.startswith(io.ZIP_MAGIC):
                arrays = io.load_npz(path)
                if "meta" not in arrays or arrays["meta"].dtype.kind != "U" or arrays["meta"].ndim != 0:
                    raise VectorFileError(f"{path} is an .npz without {FORMAT} metadata")
                header = json.loads(str(arrays["meta"][()]))
            elif len(head) == 9 and head[8:9] == b"{":
                header, arrays = _read_safetensors(path)
            else:
                raise VectorFileError(f"{path} is not a readable vector file (.safetensors or .npz)")
            library = cls(_vectors_from(path, header, arrays))
        except (VectorFileError, LimitExceeded):
            raise
        except (FileFormatError, InputValueError) as e:
            raise VectorFileError(f"{path}: {e}" if str(path) not in str(e) else str(e)) from None
        except (ValueError, KeyError, TypeError, AttributeError, json.JSONDecodeError) as e:
            raise VectorFileError(f"{path} is not a readable {FORMAT} file: {type(e).__name__}: {e}") from None
        if generator is not None:
            for v in library:
                v.check_for(generator)
        return library


def _read_safetensors(path: Path) -> tuple[dict, dict[str, np.ndarray]]:
    """(header, {name: array}) of a vectors `.safetensors`; shapes checked against the limits before reading."""
    try:
        with safetensors.safe_open(os.fspath(path), framework="np") as f:
            metadata = f.metadata() or {}
            header = {"format": metadata.get("format"), "version": metadata.get("version"),
                      "vectors": json.loads(metadata.get("vectors", "null"))}
            header["version"] = int(header["version"]) if str(header["version"]).isdigit() else None
            keys = list(f.keys())
            limits.check("vectors_per_library", len(keys), f"{path} holds {len(keys)} tensors")
            arrays, total = {}, 0
            for key in keys:
                shape = f.get_slice(key).get_shape()
                total += math.prod(shape) * 4
                limits.check("array_bytes", total, f"{path}: tensor {key!r} of shape {shape} (with those before)")
                arrays[key] = f.get_tensor(key)
    except safetensors.SafetensorError as e:
        raise VectorFileError(f"{path} is not a readable .safetensors file: {e}") from None
    return header, arrays


def _vectors_from(path, header: dict, arrays: dict[str, np.ndarray]) -> list[EditVector]:
    """The EditVectors of a vector file's header and arrays, each array checked against its header entry."""
    if not isinstance(header, dict) or header.get("format") != FORMAT or header.get("version") != VERSION:
        raise VectorFileError(f"{path} is not an {FORMAT} file of version {VERSION}")
    entries = header["vectors"]
    if not isinstance(entries, list):
        raise VectorFileError(f"{path}: the header's vector list is a {type(entries).__name__}")
    limits.check("vectors_per_library", len(entries), f"{path} lists {len(entries)} vectors")
    vectors = []
    for i, m in enumerate(entries):
        if f"delta_{i}" not in arrays:
            raise VectorFileError(f"{path}: vector {i} ({m.get('name')!r}) has no array delta_{i}")
        delta = arrays[f"delta_{i}"]
        if tuple(delta.shape) != (m["num_ws"], m["style_dim"]) or delta.dtype != np.float32:
            raise VectorFileError(f"{path}: vector {m['name']!r} has a {delta.dtype} array of shape "
                                  f"{tuple(delta.shape)}, its header says float32 [{m['num_ws']}, {m['style_dim']}]")
        if not isinstance(m["name"], str) or not isinstance(m["fingerprint"], str):
            raise VectorFileError(f"{path}: vector {i}'s name and fingerprint must be strings")
        try:
            vectors.append(EditVector(torch.from_numpy(np.array(delta)), m["classes"], m["name"], m["fingerprint"]))
        except InputValueError as e:
            raise VectorFileError(f"{path}: vector {m['name']!r}: {e}") from None
    return vectors
