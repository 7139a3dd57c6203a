"""The real-time path on the Triton backend never synchronizes with the device: a warm `Editor.apply` and a warm
refinement step (EditGAN's loss, forward and backward) run with every device->host read (Tensor.item, .tolist,
.nonzero, .cpu, .numpy, torch.nonzero) patched to raise when called from anywhere but Triton's own interpreter
(which stands in for the GPU here and reads its CPU tensors as arrays). Every per-layer constant (packed
weights, filter kernels, packed ensemble members, the seg head's map table, the region's pixel list) is built by
the first, warm-up call and cached.

Runs the kernels under TRITON_INTERPRET=1, set at import like tests/test_triton_kernels.py (pytest imports every
test module before running any, and nothing imports the kernels earlier).
"""
import contextlib
import os
import sys

if "editgan_fast.kernels" in sys.modules and not sys.modules["editgan_fast.kernels"].INTERPRET:
    raise RuntimeError("editgan_fast.kernels was imported before TRITON_INTERPRET=1 was set; run "
                       "tests/test_triton_sync_free.py in its own process")
os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

pytest.importorskip("triton")

import editgan_fast  # noqa: E402
from editgan_fast.editor import Editor, EditVector  # noqa: E402
from editgan_fast.models.segmenter import Segmenter  # noqa: E402

from cuda_cases import random_members  # noqa: E402
from factories import small_generator  # noqa: E402

SYNCS = ("item", "tolist", "nonzero", "cpu", "numpy")


class HostSync(AssertionError):
    pass


@contextlib.contextmanager
def no_host_sync():
    """Every device->host read raises HostSync unless Triton's interpreter is the caller."""
    originals = {name: getattr(torch.Tensor, name) for name in SYNCS}
    original_nonzero = torch.nonzero

    def guard(name, fn):
        def call(*args, **kwargs):
            caller = sys._getframe(1).f_code.co_filename
            if f"{os.sep}triton{os.sep}" not in caller:
                raise HostSync(f"{name}() called from {caller}:{sys._getframe(1).f_lineno}")
            return fn(*args, **kwargs)
        return call

    for name, fn in originals.items():
        setattr(torch.Tensor, name, guard(name, fn))
    torch.nonzero = guard("torch.nonzero", original_nonzero)
    try:
        yield
    finally:
        for name, fn in originals.items():
            setattr(torch.Tensor, name, fn)
        torch.nonzero = original_nonzero


def test_the_guard_catches_each_sync():
    x = torch.tensor([1.0, 0.0])
    with no_host_sync():
        for read in (lambda: x.sum().item(), x.tolist, x.nonzero, lambda: torch.nonzero(x), x.cpu, x.numpy):
            with pytest.raises(HostSync):
                read()
    assert x.tolist() == [1.0, 0.0]  # restored


@pytest.fixture(scope="module")
def editor():
    g = small_generator(size=16, style_dim=8, channels={4: 8, 8: 6, 16: 4})
    dim = sum(g.feature_channels)
    members = random_members(dim, classes=4, count=2, h1=12, h2=6, device="cpu")
    return Editor(g, Segmenter(members, out_size=16, crop=(2, 14, 0, 16)), progress=False)


def test_apply_without_host_sync(editor):
    latent = editor.sample(0)
    vector = EditVector(0.3 * torch.randn(editor.generator.num_ws, editor.generator.style_dim),
                        fingerprint=editor.fingerprint)
    with editgan_fast.use_backend("triton"):
        editor.apply(latent, {vector: 0.5})  # warm: builds and caches every per-layer constant
        with no_host_sync():
            result = editor.apply(latent, {vector: [1.0, -1.0]})
    with editgan_fast.use_backend("reference"):
        expected = editor.apply(latent, {vector: [1.0, -1.0]})
    torch.testing.assert_close(result.image, expected.image, rtol=1e-4, atol=1e-4)


@pytest.mark.filterwarnings("ignore:no LPIPS weights")
def test_refinement_step_without_host_sync(editor):
    latent = editor.sample(1)
    labels, _ = editor.segment(latent)
    edited = labels.clone()
    edited[3:7, 4:9] = (labels[3:7, 4:9] + 1) % editor.num_classes
    objective = editor.edit_objective(latent, edited)
    start = latent.wplus.clone()
    with editgan_fast.use_backend("triton"):
        objective(start.requires_grad_())[0].backward()  # warm
        wplus = (start.detach() + 0.05 * torch.randn_like(start)).requires_grad_()
        with no_host_sync():
            total, terms, _ = objective(wplus)
            total.backward()
    reference = (wplus.detach().clone()).requires_grad_()
    with editgan_fast.use_backend("reference"):
        ref_total = objective(reference)[0]
        ref_total.backward()
    torch.testing.assert_close(total, ref_total, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(wplus.grad, reference.grad, rtol=1e-3, atol=1e-5)
