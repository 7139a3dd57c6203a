"""pytest-benchmark timings of the cpu backend's layer kernels against the reference, at small sizes (a quick
regression check; the full 512 px table is bench/run.py). Each benchmark also checks that the timed cpu result
matches the reference (fp32: 2e-5 relative to the output's largest value), so a fast-but-wrong kernel fails.

    .venv/bin/python -m pytest bench/test_bench_conv.py --benchmark-group-by=param:case
"""
import pytest
import torch

from editgan_fast import backend

import cases_conv as cc
from harness import matmul_gflops

pytestmark = pytest.mark.skipif(not backend.available("cpu"), reason="native extension not built")

SMALL = {  # name -> factory(backend) returning the timed callable; 32..64 px, channels not multiples of 16
    "modconv 32px 72->72": lambda b: cc.conv_layer(b, None, 72, 72, 32),
    "modconv up 64px 72->40": lambda b: cc.conv_layer(b, None, 72, 40, 64, up=2),
    "torgb+skip 64px 40->3": lambda b: cc.conv_layer(b, None, 40, 3, 64, k=1, rgb=True),
    "upfirdn2d up2 32->64 40ch": lambda b: cc.upfirdn_case(b, None, 40, 32, 2, (2, 1, 2, 1)),
    "bias_act lrelu 64px 40ch": lambda b: cc.bias_act_case(b, None, 40, 64),
}


@pytest.mark.parametrize("name", sorted(SMALL))
@pytest.mark.parametrize("backend_name", ["reference", "cpu"])
def test_bench_layer(benchmark, name, backend_name):
    benchmark.group = name
    out = benchmark(SMALL[name](backend_name))
    want = SMALL[name]("reference")()
    assert out.shape == want.shape
    assert ((out - want).abs().max() / want.abs().max()).item() < 2e-5


def test_matmul_rate_is_measured():
    # The harness's reference rates: a positive, finite number for both dtypes, fp32 faster than a scalar loop.
    fp32 = matmul_gflops(torch.float32, target_seconds=0.005, max_n=256)
    bf16 = matmul_gflops(torch.bfloat16, target_seconds=0.005, max_n=128)
    assert 0.5 < fp32 < 1e5 and 0 < bf16 < 1e5
