"""The backend dispatch: selection, scoping, fallbacks and clear errors."""
import threading

import pytest
import torch

import editgan_fast
from editgan_fast import backend
from editgan_fast.ops import bias_act


def test_unknown_backend_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown backend 'fastest'"):
        editgan_fast.set_backend("fastest")
    with pytest.raises(ValueError, match="dtype"):
        with editgan_fast.use_backend("reference", dtype=torch.int32):
            pass


def test_cuda_backend_unavailable_without_gpu():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(editgan_fast.BackendUnavailable, match="'cuda' is not available"):
        with editgan_fast.use_backend("cuda"):
            pass


def test_use_backend_scopes_and_restores():
    x = torch.randn(2, 3, 4, 4)
    outer = backend.backend_name_for(x)
    with editgan_fast.use_backend("reference", dtype=torch.bfloat16):
        assert backend.backend_name_for(x) == "reference"
        assert backend.compute_dtype() == torch.bfloat16
        assert backend.resolve("bias_act", x) is backend._reference_ops["bias_act"]
    assert backend.backend_name_for(x) == outer
    assert backend.compute_dtype() == torch.float32


def test_use_backend_is_thread_local():
    x = torch.randn(1)
    seen = {}

    def other():
        seen["name"] = backend.backend_name_for(x)

    with editgan_fast.use_backend("reference"):
        t = threading.Thread(target=other)
        t.start()
        t.join()
    assert seen["name"] == backend._auto_for(x.device)


def test_set_backend_changes_default_then_auto_restores():
    x = torch.randn(3, 5)
    try:
        editgan_fast.set_backend("reference")
        assert backend.backend_name_for(x) == "reference"
    finally:
        editgan_fast.set_backend("auto")
    assert backend.backend_name_for(x) == backend._auto_for(x.device)


def test_auto_prefers_native_cpu_when_built():
    x = torch.randn(2)
    assert backend._auto_for(x.device) == ("cpu" if backend.available("cpu") else "reference")


def test_ops_run_under_every_available_cpu_backend():
    x = torch.randn(2, 6, 5, 7, dtype=torch.float64)
    b = torch.randn(6, dtype=torch.float64)
    with editgan_fast.use_backend("reference"):
        expected = bias_act(x, b, act="lrelu", clamp=0.5)
    for name in ("cpu",):
        if not backend.available(name):
            continue
        with editgan_fast.use_backend(name):
            torch.testing.assert_close(bias_act(x, b, act="lrelu", clamp=0.5), expected)
