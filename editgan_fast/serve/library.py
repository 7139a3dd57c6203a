"""The vector library on disk: one `.npz` per vector (our format, written atomically) in a directory, loaded
at start. Uploads are our `.npz` or `.safetensors` (one or many vectors) or EditGAN's `.npy`; every vector is checked against
the served generator and every name against the library before anything is written, so a bad upload stores
nothing."""
from __future__ import annotations

import contextlib
import re
import tempfile
import threading
import warnings
from pathlib import Path

from ..editor import EditVector, VectorLibrary
from ..errors import FileFormatError, InputValueError
from .errormap import Conflict, NotFound
from .limits import Limits

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


def check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME.match(name):
        raise InputValueError(f"vector names are 1-64 letters, digits, '_' or '-' (starting with a letter or "
                              f"digit), got {name!r}")
    return name


class VectorStore:
    def __init__(self, directory, editor, limits: Limits):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.editor, self.limits = editor, limits
        self._vectors: dict[str, EditVector] = {}
        self._lock = threading.Lock()
        for path in sorted(self.directory.glob("*.npz")):
            try:
                vector = EditVector.load(path, editor.generator)
                self._vectors[check_name(vector.name)] = vector
            except (ValueError, KeyError) as e:  # another generator's vector, or a foreign file: skip, say so
                warnings.warn(f"vector library: skipping {path.name}: {e}")

    def _path(self, name: str) -> Path:
        return self.directory / f"{name}.npz"

    def names(self) -> list[str]:
        with self._lock:
            return list(self._vectors)

    def get(self, name: str) -> EditVector:
        with self._lock:
            vector = self._vectors.get(name)
        if vector is None:
            raise NotFound(f"no vector named {name!r} in the library")
        return vector

    def describe(self, vector: EditVector) -> dict:
        return {"name": vector.name, "classes": list(vector.classes), "fingerprint": vector.fingerprint,
                "norm": round(float(vector.delta.norm()), 4)}

    def add(self, vectors: list[EditVector]) -> list[EditVector]:
        """Store `vectors` (all or none): names free and valid, classes known, the generator's."""
        g = self.editor.generator
        names = [check_name(v.name) for v in vectors]
        if len(set(names)) != len(names):
            raise InputValueError(f"the upload names a vector twice: {names}")
        for v in vectors:
            v.check_for(g)
            unknown = [c for c in v.classes if c >= self.editor.num_classes]
            if unknown:
                raise InputValueError(f"vector {v.name!r} records unknown class id(s) {unknown}; the segmenter has "
                                      f"classes 0..{self.editor.num_classes - 1}")
        with self._lock:
            taken = [n for n in names if n in self._vectors]
            if taken:
                raise Conflict(f"the library already has vector(s) named {taken}; delete them or choose other names")
            self.limits.check("the library's size after this upload", len(self._vectors) + len(vectors),
                              "max_library_vectors")
            written = []
            try:
                for v in vectors:
                    self._write(v)
                    written.append(v)
            except BaseException:
                for v in written:
                    with contextlib.suppress(FileNotFoundError):
                        self._path(v.name).unlink()
                raise
            for v in vectors:
                self._vectors[v.name] = v
        return vectors

    def _write(self, vector: EditVector) -> None:
        VectorLibrary([vector]).save(self._path(vector.name))  # atomic: never a half-written file

    def upload(self, filename: str, data: bytes, name: str | None = None, classes=()) -> list[EditVector]:
        """Parse an uploaded vector file (ours: `.npz` or `.safetensors`; EditGAN's `.npy`) and store its
        vectors."""
        suffix = Path(filename or "").suffix.lower()
        if suffix not in (".npz", ".safetensors", ".npy"):
            raise FileFormatError(f"vector uploads are .npz or .safetensors (editgan-fast) or .npy (EditGAN) "
                                  f"files, got {filename!r}")
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"upload{suffix}"
            path.write_bytes(data)
            if suffix == ".npy":
                vectors = [EditVector.from_editgan_npy(path, self.editor.generator, classes=classes,
                                                       name=name or Path(filename).stem)]
            else:
                vectors = list(VectorLibrary.load(path, self.editor.generator))
                if name is not None:
                    if len(vectors) != 1:
                        raise InputValueError(f"the file holds {len(vectors)} vectors; a name renames only one")
                    vectors = [EditVector(vectors[0].delta, vectors[0].classes, name, vectors[0].fingerprint)]
        return self.add(vectors)

    def file_bytes(self, name: str) -> bytes:
        self.get(name)
        return self._path(name).read_bytes()

    def delete(self, name: str) -> None:
        with self._lock:
            if self._vectors.pop(name, None) is None:
                raise NotFound(f"no vector named {name!r} in the library")
            with contextlib.suppress(FileNotFoundError):
                self._path(name).unlink()
