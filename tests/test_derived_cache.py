"""The GPU backends' cache of values derived from frozen tensors (ops/_derived.py): one value per tensor set and
setting for as long as the tensors live, so a captured CUDA graph's inputs are never freed under it by a call in
another setting."""
import gc

import torch

from editgan_fast.ops._derived import DerivedCache


def test_each_setting_keeps_its_own_value():
    cache, w = DerivedCache(), torch.randn(4, 3)
    builds = []
    build = lambda tag: lambda: builds.append(tag) or (w * len(builds)).to(tag)
    fp32 = cache.get((w,), torch.float32, build(torch.float32))
    bf16 = cache.get((w,), torch.bfloat16, build(torch.bfloat16))
    assert cache.get((w,), torch.float32, build(torch.float32)) is fp32  # not replaced by the bf16 value
    assert cache.get((w,), torch.bfloat16, build(torch.bfloat16)) is bf16
    assert builds == [torch.float32, torch.bfloat16]


def test_rebuilt_after_an_in_place_change_and_dropped_with_the_tensor():
    cache, w = DerivedCache(), torch.randn(5)
    first = cache.get((w,), (), lambda: w.square())
    w.add_(1)
    second = cache.get((w,), (), lambda: w.square())
    assert second is not first
    torch.testing.assert_close(second, w.square())
    del w
    gc.collect()
    assert not cache._entries


def test_another_tensor_at_a_reused_address_is_not_a_hit():
    cache = DerivedCache()
    values = set()
    for i in range(50):  # fresh tensors, often allocated where a freed one was
        w = torch.full((3,), float(i))
        values.add(float(cache.get((w,), (), lambda: w.clone())[0]))
    assert values == {float(i) for i in range(50)}
