"""`editgan-fast batch` on the default model: writes shards and a manifest, resumes, reports bad input in one line."""
import json

from batch_helpers import manifest_keys, read_shards, vector_library
from editgan_fast.cli import main


def run(capsys, *argv):
    code = main([*map(str, argv), "--quiet", "--json"])
    out, err = capsys.readouterr()
    return code, (json.loads(out) if code == 0 else None), err


def test_batch_command_writes_and_resumes(capsys, tmp_path):
    library = vector_library(tmp_path / "lib.npz")
    argv = ("batch", "--seeds", "4-5", "--vectors", library, "--scales", "0,1", "--scales", "-1",
            "--out", tmp_path / "out", "--shard-size", 1)
    code, out, err = run(capsys, *argv)
    assert code == 0, err
    assert out["shards"] == 2 and out["samples"] == 2 * 2 and out["rendered_shards"] == 2
    samples = read_shards(tmp_path / "out")
    assert sorted(samples) == manifest_keys(tmp_path / "out")
    assert [s["json"]["setting"] for s in samples.values()][:2] == [{"a": 0.0, "b": -1.0}, {"a": 1.0, "b": -1.0}]
    code, out, _ = run(capsys, *argv)
    assert code == 0 and out["rendered_shards"] == 0 and out["skipped_shards"] == 2
    code, out, err = run(capsys, *argv[:-4], "--out", tmp_path / "parquet", "--format", "parquet")
    assert code == 0 and out["samples"] == 2 * 2, err
    assert read_shards(tmp_path / "parquet").keys() == samples.keys()


def test_batch_command_bad_input_is_one_line(capsys, tmp_path):
    library = vector_library(tmp_path / "lib.npz")
    for argv, match in ((("--seeds", "9-2"), "--seeds"), (("--latents", tmp_path / "nope"), "does not exist"),
                        (("--seeds", "0", "--scales", "1", "--scales", "2", "--scales", "3"), "one per vector"),
                        (("--seeds", "0", "--scales", "x"), "comma-separated"),
                        (("--seeds", "0", "--actors", "2"), "need --ray")):
        code = main(["batch", *map(str, argv), "--vectors", str(library), "--out", str(tmp_path / "o"), "--quiet"])
        err = capsys.readouterr().err
        assert code == 2 and "Traceback" not in err and err.startswith("editgan-fast: error: ") and match in err, err
    assert not (tmp_path / "o").exists()
