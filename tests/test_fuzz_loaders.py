"""Every loader fed truncated, bit-flipped, wrong-typed and header-lying files (Hypothesis): it either loads or
raises a project error (EditGANFastError), never another exception; peak memory stays bounded; no embedded code
ever runs. `make fuzz` runs many more examples (EDITGAN_FAST_FUZZ_EXAMPLES)."""
import io as pyio
import struct
import sys

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

import fuzzing
from editgan_fast import io, limits
from editgan_fast.editor import EditVector, VectorLibrary
from editgan_fast.errors import EditGANFastError
from editgan_fast.models.encoder import load_encoder
from editgan_fast.models.loaders import load_generator
from editgan_fast.models.lpips import LPIPS
from editgan_fast.models.segmenter import load_segmenter
from factories import make_ada_pickle, make_rosinality_checkpoint, small_generator
from seg_factories import write_classifier, write_encoder, write_lpips_lin, write_vgg16

ENCODER = dict(num_ws=8, stem=4, planes=(2, 4, 8, 16), blocks=(1, 1, 1, 1), expansion=4, feature_dim=8,
               style_dim=16, head_convs=(1, 1, 1))
FUZZ_LIMITS = dict(array_bytes=64 * 2 ** 20, image_pixels=4 * 2 ** 20)  # small, so a blow-up shows as an error


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """{loader name: (valid file bytes, suffix, load(path), header lie or None)} and the files they need."""
    d = tmp_path_factory.mktemp("fuzz")
    g = small_generator()
    make_rosinality_checkpoint(d / "g.pt")
    make_ada_pickle(d / "g.pkl", g)
    write_classifier(d / "seg.pth", sum(g.feature_channels), 5, 0)
    write_encoder(d / "enc.pth", 0, **ENCODER)
    write_vgg16(d / "vgg.pth", 0)
    write_lpips_lin(d / "lin.pth", 0)
    rng = torch.Generator().manual_seed(0)
    library = VectorLibrary([EditVector(torch.randn(g.num_ws, g.style_dim, generator=rng), (1, 2), f"v{i}",
                                        g.fingerprint()) for i in range(2)])
    library.save(d / "v.safetensors")
    library.save(d / "v.npz")
    latent = torch.randn(g.num_ws, g.style_dim, generator=rng)
    io.save_latent(d / "w.npy", latent)
    np.savez(d / "projected_w.npz", w=latent.numpy()[None])
    io.save_image(d / "image.png", torch.rand(3, 24, 20, generator=rng) * 2 - 1)
    io.save_labels(d / "labels.png", torch.randint(0, 5, (32, 32), generator=rng))
    loaders = {
        "generator .pt": ("g.pt", lambda p: load_generator(p), fuzzing.lie_zip),
        "generator .pkl": ("g.pkl", lambda p: load_generator(p), None),
        "segmenter": ("seg.pth", lambda p: load_segmenter(p, g), fuzzing.lie_zip),
        "encoder": ("enc.pth", lambda p: load_encoder(p, g), fuzzing.lie_zip),
        "LPIPS lin": ("lin.pth", lambda p: LPIPS.from_files(d / "vgg.pth", p), fuzzing.lie_zip),
        "vectors .safetensors": ("v.safetensors", lambda p: VectorLibrary.load(p, g), fuzzing.lie_safetensors),
        "vectors .npz": ("v.npz", lambda p: VectorLibrary.load(p, g), fuzzing.lie_zip),
        "EditGAN vector .npy": ("w.npy", lambda p: EditVector.from_editgan_npy(p, g), fuzzing.lie_npy),
        "latent .npy": ("w.npy", lambda p: io.load_latent(p, g.num_ws, g.style_dim), fuzzing.lie_npy),
        "latent projected_w.npz": ("projected_w.npz", lambda p: io.load_latent(p, g.num_ws, g.style_dim),
                                   fuzzing.lie_zip),
        "image": ("image.png", lambda p: io.image_to_tensor(p), fuzzing.lie_png),
        "label map": ("labels.png", lambda p: io.load_labels(p, 5, (32, 32)), fuzzing.lie_png),
    }
    sentinel = d / "code-was-executed"
    foreign = [(d / name).read_bytes() for name in ("g.pkl", "seg.pth", "v.safetensors", "v.npz", "w.npy",
                                                     "labels.png", "lin.pth")]
    foreign += fuzzing.malicious_payloads(sentinel) + [b"hello, this is a text file\n", b"\0" * 100]
    return Corpus(d, {k: ((d / f).read_bytes(), (d / f).suffix, load, lie) for k, (f, load, lie) in loaders.items()},
                  foreign, sentinel)


class Corpus(tuple):
    """(directory, loaders, foreign files, sentinel), with a short repr for Hypothesis' failure reports."""

    def __new__(cls, *parts):
        return super().__new__(cls, parts)

    def __repr__(self):
        return f"Corpus({self[0]})"


@pytest.fixture(scope="module", autouse=True)
def _report():
    yield
    fuzzing.report()


@pytest.mark.parametrize("loader", ["generator .pt", "generator .pkl", "segmenter", "encoder", "LPIPS lin",
                                    "vectors .safetensors", "vectors .npz", "EditGAN vector .npy", "latent .npy",
                                    "latent projected_w.npz", "image", "label map"])
@fuzzing.SETTINGS
@given(data=st.data())
def test_loader_fuzz(corpus, loader, data):
    d, loaders, foreign, sentinel = corpus
    valid, suffix, load, lie = loaders[loader]
    case = d / f"case{suffix}"
    case.write_bytes(data.draw(fuzzing.mutated(valid, foreign, lie)))
    peak = fuzzing.rss_peak_mib()
    fuzzing.COUNTS["cases fuzzed"] += 1
    try:
        with limits.override(**FUZZ_LIMITS):
            load(case)
        fuzzing.COUNTS["loaded"] += 1
    except EditGANFastError:
        fuzzing.COUNTS["clean errors"] += 1
    except BaseException:
        fuzzing.COUNTS["tracebacks"] += 1
        raise
    finally:
        if fuzzing.rss_peak_mib() - peak > fuzzing.PEAK_GROWTH_MIB:
            fuzzing.COUNTS["blow-ups"] += 1
        if sentinel.exists():
            fuzzing.COUNTS["code executed"] += 1
    assert fuzzing.rss_peak_mib() - peak <= fuzzing.PEAK_GROWTH_MIB, "a damaged file blew up memory"
    assert not sentinel.exists(), "a loader ran code embedded in a file"


def test_the_malicious_payloads_would_run_if_unpickled(corpus, tmp_path):
    """The no-code-executed check is real: plain pickle.loads of a payload does create the sentinel."""
    import pickle
    sentinel = tmp_path / "ran"
    payload = fuzzing.malicious_payloads(sentinel)[0]
    pickle.loads(payload)
    assert sentinel.exists()
