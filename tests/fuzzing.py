"""Shared pieces of the fuzz tests: file mutations (Hypothesis strategies), malicious payloads, case counts.

EDITGAN_FAST_FUZZ_EXAMPLES sets the examples per property (the suite's small corpus by default; `make fuzz`
raises it); EDITGAN_FAST_FUZZ_REPORT names a JSON file the counts are added to."""
import collections
import json
import os
import pickle
import resource
import struct
import zlib

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

EXAMPLES = int(os.environ.get("EDITGAN_FAST_FUZZ_EXAMPLES", "12"))
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, database=None,
                    derandomize="EDITGAN_FAST_FUZZ_EXAMPLES" not in os.environ,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.function_scoped_fixture])
PEAK_GROWTH_MIB = 512   # the most a whole fuzz property may raise the process's peak memory
COUNTS = collections.Counter()


def rss_peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def report() -> None:
    """Add this process's counts to the report file, if one is named."""
    path = os.environ.get("EDITGAN_FAST_FUZZ_REPORT")
    if not path or not COUNTS:
        return
    total = collections.Counter(json.load(open(path))) if os.path.exists(path) else collections.Counter()
    total.update(COUNTS)
    with open(path, "w") as f:
        json.dump(dict(total), f, indent=1, sort_keys=True)
    COUNTS.clear()


class _RunsCommand:
    """Unpickling this runs a shell command: the loaders must never let it happen."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def malicious_payloads(sentinel) -> list[bytes]:
    """Files that create `sentinel` if any loader unpickles them: a raw pickle, a torch file, a .npy object array."""
    import io

    import numpy as np
    import torch
    evil = _RunsCommand(f"touch {sentinel}")
    as_torch = io.BytesIO()
    torch.save({"g_ema": {"w": evil}, "model_state_dict": evil}, as_torch)
    as_npy = io.BytesIO()
    np.save(as_npy, np.array([evil, 1], dtype=object), allow_pickle=True)
    return [pickle.dumps(evil, protocol=2), pickle.dumps({"G_ema": evil}, protocol=4), as_torch.getvalue(),
            as_npy.getvalue()]


def _crc_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def lie_png(valid: bytes, draw) -> bytes:
    """The PNG with its IHDR claiming another size (CRC fixed, so only the claim is wrong)."""
    width, height = draw(st.integers(0, 2 ** 31 - 1)), draw(st.integers(0, 2 ** 31 - 1))
    ihdr = valid[16:29]
    return valid[:8] + _crc_chunk(b"IHDR", struct.pack(">II", width, height) + ihdr[8:]) + valid[33:]


def lie_npy(valid: bytes, draw) -> bytes:
    """The .npy with a header claiming another shape and/or dtype."""
    import io

    import numpy as np
    f = io.BytesIO(valid)
    np.lib.format.read_magic(f)
    shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
    data = valid[f.tell():]
    shape = tuple(draw(st.lists(st.integers(0, 2 ** 40), min_size=0, max_size=4)))
    dtype = draw(st.sampled_from(["<f4", "<f8", "<i8", "|u1", "<c16", "|O", "<U8", str(dtype.str)]))
    out = io.BytesIO()
    header = {"descr": dtype, "fortran_order": fortran, "shape": shape}
    np.lib.format.write_array_header_1_0(out, header)
    return out.getvalue() + data


def lie_safetensors(valid: bytes, draw) -> bytes:
    """The .safetensors with its JSON header's shapes/offsets (or the header length) rewritten."""
    (length,) = struct.unpack("<Q", valid[:8])
    header = json.loads(valid[8:8 + length])
    body = valid[8 + length:]
    key = draw(st.sampled_from(sorted(header)))
    if key == "__metadata__":
        header[key]["vectors"] = draw(st.sampled_from(["[]", "{}", "null", "[1]", "x", json.dumps(
            [{"name": "a", "classes": [-1], "fingerprint": 3, "num_ws": 2 ** 40, "style_dim": 1}])]))
    else:
        header[key]["shape"] = draw(st.lists(st.integers(0, 2 ** 33), max_size=3))
        if draw(st.booleans()):
            header[key]["data_offsets"] = [draw(st.integers(0, 2 ** 40)), draw(st.integers(0, 2 ** 40))]
    text = json.dumps(header).encode()
    claimed = draw(st.sampled_from([len(text), len(text) + 7, 2 ** 40]))
    return struct.pack("<Q", claimed) + text + body


def lie_zip(valid: bytes, draw) -> bytes:
    """A zip (torch checkpoint, .npz) whose central directory claims other sizes for one entry."""
    entries = [i for i in range(len(valid) - 4) if valid[i:i + 4] == b"PK\x01\x02"]
    if not entries:
        return valid
    at = draw(st.sampled_from(entries))
    field = draw(st.sampled_from([20, 24]))            # compressed / uncompressed size
    value = struct.pack("<I", draw(st.integers(0, 2 ** 32 - 1)))
    return valid[:at + field] + value + valid[at + field + 4:]


@st.composite
def mutated(draw, valid: bytes, foreign: list, lie=None):
    """A damaged version of `valid`: truncated, bit-flipped, spliced, empty, another file type, random bytes,
    or (with `lie`) a well-formed file whose header lies."""
    kinds = ["truncate", "flip", "splice", "empty", "foreign", "garbage"] + (["lie"] * 2 if lie else [])
    kind = draw(st.sampled_from(kinds))
    COUNTS[f"mutation {kind}"] += 1
    if kind == "truncate":
        return valid[:draw(st.integers(0, len(valid) - 1))]
    if kind == "flip":
        data = bytearray(valid)
        for at in draw(st.lists(st.integers(0, len(valid) - 1), min_size=1, max_size=16)):
            data[at] ^= 1 << draw(st.integers(0, 7))
        return bytes(data)
    if kind == "splice":
        at = draw(st.integers(0, len(valid) - 1))
        chunk = draw(st.binary(min_size=1, max_size=64))
        return valid[:at] + chunk + valid[at + len(chunk):]
    if kind == "empty":
        return b""
    if kind == "foreign":
        return draw(st.sampled_from(foreign))
    if kind == "garbage":
        return draw(st.binary(max_size=512))
    return lie(valid, draw)
