"""Render one shard: resolve its items' latents, apply every setting to `batch_size` latents per synthesis
(`Editor.apply_many`), and encode each (item, setting) sample (on a second thread, overlapping the next
synthesis). The local and the Ray path both call this."""
from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from .. import io
from ..errors import FileFormatError
from .job import BatchJob, Item
from .shards import Sample, encode_members, shard_bytes


def load_latent_file(editor, path) -> torch.Tensor:
    """w+ from a .npy, or from an .npz holding exactly one array (never unpickled)."""
    g = editor.generator
    if Path(path).suffix.lower() != ".npz":
        return io.load_latent(path, g.num_ws, g.style_dim)
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = [data[k] for k in data.files]
    except (ValueError, OSError) as e:
        raise FileFormatError(f"{path} is not a readable .npz latent: {e}") from None
    if len(arrays) != 1 or arrays[0].dtype.kind != "f" or arrays[0].size != g.num_ws * g.style_dim:
        raise FileFormatError(f"{path} must hold one float array of shape [{g.num_ws}, {g.style_dim}], got "
                              f"{[(a.dtype.str, a.shape) for a in arrays]}")
    return torch.from_numpy(arrays[0].reshape(g.num_ws, g.style_dim).astype(np.float32))


def resolve_latent(editor, job: BatchJob, item: Item):
    if item.kind == "seed":
        return editor.sample(int(item.ref), truncation=job.truncation)
    if item.kind == "latent":
        return editor.latent(load_latent_file(editor, item.ref))
    if item.kind == "photo":
        return editor.embed(item.ref, steps=job.embed_steps)
    raise ValueError(f"unknown item kind {item.kind!r}")


def _scale_columns(job: BatchJob, vectors: dict) -> tuple[dict, list[int]]:
    """({EditVector: [U scales]}, row of each setting): every distinct setting of one latent as one batch (a
    vector absent from a setting: 0). Settings with equal scales are one row: e.g. each vector alone at scale 0
    is the unedited latent (w+ + 0 * delta is w+ exactly), rendered once and written for each of them."""
    settings = [dict(s) for s in job.settings]
    used = [name for name in vectors if any(name in s for s in settings)]
    rows, row_of = {}, []
    for setting in settings:
        scales = tuple(float(setting.get(name, 0.0)) for name in used)
        row_of.append(rows.setdefault(scales, len(rows)))
    return {vectors[name]: [scales[i] for scales in rows] for i, name in enumerate(used)}, row_of


def _rendered_chunks(editor, job: BatchJob, shard: int):
    """The shard's samples, one list per synthesis (`batch_size` latents, each with all its distinct settings),
    in order."""
    vectors = job.vector_library()
    for v in vectors.values():
        v.check_compatible(editor.fingerprint, editor.generator.num_ws, editor.generator.style_dim)
    columns, row_of = _scale_columns(job, vectors)
    distinct = max(row_of) + 1
    entries = job.shard_items(shard)
    for start in range(0, len(entries), job.batch_size):
        chunk = [(index, item, resolve_latent(editor, job, item))
                 for index, item in entries[start:start + job.batch_size]]
        result = editor.apply_many([(latent, columns) for _, _, latent in chunk])
        images, labels = result.image.cpu(), result.labels.cpu()
        samples = []
        for position, (index, item, latent) in enumerate(chunk):
            for k, setting in enumerate(job.settings):
                row = position * distinct + row_of[k]
                wplus = editor.edited_wplus(latent, {vectors[name]: scale for name, scale in setting}).cpu()
                samples.append(Sample(f"{index:07d}_{k:03d}", images[row], labels[row], wplus,
                                      {"item": item.id, "kind": item.kind, "ref": item.ref,
                                       "setting": dict(setting)}))
        yield samples


def start_shard(editor, job: BatchJob, shard: int, encoder) -> Future:
    """Render the shard in this thread, a synthesis at a time, while `encoder` (an executor with ONE thread)
    PNG-encodes each synthesis's samples as the next one renders; returns the future of (shard file bytes in the
    job's format, manifest rows). PNG encoding releases the GIL, so it fills the gaps of the synthesis's
    threads. The assembling task is queued behind the chunks' encodings on the same single thread, so it never
    waits for them."""
    parts = [encoder.submit(encode_members, samples) for samples in _rendered_chunks(editor, job, shard)]

    def assemble():
        encoded = [pair for part in parts for pair in part.result()]
        return shard_bytes(encoded, job.format), [s.manifest_row() for s, _ in encoded]
    return encoder.submit(assemble)


def render_shard(editor, job: BatchJob, shard: int) -> tuple[bytes, list[dict]]:
    """The shard's tar bytes and its manifest rows (one per sample, in order)."""
    with ThreadPoolExecutor(1, thread_name_prefix="encode") as encoder:
        return start_shard(editor, job, shard, encoder).result()
