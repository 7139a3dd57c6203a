"""Shared by the batch tests (local and Ray): a small job on the default model, and reading shards back."""
import io as bytes_io
import json
import tarfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from editgan_fast.batch import BatchJob, seed_items
from editgan_fast.editor import EditVector, VectorLibrary, default_editor


def editor():
    return default_editor(progress=False)


def vector_library(path, ed=None) -> Path:
    """Two random vectors for the default generator, saved as one library."""
    ed = ed or editor()
    g = ed.generator
    rng = torch.Generator().manual_seed(5)
    vectors = [EditVector(0.4 * torch.randn(g.num_ws, g.style_dim, generator=rng), (c,), name, ed.fingerprint)
               for c, name in ((1, "a"), (5, "b"))]
    VectorLibrary(vectors).save(path)
    return Path(path)


def small_job(tmp_path, seeds="0-3", scales=((0.0, 1.0),), **options) -> BatchJob:
    library = tmp_path / "lib.npz"
    if not library.exists():
        vector_library(library)
    options.setdefault("shard_size", 2)
    options.setdefault("batch_size", 2)
    return BatchJob.create(seed_items(seeds), library, scales, **options)


def shard_members(out) -> list:
    """(key, member suffix, bytes) of every sample member of every shard, tar or Parquet, in order."""
    members = []
    for path in sorted(Path(out).glob("shard-*.*")):
        if path.suffix == ".tar":
            with tarfile.open(path) as tar:
                for member in tar.getmembers():
                    key, _, ext = member.name.partition(".")
                    members.append((key, ext, tar.extractfile(member).read()))
        else:
            import pyarrow.parquet as pq
            for row in pq.read_table(path).to_pylist():
                members += [(row["key"], ext, row[ext.replace(".", "_")])
                            for ext in ("png", "labels.png", "latent.npy", "json")]
    return members


def read_shards(out) -> dict:
    """{key: {"png": uint8 [H, W, 3], "labels": int [h, w], "latent": float32, "json": dict}} of every shard."""
    samples = {}
    for key, ext, data in shard_members(out):
        if ext == "png":
            value = np.asarray(Image.open(bytes_io.BytesIO(data)).convert("RGB"))
        elif ext == "labels.png":
            value = np.asarray(Image.open(bytes_io.BytesIO(data)))
        elif ext == "latent.npy":
            value = np.load(bytes_io.BytesIO(data), allow_pickle=False)
        else:
            value = json.loads(data)
        name = {"labels.png": "labels", "latent.npy": "latent"}.get(ext, ext)
        samples.setdefault(key, {})[name] = value
    return samples


def manifest(out) -> dict:
    return json.loads((Path(out) / "manifest.json").read_text())


def manifest_keys(out) -> list:
    return [row["key"] for shard in manifest(out)["shards"].values() for row in shard["samples"]]
