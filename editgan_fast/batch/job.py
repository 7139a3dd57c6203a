"""What a batch job renders: its items (where each latent comes from), its settings (vector scales), and how the
(item, setting) samples are cut into shards.

A job is plain data (picklable, no models), so a Ray actor can receive it and resolve items itself; its
`describe()` is stored in the manifest, and a rerun into the same folder must describe the same job.
"""
from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path

from ..editor.vectors import EditVector, VectorLibrary
from ..errors import InputValueError

LATENT_SUFFIXES = (".npy", ".npz")
FORMATS = ("webdataset", "parquet")
PHOTO_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


@dataclass(frozen=True)
class Item:
    """One input latent: `kind` "seed" (ref: the seed), "latent" (ref: a .npy/.npz path) or "photo" (ref: an
    image path, embedded first); `id` names it in the manifest."""
    kind: str
    ref: int | str
    id: str


# A setting: ((vector name, scale), ...) in the library's order.
Setting = tuple


def parse_seeds(text: str) -> list[int]:
    """"0-999" (inclusive), "3", or a comma-separated mix like "0-9,20,30-31"."""
    seeds = []
    for part in str(text).split(","):
        lo, sep, hi = part.strip().partition("-")
        try:
            first, last = int(lo), int(hi) if sep else int(lo)
        except ValueError:
            raise InputValueError(f"--seeds takes ranges like 0-999 or 1,5,9, got {text!r}") from None
        if first < 0 or last < first:
            raise InputValueError(f"--seeds: {part!r} is not a range of seeds >= 0 (first <= last)")
        seeds.extend(range(first, last + 1))
    return seeds


def seed_items(seeds) -> list[Item]:
    seeds = parse_seeds(seeds) if isinstance(seeds, str) else [int(s) for s in seeds]
    return [Item("seed", s, f"seed{s}") for s in seeds]


def _files(folder, suffixes, what) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{what} folder {folder} does not exist")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in suffixes)
    if not files:
        raise InputValueError(f"{folder} holds no {what} ({', '.join(suffixes)})")
    return files


def latent_items(folder) -> list[Item]:
    """Every .npy / .npz latent in `folder` (sorted by name; an .npz holds one array)."""
    return [Item("latent", str(p.resolve()), p.name) for p in _files(folder, LATENT_SUFFIXES, "latents")]


def photo_items(folder) -> list[Item]:
    """Every image in `folder` (sorted by name), embedded into w+ before editing."""
    return [Item("photo", str(p.resolve()), p.name) for p in _files(folder, PHOTO_SUFFIXES, "photos")]


def settings_grid(names: list[str], scales: list[list[float]]) -> list[Setting]:
    """One scale list for all vectors: each vector alone at each scale (the others absent); one list per vector:
    the full grid (every combination of one scale per vector)."""
    if not names:
        raise InputValueError("a batch job needs at least one vector")
    if len(scales) == 1:
        return [((name, float(s)),) for name in names for s in scales[0]]
    if len(scales) != len(names):
        raise InputValueError(f"give one --scales list for all vectors or one per vector ({len(names)}), "
                              f"got {len(scales)}")
    return [tuple(zip(names, map(float, combo))) for combo in itertools.product(*scales)]


@dataclass(frozen=True)
class BatchJob:
    """`items` x `settings`, `shard_size` items per shard (each shard holds every setting of its items),
    `batch_size` latents per synthesis (each with all its settings), `embed_steps` for photo items, shards
    written as `format` (FORMATS: WebDataset tars or Parquet files)."""
    items: tuple
    vectors_file: str
    settings: tuple
    shard_size: int = 64
    batch_size: int = 8
    embed_steps: int = 100
    truncation: float = 0.7
    format: str = "webdataset"
    vectors: tuple = field(default=(), compare=False, repr=False)

    @classmethod
    def create(cls, items, vectors_file, scales, **options) -> "BatchJob":
        """Check and build a job from items, a vector library file and scale lists (see `settings_grid`)."""
        if not items:
            raise InputValueError("a batch job needs at least one item")
        library = VectorLibrary.load(vectors_file)
        for key in ("shard_size", "batch_size"):
            if key in options and (not isinstance(options[key], int) or options[key] < 1):
                raise InputValueError(f"{key} must be an integer >= 1, got {options[key]!r}")
        if options.get("format", "webdataset") not in FORMATS:
            raise InputValueError(f"the shard format is one of {', '.join(FORMATS)}, got {options['format']!r}")
        if options.get("format") == "parquet":
            from .shards import require_pyarrow
            require_pyarrow()
        settings = settings_grid(library.names, [list(s) for s in scales])
        return cls(tuple(items), str(Path(vectors_file).resolve()), tuple(settings), vectors=tuple(library),
                   **options)

    @property
    def num_shards(self) -> int:
        return -(-len(self.items) // self.shard_size)

    def shard_items(self, shard: int) -> list[tuple[int, Item]]:
        """(item index, item) of the items in shard `shard`."""
        start = shard * self.shard_size
        return list(enumerate(self.items[start:start + self.shard_size], start))

    def vector_library(self) -> dict[str, EditVector]:
        return {v.name: v for v in (self.vectors or VectorLibrary.load(self.vectors_file))}

    def describe(self) -> dict:
        """Everything that determines the shards' contents (stored in the manifest)."""
        return {"items": [[i.kind, i.ref, i.id] for i in self.items],
                "vectors": [{"name": v.name, "fingerprint": v.fingerprint,
                             "sha256": hashlib.sha256(v.delta.numpy().tobytes()).hexdigest()}
                            for v in self.vector_library().values()],
                "settings": [dict(s) for s in self.settings], "shard_size": self.shard_size,
                "embed_steps": self.embed_steps, "truncation": self.truncation, "format": self.format}

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.describe(), sort_keys=True).encode()).hexdigest()[:16]
