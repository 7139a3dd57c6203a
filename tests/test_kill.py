"""Writers killed mid-write (SIGKILL, at many timings) leave each target either its previous contents or the
complete new file, never anything else. EDITGAN_FAST_KILLS sets the number of kills (`make fuzz` raises it)."""
import os
import random
import signal
import subprocess
import sys

import pytest
import torch

import fuzzing
from editgan_fast import io
from editgan_fast.editor import VectorLibrary

KILLS = int(os.environ.get("EDITGAN_FAST_KILLS", "8"))
NUM_WS, DIM, VECTORS, SIDE = 12, 512, 48, 384   # a 2.4 MB library, a 440 KB image: writes take milliseconds

# Builds generation g of every file deterministically; the writer loops over generations 1, 0, 1, 0, ...
CONTENT = f"""
import torch
from editgan_fast.editor import EditVector, VectorLibrary

def content(g):
    rng = torch.Generator().manual_seed(g)
    library = VectorLibrary([EditVector(torch.randn({NUM_WS}, {DIM}, generator=rng), (1,), f"v{{i}}", "f" * 16)
                             for i in range({VECTORS})])
    latent = torch.randn({NUM_WS}, {DIM}, generator=rng)
    image = torch.rand(3, {SIDE}, {SIDE}, generator=rng) * 2 - 1
    labels = torch.randint(0, 20, ({SIDE}, {SIDE}), generator=rng)
    return library, latent, image, labels
"""

# One interpreter (imports take seconds) forks a fresh writer process per kill: the child rewrites every file in
# a loop (generations 1, 0, 1, ...) until its parent SIGKILLs it after the delay the test sends. Before that it
# times one round of writes (into a scratch folder) and reports it: the test scales its delays to this
# machine's speed, so that kills land in the first round (files of both generations) and in the second.
WRITER = CONTENT + """
import os, shutil, signal, sys, tempfile, time
from pathlib import Path
from editgan_fast import io
torch.set_num_threads(1)  # no thread pool in the parent: the forked writers use torch safely
out = Path(sys.argv[1])
generations = [content(1), content(0)]

def write(folder, files):
    library, latent, image, labels = files
    library.save(folder / "lib.safetensors")
    library.save(folder / "lib.npz")
    io.save_latent(folder / "w.npy", latent)
    io.save_image(folder / "image.png", image)
    io.save_labels(folder / "labels.png", labels)

scratch = Path(tempfile.mkdtemp())
start = time.perf_counter()
write(scratch, generations[0])
print("ready", time.perf_counter() - start, flush=True)
shutil.rmtree(scratch)
for command in sys.stdin:
    delay = float(command)
    pid = os.fork()
    if pid == 0:
        for step in range(10 ** 9):
            write(out, generations[step % 2])
    time.sleep(delay)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    print("killed", flush=True)
"""


def _content(g):
    scope = {}
    exec(CONTENT, scope)  # the test's own constant source, shared with the writer subprocess
    return scope["content"](g)


def _generation(got, candidates, equal):
    matches = [g for g, want in enumerate(candidates) if equal(got, want)]
    assert matches, "the file is neither the previous nor the new version"
    return matches[0]


def _check_files(out, generations, images):
    libraries = [g[0] for g in generations]

    def same_library(a, b):
        return a.names == b.names and all(torch.equal(a[n].delta, b[n].delta) for n in a.names)
    seen = [_generation(VectorLibrary.load(out / "lib.safetensors"), libraries, same_library),
            _generation(VectorLibrary.load(out / "lib.npz"), libraries, same_library),
            _generation(io.load_latent(out / "w.npy", NUM_WS, DIM), [g[1] for g in generations], torch.equal),
            _generation(io.image_to_tensor(out / "image.png"), images, torch.equal),
            _generation(io.load_labels(out / "labels.png"), [g[3] for g in generations], torch.equal)]
    leftovers = [p.name for p in out.iterdir() if p.name.startswith(".")]
    assert all(p.endswith(".tmp") for p in leftovers), leftovers  # only the killed write's own temporary file
    return seen


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_killed_writers_leave_old_or_new_files(tmp_path):
    generations = [_content(0), _content(1)]
    library, latent, image, labels = generations[0]
    library.save(tmp_path / "lib.safetensors")
    library.save(tmp_path / "lib.npz")
    io.save_latent(tmp_path / "w.npy", latent)
    io.save_image(tmp_path / "image.png", image)
    io.save_labels(tmp_path / "labels.png", labels)
    images = [io.image_to_tensor(io.tensor_to_pil(g[2])) for g in generations]  # as 8-bit PNG pixels
    rng = random.Random(0)
    seen = set()
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        ready, round_s = writer.stdout.readline().split()
        assert ready == "ready"
        for kill in range(KILLS):  # within the first 2.5 rounds of writes, wherever they fall on this machine
            writer.stdin.write(f"{rng.uniform(0.0, 2.5 * float(round_s))}\n")
            writer.stdin.flush()
            assert writer.stdout.readline().strip() == "killed"
            fuzzing.COUNTS["writer kills"] += 1
            seen.update(_check_files(tmp_path, generations, images))
            fuzzing.COUNTS["files checked after a kill"] += 5
    finally:
        writer.kill()
        writer.wait()
        fuzzing.report()
    # Over several kills both versions must have been observed: the kills really interrupted writing.
    assert KILLS < 4 or seen == {0, 1}
