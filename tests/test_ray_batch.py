"""The batch job on a local Ray cluster (2 CPUs, 127.0.0.1, started and shut down here): a resumed run whose
worker is killed mid-job ends with the same shards, byte for byte, as the local path, and a complete manifest;
a second job of the same driver (in Parquet) reuses the editor its workers built; the pool fits the work."""
import os
from pathlib import Path

import pytest

from batch_helpers import editor as make_editor, manifest, manifest_keys, small_job
from ray_helpers import local_ray
from editgan_fast.batch import local, run_local
from editgan_fast.batch.on_ray import pool_shape, render_shards, run_ray
from editgan_fast.editor import default_editor

ray = pytest.importorskip("ray")
TIME_LIMIT_S = 420


def dies_once(batch, make_editor, job):
    """Kills its worker process (no cleanup, like an OOM kill) on its first shard unless the marker file
    `killed.pid` beside the job's vector library exists (so exactly one worker dies per test)."""
    marker = Path(job.vectors_file).parent / "killed.pid"
    if not marker.exists():
        marker.write_text(str(os.getpid()))
        os._exit(1)
    return render_shards(batch, make_editor, job)


def counting_editor(log):
    """The default editor, appending this worker's pid to `log` for every build."""
    with open(log, "a") as f:
        f.write(f"{os.getpid()}\n")
    return default_editor(progress=False)


@pytest.fixture(scope="module")
def cluster():
    with local_ray(TIME_LIMIT_S, "the Ray tests") as ray_module:  # its workers import dies_once from here
        yield ray_module


def make_default_editor():
    return default_editor(progress=False)


def test_ray_resumes_survives_a_killed_worker_and_equals_the_local_path(cluster, tmp_path, monkeypatch):
    job = small_job(tmp_path, seeds="0-3", scales=((1.0,),), shard_size=1, batch_size=2)
    editor = make_editor()
    run_local(editor, job, tmp_path / "local")

    # an earlier run that finished shard 0 only
    real = local.start_shard
    monkeypatch.setattr(local, "start_shard",
                        lambda ed, jb, shard, encoder: real(ed, jb, shard, encoder) if shard == 0
                        else (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        run_local(editor, job, tmp_path / "ray")
    monkeypatch.setattr(local, "start_shard", real)

    marker = tmp_path / "killed.pid"
    summary = run_ray(make_default_editor, job, tmp_path / "ray", actors=1, renderer=dies_once)
    assert marker.exists(), "the worker was never killed"
    assert summary["skipped_shards"] == 1 and summary["rendered_shards"] == 3 and summary["shards"] == 4
    keys = manifest_keys(tmp_path / "ray")
    assert keys == manifest_keys(tmp_path / "local") and len(keys) == len(set(keys)) == 4 * 2
    assert manifest(tmp_path / "ray")["shards"] == manifest(tmp_path / "local")["shards"]
    for shard in range(4):
        name = f"shard-{shard:06d}.tar"
        assert (tmp_path / "ray" / name).read_bytes() == (tmp_path / "local" / name).read_bytes()


def test_a_second_job_reuses_the_workers_editor_and_the_pool_fits_the_work(cluster, tmp_path):
    import functools
    assert pool_shape(cluster, 1, None, 0) == (1, 2)   # one shard: one worker with both CPUs
    assert pool_shape(cluster, 5, None, 0) == (2, 1)   # more shards than CPUs: a worker per CPU
    assert pool_shape(cluster, 5, 1, 0) == (1, 2)
    log = tmp_path / "builds.log"
    make = functools.partial(counting_editor, str(log))
    first = small_job(tmp_path, seeds="0-1", scales=((1.0,),), shard_size=2)
    second = small_job(tmp_path, seeds="2-3", scales=((1.0,),), shard_size=2, format="parquet")
    assert run_ray(make, first, tmp_path / "first")["rendered_shards"] == 1
    assert run_ray(make, second, tmp_path / "second")["rendered_shards"] == 1
    assert len(log.read_text().split()) == 1, "the second job built the editor again"
    editor = make_editor()
    run_local(editor, second, tmp_path / "local")
    assert (tmp_path / "second" / "shard-000000.parquet").read_bytes() == \
        (tmp_path / "local" / "shard-000000.parquet").read_bytes()
