"""Shards (WebDataset tars or Parquet files) and the manifest that records the finished ones.

A sample `KEY` is four members of a shard tar: `KEY.png` (the image), `KEY.labels.png` (palette PNG, pixel =
class id), `KEY.latent.npy` (the edited w+, float32) and `KEY.json` (item, setting); in a Parquet shard it is
one row with the same bytes in the columns `key`, `png`, `labels_png`, `latent_npy` and `json`. Both are
deterministic (tars: fixed mtime/owner/order; Parquet: one row group, no compression, same pyarrow version), so
the same samples always give the same bytes. Every shard is written with
`io.atomic_write`, then the manifest (rewritten atomically) lists it with its sha256: a shard is finished iff
the manifest lists it and the file's hash matches, so a crash loses at most the shard in flight.
"""
from __future__ import annotations

import hashlib
import io as _bytes_io
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .. import io
from ..errors import BackendUnavailable, FileFormatError, MismatchError

MANIFEST = "manifest.json"
FORMAT = "editgan-fast-batch"
VERSION = 1


@dataclass
class Sample:
    key: str
    image: torch.Tensor    # [3, H, W] in [-1, 1]
    labels: torch.Tensor   # [h, w] int64
    wplus: torch.Tensor    # [num_ws, style_dim]
    meta: dict

    def members(self) -> list[tuple[str, bytes]]:
        latent = _bytes_io.BytesIO()
        np.save(latent, self.wplus.numpy().astype(np.float32), allow_pickle=False)
        return [(f"{self.key}.png", io.image_png(self.image)),
                (f"{self.key}.labels.png", io.labels_png(self.labels)),
                (f"{self.key}.latent.npy", latent.getvalue()),
                (f"{self.key}.json", json.dumps(self.meta, sort_keys=True).encode())]

    def manifest_row(self) -> dict:
        return {"key": self.key, "item": self.meta["item"], "setting": self.meta["setting"]}


def encode_members(samples) -> list[tuple[Sample, list[tuple[str, bytes]]]]:
    """(sample, its tar members) of each sample."""
    return [(sample, sample.members()) for sample in samples]


def tar_bytes(members) -> bytes:
    """A deterministic USTAR tar of (name, bytes) members, in order."""
    buffer = _bytes_io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            tar.addfile(info, _bytes_io.BytesIO(data))
    return buffer.getvalue()


PARQUET_COLUMNS = ("png", "labels.png", "latent.npy", "json")  # member suffixes, one binary column each


def require_pyarrow():
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError:
        raise BackendUnavailable("--format parquet needs pyarrow: pip install pyarrow (Ray Data brings it)") from None
    return pyarrow


def parquet_bytes(encoded) -> bytes:
    """One Parquet file, a row per sample, from `encode_members` output (in order)."""
    pa = require_pyarrow()
    keys, columns = [], {suffix: [] for suffix in PARQUET_COLUMNS}
    for sample, members in encoded:
        keys.append(sample.key)
        for name, data in members:
            columns[name[len(sample.key) + 1:]].append(data)
    table = pa.table({"key": pa.array(keys, pa.string()),
                      **{suffix.replace(".", "_"): pa.array(values, pa.binary())
                         for suffix, values in columns.items()}})
    buffer = pa.BufferOutputStream()
    pa.parquet.write_table(table, buffer, compression="none", row_group_size=max(1, len(keys)))
    return buffer.getvalue().to_pybytes()


def shard_bytes(encoded, format: str) -> bytes:
    """The shard file of `encode_members` output in the job's format."""
    if format == "parquet":
        return parquet_bytes(encoded)
    return tar_bytes(m for _, members in encoded for m in members)


def shard_name(shard: int, format: str = "webdataset") -> str:
    return f"shard-{shard:06d}.{'parquet' if format == 'parquet' else 'tar'}"


class ShardSink:
    """The output folder of one job: which shards are finished, and `commit` to add one (shard file, then the
    manifest). Opening a folder that holds another job's manifest is a MismatchError."""

    def __init__(self, out, job):
        self.out = Path(out)
        self.job = job
        self.path = self.out / MANIFEST
        self.manifest = self._load() if self.path.exists() else {
            "format": FORMAT, "version": VERSION, "job_digest": job.digest(), "job": job.describe(),
            "num_shards": job.num_shards, "shards": {}}

    def _load(self) -> dict:
        try:
            manifest = json.loads(self.path.read_text())
            if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
                raise ValueError("not an editgan-fast batch manifest")
        except ValueError as e:
            raise FileFormatError(f"{self.path}: {e}") from None
        if manifest["job_digest"] != self.job.digest():
            raise MismatchError(f"{self.out} holds the output of another batch job (items, vectors or settings "
                                f"differ); give a new --out folder or remove {self.path}")
        return manifest

    def finished(self) -> set[int]:
        """Shards listed in the manifest whose file is present and matches its recorded sha256."""
        done = set()
        for index, entry in self.manifest["shards"].items():
            path = self.out / entry["file"]
            if path.is_file() and hashlib.sha256(path.read_bytes()).hexdigest() == entry["sha256"]:
                done.add(int(index))
        return done

    def pending(self) -> list[int]:
        done = self.finished()
        return [s for s in range(self.job.num_shards) if s not in done]

    def commit(self, shard: int, data: bytes, rows: list[dict]) -> None:
        name = shard_name(shard, self.job.format)
        with io.atomic_write(self.out / name) as f:
            f.write(data)
        self.manifest["shards"][str(shard)] = {"file": name, "sha256": hashlib.sha256(data).hexdigest(),
                                               "bytes": len(data), "samples": rows}
        self.manifest["shards"] = dict(sorted(self.manifest["shards"].items(), key=lambda kv: int(kv[0])))
        with io.atomic_write(self.path, "w") as f:
            json.dump(self.manifest, f, indent=1)

    def summary(self) -> dict:
        shards = self.manifest["shards"].values()
        return {"out": str(self.out), "manifest": str(self.path), "shards": len(self.manifest["shards"]),
                "of_shards": self.job.num_shards, "samples": sum(len(s["samples"]) for s in shards)}
