"""The bundled trained toy-face model (see editgan_fast.toyfaces and editgan_fast.train).

Files here: toyfaces_g.pt (rosinality-format generator), toyfaces_seg_<i>.pth (EditGAN-format classifiers)
and manifest.json (their sha256, the architecture, the segmenter's measured mIoU). They load through the public
loaders, after the checksums are verified, so a corrupted or replaced file is a clear error, never a silently
different model.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ..errors import FileFormatError

ASSETS = Path(__file__).parent
MANIFEST = ASSETS / "manifest.json"
RESTORE = ("restore the files with `git checkout -- editgan_fast/assets` (or reinstall editgan-fast), or ask for "
           "the untrained random model explicitly (--random-model, default_editor(trained=False))")


class BundledModelError(FileFormatError, RuntimeError):
    """The bundled model is missing or its files do not match manifest.json."""


def manifest() -> dict:
    if not MANIFEST.is_file():
        raise BundledModelError(f"no bundled model: {MANIFEST} is missing; {RESTORE}")
    return json.loads(MANIFEST.read_text())


def available() -> bool:
    return MANIFEST.is_file()


def sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verified_files() -> dict[str, Path]:
    """{file name: path} of every bundled file, after checking each one's sha256 against the manifest."""
    files = {}
    for name, digest in manifest()["sha256"].items():
        path = ASSETS / name
        if not path.is_file():
            raise BundledModelError(f"bundled model file {path} is missing; {RESTORE}")
        if sha256(path) != digest:
            raise BundledModelError(f"bundled model file {path} does not match its sha256 in {MANIFEST}: "
                                    f"the file is corrupted or was replaced; {RESTORE}")
        files[name] = path
    return files


def load_bundled(map_location="cpu"):
    """(generator, segmenter) of the bundled model, through the public loaders."""
    from ..models.loaders import load_generator
    from ..models.segmenter import load_segmenter
    files = verified_files()
    generator = load_generator(files.pop(manifest()["generator"]), map_location=map_location)
    segmenter = load_segmenter(sorted(files.values()), generator)
    return generator, segmenter


def bundled_editor(**editor_options):
    """An Editor over the bundled model (what default_editor() uses once weights ship)."""
    from ..editor.editor import Editor
    generator, segmenter = load_bundled()
    return Editor(generator, segmenter, **editor_options)
