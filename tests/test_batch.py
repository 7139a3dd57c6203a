"""The local batch path: shards hold what `Editor.apply` gives, batch sizes agree, interrupted runs resume."""

import numpy as np
import pytest

from batch_helpers import editor as make_editor, manifest, manifest_keys, read_shards, shard_members, small_job
from editgan_fast import io
from editgan_fast.batch import local, parse_seeds, run_local, settings_grid
from editgan_fast.editor import VectorLibrary
from editgan_fast.errors import InputValueError, MismatchError


@pytest.fixture(scope="module")
def editor():
    return make_editor()


def test_seeds_and_settings_grid():
    assert parse_seeds("0-3,7,9-10") == [0, 1, 2, 3, 7, 9, 10]
    with pytest.raises(InputValueError, match="--seeds"):
        parse_seeds("3-1")
    assert settings_grid(["a", "b"], [[0, 1]]) == [(("a", 0.0),), (("a", 1.0),), (("b", 0.0),), (("b", 1.0),)]
    assert settings_grid(["a", "b"], [[0, 1], [2]]) == [(("a", 0.0), ("b", 2.0)), (("a", 1.0), ("b", 2.0))]
    with pytest.raises(InputValueError, match="one per vector"):
        settings_grid(["a", "b"], [[0], [1], [2]])


def test_shards_hold_each_item_and_setting_as_apply_gives_it(editor, tmp_path):
    job = small_job(tmp_path, seeds="3-5", scales=((0.5,), (-1.0, 1.0)), shard_size=2)
    summary = run_local(editor, job, tmp_path / "out")
    assert summary["shards"] == summary["of_shards"] == 2 and summary["samples"] == 3 * 2
    samples = read_shards(tmp_path / "out")
    assert sorted(samples) == manifest_keys(tmp_path / "out") and len(samples) == 6
    vectors = {v.name: v for v in VectorLibrary.load(tmp_path / "lib.npz")}
    for key, sample in samples.items():
        setting = sample["json"]["setting"]
        seed = int(sample["json"]["item"].removeprefix("seed"))
        latent = editor.sample(seed)
        want = editor.apply(latent, {vectors[n]: s for n, s in setting.items()})
        png = np.asarray(io.tensor_to_pil(want.image))
        # float32 batch-vs-single rounding may move a pixel by one level after quantization
        assert np.abs(sample["png"].astype(int) - png).max() <= 1
        assert (sample["labels"] == want.labels.numpy()).mean() > 0.999
        expected = latent.wplus + sum(s * vectors[n].delta for n, s in setting.items())
        np.testing.assert_allclose(sample["latent"], expected.numpy(), rtol=0, atol=1e-6)
    assert len({s["png"].tobytes() for s in samples.values()}) == 6  # every sample differs


def test_equal_settings_are_rendered_once(editor, tmp_path, monkeypatch):
    """Each of two vectors alone at scales 0 and 1: both scale-0 settings are the unedited latent, one row of
    the synthesis (3 rows per latent, not 4), written for each setting with the same bytes."""
    rows = []
    apply_many = editor.apply_many
    monkeypatch.setattr(editor, "apply_many", lambda items, **kw: rows.append(
        sum(len(next(iter(v.values()))) for _, v in items)) or apply_many(items, **kw))
    job = small_job(tmp_path, seeds="0-1", scales=((0.0, 1.0),), shard_size=2, batch_size=2)
    run_local(editor, job, tmp_path / "out")
    assert rows == [2 * 3]
    samples = read_shards(tmp_path / "out")
    assert len(samples) == 2 * 4
    for seed in (0, 1):
        unedited = [s for s in samples.values() if s["json"]["item"] == f"seed{seed}"
                    and set(s["json"]["setting"].values()) == {0.0}]
        assert len(unedited) == 2 and unedited[0]["png"].tobytes() == unedited[1]["png"].tobytes()
        want = editor.render(editor.sample(seed))
        assert np.abs(unedited[0]["png"].astype(int) - np.asarray(io.tensor_to_pil(want.image))).max() <= 1
        assert (unedited[0]["labels"] == want.labels.numpy()).mean() > 0.999
        np.testing.assert_array_equal(unedited[0]["latent"], unedited[1]["latent"])
    assert len({s["png"].tobytes() for s in samples.values()}) == 2 * 3


def test_batch_sizes_agree(editor, tmp_path):
    outs = {}
    for batch_size in (1, 3):
        job = small_job(tmp_path, seeds="0-3", scales=((0.5, 1.0), (1.0,)), shard_size=3,
                        batch_size=batch_size)
        run_local(editor, job, tmp_path / f"bs{batch_size}")
        outs[batch_size] = read_shards(tmp_path / f"bs{batch_size}")
    assert manifest_keys(tmp_path / "bs1") == manifest_keys(tmp_path / "bs3") and len(outs[1]) == 8
    for key, one in outs[1].items():
        three = outs[3][key]
        assert np.abs(one["png"].astype(int) - three["png"]).max() <= 1
        assert (one["labels"] == three["labels"]).mean() > 0.999
        np.testing.assert_array_equal(one["latent"], three["latent"])
        assert one["json"] == three["json"]


def test_an_interrupted_run_resumes_and_loses_only_the_shard_in_flight(editor, tmp_path, monkeypatch):
    job = small_job(tmp_path, seeds="0-4", scales=((1.0,),))  # shards of 2, 2 and 1 items
    reference = tmp_path / "reference"
    run_local(editor, job, reference)

    out = tmp_path / "out"
    real = local.start_shard
    calls = []

    def crash_on_second_shard(editor, job, shard, encoder):
        calls.append(shard)
        if len(calls) == 2:
            raise KeyboardInterrupt  # the process dies while rendering shard 1 (shard 0 is still encoding)
        return real(editor, job, shard, encoder)

    monkeypatch.setattr(local, "start_shard", crash_on_second_shard)
    with pytest.raises(KeyboardInterrupt):
        run_local(editor, job, out)
    assert sorted(manifest(out)["shards"]) == ["0"]
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "shard-000000.tar"]  # no temp files left

    monkeypatch.setattr(local, "start_shard", real)
    (out / "shard-000000.tar").write_bytes(b"torn")  # a damaged finished shard is rendered again
    summary = run_local(editor, job, out)
    assert summary["rendered_shards"] == 3 and summary["skipped_shards"] == 0
    summary = run_local(editor, job, out)
    assert summary["rendered_shards"] == 0 and summary["skipped_shards"] == 3
    for name in ("shard-000000.tar", "shard-000001.tar", "shard-000002.tar"):
        assert (out / name).read_bytes() == (reference / name).read_bytes()
    assert manifest(out)["shards"] == manifest(reference)["shards"]


def test_a_folder_of_another_job_is_refused(editor, tmp_path):
    run_local(editor, small_job(tmp_path, seeds="0-1"), tmp_path / "out")
    with pytest.raises(MismatchError, match="another batch job"):
        run_local(editor, small_job(tmp_path, seeds="0-2"), tmp_path / "out")


def test_latent_folders_and_bad_latents(editor, tmp_path):
    from editgan_fast.batch import BatchJob, latent_items
    folder = tmp_path / "latents"
    folder.mkdir()
    a, b = editor.sample(1).wplus, editor.sample(2).wplus
    io.save_latent(folder / "a.npy", a)
    np.savez(folder / "b.npz", w=b.numpy())
    job = BatchJob.create(latent_items(folder), small_job(tmp_path).vectors_file, [[1.0]], shard_size=4)
    run_local(editor, job, tmp_path / "out")
    samples = read_shards(tmp_path / "out")
    assert [s["json"]["item"] for s in samples.values()] == ["a.npy", "a.npy", "b.npz", "b.npz"]
    np.save(folder / "c.npy", np.zeros((3, 3), np.float32))
    job = BatchJob.create(latent_items(folder), job.vectors_file, [[1.0]], shard_size=4)
    with pytest.raises(ValueError, match="c.npy"):
        run_local(editor, job, tmp_path / "out2")
    assert not (tmp_path / "out2" / "manifest.json").exists()
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputValueError, match="no latents"):
        latent_items(tmp_path / "empty")


def test_parquet_shards_hold_the_same_bytes_as_the_tars_and_resume(editor, tmp_path):
    pytest.importorskip("pyarrow")
    tars = small_job(tmp_path, seeds="0-2", scales=((0.0, 1.0),))
    parquet = small_job(tmp_path, seeds="0-2", scales=((0.0, 1.0),), format="parquet")
    assert tars.digest() != parquet.digest()  # a folder of one format refuses the other
    run_local(editor, tars, tmp_path / "tar")
    summary = run_local(editor, parquet, tmp_path / "parquet")
    assert summary["shards"] == 2 and summary["samples"] == 3 * 4  # 2 vectors alone at 2 scales each
    assert sorted(p.name for p in (tmp_path / "parquet").iterdir()) == \
        ["manifest.json", "shard-000000.parquet", "shard-000001.parquet"]
    assert shard_members(tmp_path / "parquet") == shard_members(tmp_path / "tar")  # every member's bytes
    assert manifest_keys(tmp_path / "parquet") == manifest_keys(tmp_path / "tar")
    first = (tmp_path / "parquet" / "shard-000000.parquet").read_bytes()
    (tmp_path / "parquet" / "shard-000001.parquet").write_bytes(b"torn")
    summary = run_local(editor, parquet, tmp_path / "parquet")  # deterministic: the same bytes again
    assert summary["rendered_shards"] == 1 and summary["skipped_shards"] == 1
    run_local(editor, parquet, tmp_path / "again")
    assert (tmp_path / "again" / "shard-000000.parquet").read_bytes() == first
    with pytest.raises(MismatchError, match="another batch job"):
        run_local(editor, tars, tmp_path / "parquet")
    with pytest.raises(InputValueError, match="shard format"):
        small_job(tmp_path, format="zip")
