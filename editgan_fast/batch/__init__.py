"""Batch editing: many latents x a grid of vector scales, rendered in batches across latents and written as
resumable WebDataset tar shards plus a manifest.

    job = BatchJob(seed_items("0-99"), VectorLibrary.load("lib.npz"), settings, shard_size=64, batch_size=8)
    run_local(editor, job, "out/")                    # in-process
    run_ray(make_editor, job, "out/", address=None)   # the same shards through a Ray Data pipeline

Both paths render a shard with the same `start_shard`, so their shards are byte-identical on the same backend.
"""
from .job import BatchJob, Item, Setting, photo_items, latent_items, parse_seeds, seed_items, settings_grid
from .local import run_local
from .render import render_shard
from .shards import ShardSink

__all__ = ["BatchJob", "Item", "Setting", "ShardSink", "latent_items", "parse_seeds", "photo_items",
           "render_shard", "run_local", "seed_items", "settings_grid"]
