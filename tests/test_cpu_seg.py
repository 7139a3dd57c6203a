"""The cpu backend's segmentation head (csrc/cpu/seg_head.cpp + ops/_cpu_seg.py) against the float64 reference.

Error bounds, relative to the largest reference logit (gradient: to the largest reference gradient):
- fp32 2e-5 (only summation order and the folded BatchNorm differ);
- bf16 mode 2e-2 (projections stored in bf16, 8 mantissa bits, everything else fp32); its feature gradients
  0.15 in relative L2 norm: measured 5-7% on these tiny nets, from ReLU units whose mask flips with the
  rounding (an error ~ sqrt(fraction of units flipped));
- float64 1e-10 for nearest, 1e-6 for bilinear (the tap weights come from elementwise.h in fp32, shared with
  the CUDA kernels; torch computes them in float64 for float64 maps).
"""
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import editgan_fast
from editgan_fast import backend
from editgan_fast.ops import _cpu_isa, _cpu_seg
from editgan_fast.ops.seg_head import PixelMLP, seg_head
from seg_factories import editgan_widths, random_classifier_state_dict

pytestmark = pytest.mark.skipif(not backend.available("cpu"), reason="the native cpu extension is not built")

FP32_BOUND, BF16_BOUND, BF16_GRAD_BOUND = 2e-5, 2e-2, 0.15
FP64_BOUND = {"nearest": 1e-10, "bilinear": 1e-6}


def member(sd):
    """The PixelMLP of an EditGAN pixel_classifier state dict (layers 0/3/6 Linear, 2/5 BatchNorm)."""
    lin, bn = (0, 3, 6), (2, 5)
    return PixelMLP(weights=tuple(sd[f"layers.{i}.weight"] for i in lin),
                    biases=tuple(sd[f"layers.{i}.bias"] for i in lin),
                    bn_mean=tuple(sd[f"layers.{i}.running_mean"] for i in bn),
                    bn_var=tuple(sd[f"layers.{i}.running_var"] for i in bn),
                    bn_weight=tuple(sd[f"layers.{i}.weight"] for i in bn),
                    bn_bias=tuple(sd[f"layers.{i}.bias"] for i in bn))


def random_case(sizes, channels, batch, members, widths=(16, 8), classes=5, seed=0):
    """Random maps and EditGAN pixel classifiers (BatchNorm statistics far from identity) from the shared
    checkpoint factory."""
    gen = torch.Generator().manual_seed(seed)
    feats = [torch.randn(batch, c, s, s, generator=gen) for s, c in zip(sizes, channels)]
    mlps = [member(random_classifier_state_dict(sum(channels), classes, seed * 100 + i, widths))
            for i in range(members)]
    return feats, mlps


def run(name, feats, mlps, out_size, dtype=None, **kw):
    with editgan_fast.use_backend(name, dtype=dtype):
        return seg_head(feats, mlps, out_size, **kw)


def reference64(feats, mlps, out_size, **kw):
    return run("reference", [f.double() for f in feats], [m.to(torch.float64) for m in mlps], out_size, **kw)


def rel_err(got, want):
    return ((got.double() - want).abs().max() / want.abs().max().clamp_min(1e-30)).item()


# Several resolutions incl. a map larger than the output (resampled down) and one at output size; odd channels.
SIZES, CHANNELS = (4, 4, 7, 16, 20, 24), (5, 3, 6, 9, 4, 3)


@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
@pytest.mark.parametrize("members", [1, 3])
@pytest.mark.parametrize("crop", [None, (3, 17, 2, 19)])
def test_forward_matches_reference(mode, members, crop):
    feats, mlps = random_case(SIZES, CHANNELS, batch=2, members=members, seed=members)
    want = reference64(feats, mlps, (20, 20), crop=crop, mode=mode)
    got = run("cpu", feats, mlps, (20, 20), crop=crop, mode=mode)
    assert got.shape == want.shape and got.dtype == torch.float32
    assert rel_err(got, want) < FP32_BOUND


@pytest.mark.parametrize("classes", [7, 32])  # EditGAN's nets: (128, 32) hidden below 32 classes, (256, 128) from 32
def test_editgan_layouts_and_non_square_output(classes):
    feats, mlps = random_case((4, 8, 16, 32), (40, 33, 17, 9), batch=1, members=2, widths=editgan_widths(classes),
                              classes=classes)
    want = reference64(feats, mlps, (23, 37), mode="bilinear")
    got = run("cpu", feats, mlps, (23, 37), mode="bilinear")
    assert rel_err(got, want) < FP32_BOUND


def regions(shape, gen):
    scattered = torch.rand(shape, generator=gen) < 0.2
    blob = torch.zeros(shape, dtype=torch.bool)
    blob[4:9, 6:13] = True
    return {"scattered": scattered, "blob": blob, "empty": torch.zeros(shape, dtype=torch.bool),
            "full": torch.ones(shape, dtype=torch.bool)}


@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
@pytest.mark.parametrize("kind", ["scattered", "blob", "empty", "full"])
def test_region_matches_reference(mode, kind):
    feats, mlps = random_case(SIZES, CHANNELS, batch=2, members=3, seed=7)
    crop = (2, 18, 1, 20)
    region = regions((16, 19), torch.Generator().manual_seed(3))[kind]
    got = run("cpu", feats, mlps, (20, 20), crop=crop, mode=mode, region=region)
    assert got.shape == (2, 5, int(region.sum()))
    want = reference64(feats, mlps, (20, 20), crop=crop, mode=mode, region=region)
    assert want.shape == got.shape
    if region.any():
        assert rel_err(got, want) < FP32_BOUND


def feature_grads(name, feats, mlps, out_size, weight, dtype=torch.float32, **kw):
    leaves = [f.detach().to(dtype).requires_grad_() for f in feats]  # never the callers' maps themselves
    members = [m.to(dtype) for m in mlps]
    out = run(name, leaves, members, out_size, **kw)
    (out * weight.to(dtype)).sum().backward()
    return [f.grad for f in leaves]


@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
@pytest.mark.parametrize("use_region", [False, True])
def test_feature_gradients_match_reference(mode, use_region):
    feats, mlps = random_case(SIZES, CHANNELS, batch=2, members=3, seed=11)
    crop = (3, 17, 2, 19)
    region = regions((14, 17), torch.Generator().manual_seed(5))["scattered"] if use_region else None
    shape = (2, 5, int(region.sum())) if use_region else (2, 5, 14, 17)
    weight = torch.randn(shape, generator=torch.Generator().manual_seed(9))
    want = feature_grads("reference", feats, mlps, (20, 20), weight, torch.float64, crop=crop, mode=mode,
                         region=region)
    got = feature_grads("cpu", feats, mlps, (20, 20), weight, crop=crop, mode=mode, region=region)
    for g, w in zip(got, want):
        assert g.dtype == torch.float32 and g.shape == w.shape
        assert rel_err(g, w) < FP32_BOUND


@pytest.mark.parametrize("tile,band_bytes,use_region", [(1, None, False), (7, None, False), (0, 1, False),
                                                        (5, 4096, True)])
def test_small_tiles_and_bands_forward_and_gradients(monkeypatch, tile, band_bytes, use_region):
    """Tiles of 1, 5 and 7 pixels: partial tiles, tiles splitting output rows, each thread's gradient window
    spanning several source rows and merged with the other thread's; one band per output row (band_bytes=1)
    or a few, whose outputs are concatenated and whose gradients add up."""
    monkeypatch.setattr(_cpu_seg, "TILE_PIXELS", tile)
    if band_bytes is not None:
        monkeypatch.setattr(_cpu_seg, "BAND_BYTES", band_bytes)
    feats, mlps = random_case(SIZES, CHANNELS, batch=2, members=3, seed=13)
    region = regions((13, 18), torch.Generator().manual_seed(8))["scattered"] if use_region else None
    shape = (2, 5, int(region.sum())) if use_region else (2, 5, 13, 18)
    weight = torch.randn(shape, generator=torch.Generator().manual_seed(4))
    kw = dict(crop=(4, 17, 1, 19), mode="bilinear", region=region)
    assert rel_err(run("cpu", feats, mlps, (20, 20), **kw), reference64(feats, mlps, (20, 20), **kw)) < FP32_BOUND
    want = feature_grads("reference", feats, mlps, (20, 20), weight, torch.float64, **kw)
    got = feature_grads("cpu", feats, mlps, (20, 20), weight, **kw)
    for g, w in zip(got, want):
        assert rel_err(g, w) < FP32_BOUND


def test_empty_region_gives_zero_gradients():
    feats, mlps = random_case((4, 8), (3, 5), batch=1, members=2)
    leaves = [f.requires_grad_() for f in feats]
    out = run("cpu", leaves, mlps, 10, region=torch.zeros(10, 10, dtype=torch.bool))
    assert out.shape == (1, 5, 0)
    out.sum().backward()
    assert all(f.grad is not None and not f.grad.any() for f in leaves)


@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
def test_float64_gradcheck(mode):
    feats, mlps = random_case((3, 5, 9), (2, 3, 2), batch=2, members=2, widths=(4, 3), classes=3, seed=2)
    leaves = [f.double().requires_grad_() for f in feats]
    members = [m.to(torch.float64) for m in mlps]
    region = torch.rand(5, 6, generator=torch.Generator().manual_seed(1)) < 0.6

    def head(*fs):
        with editgan_fast.use_backend("cpu"):
            return seg_head(list(fs), members, (9, 7), crop=(2, 7, 0, 6), mode=mode, region=region)

    assert torch.autograd.gradcheck(head, leaves, eps=1e-6, atol=1e-8)
    want = reference64(feats, mlps, (9, 7), crop=(2, 7, 0, 6), mode=mode, region=region)
    assert rel_err(head(*leaves).detach(), want) < FP64_BOUND[mode]


@pytest.mark.parametrize("products", ["native", "fp32"])  # both bf16 branches, forced, on any CPU
@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
def test_bf16_mode_error_bound(mode, products, monkeypatch):
    monkeypatch.setattr(_cpu_isa, "_bf16_products", products)
    feats, mlps = random_case((4, 8, 16, 32), (24, 20, 12, 6), batch=1, members=3, widths=(32, 16))
    want = reference64(feats, mlps, 32, crop=(4, 28, 0, 32), mode=mode)
    got = run("cpu", feats, mlps, 32, dtype=torch.bfloat16, crop=(4, 28, 0, 32), mode=mode)
    fp32 = run("cpu", feats, mlps, 32, crop=(4, 28, 0, 32), mode=mode)
    assert got.dtype == torch.float32
    err = rel_err(got, want)
    assert err < BF16_BOUND
    assert err > rel_err(fp32, want)  # the bf16 storage really is used
    weight = torch.randn(got.shape, generator=torch.Generator().manual_seed(6))
    want_g = feature_grads("reference", feats, mlps, 32, weight, torch.float64, crop=(4, 28, 0, 32), mode=mode)
    leaves = [f.clone().requires_grad_() for f in feats]
    (run("cpu", leaves, mlps, 32, dtype=torch.bfloat16, crop=(4, 28, 0, 32), mode=mode) * weight).sum().backward()
    # Gradients: ReLU masks flip where a bf16-rounded pre-activation changes sign, so a few entries move by
    # their full size; bound the relative L2 error instead of the max.
    for f, w in zip(leaves, want_g):
        assert ((f.grad.double() - w).norm() / w.norm()).item() < BF16_GRAD_BOUND


def test_bad_requests_are_clear_errors():
    feats, mlps = random_case((4, 8), (3, 5), batch=1, members=2)
    with pytest.raises(ValueError, match="no float16 mode"):
        run("cpu", feats, mlps, 8, dtype=torch.float16)
    odd = member(random_classifier_state_dict(8, 5, 0, widths=(12, 8)))
    with pytest.raises(ValueError, match="one architecture"):
        run("cpu", feats, [mlps[0], odd], 8)


MEMORY_SCRIPT = textwrap.dedent("""
    import gc, resource, sys, torch
    import editgan_fast
    from editgan_fast.ops.seg_head import seg_head
    sys.path.insert(0, {tests!r})
    from test_cpu_seg import random_case

    def rss(field):
        for line in open("/proc/self/status"):
            if line.startswith(field):
                return int(line.split()[1]) * 1024

    # 256 px output, 1632 channels over 6 resolutions: the reference's stack would be 256*192*1632*4 = 321 MB.
    feats, mlps = random_case((16, 32, 64, 64, 128, 256), (512, 512, 256, 256, 64, 32), batch=1, members=3,
                              widths=(128, 32), classes=16)
    with editgan_fast.use_backend("cpu"):
        seg_head(feats, mlps, 256, crop=(32, 224, 0, 256))  # warm up allocator and thread pool
    gc.collect()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak-RSS counter (VmHWM) to the current RSS
    except OSError:
        print("no-clear-refs")
        sys.exit(0)
    base = rss("VmRSS:")
    with editgan_fast.use_backend("cpu"):
        out = seg_head(feats, mlps, 256, crop=(32, 224, 0, 256))
    print(rss("VmHWM:") - base)
""")


def test_peak_memory_stays_far_below_the_feature_stack():
    script = MEMORY_SCRIPT.format(tests=os.path.dirname(__file__))
    env = dict(os.environ, OMP_NUM_THREADS="2")
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr
    if res.stdout.split()[-1] == "no-clear-refs":
        pytest.skip("this kernel does not let a process reset its peak RSS (/proc/self/clear_refs)")
    extra = int(res.stdout.split()[-1])
    stack = 256 * 192 * 1632 * 4
    # Projected 128 px maps ([~97, 128, 384] fp32 = 19 MB), the direct 256 px map's channel-last copy (6 MB),
    # the output (3 MB) and per-thread tiles: well under a quarter of the stack.
    assert extra < stack / 4, f"peak extra RSS {extra / 2**20:.0f} MiB vs stack {stack / 2**20:.0f} MiB"


# ------------------------------------------------------------------------------------- the inference route
# Without autograd, fp32/fp64 storage and one image's projections under LAZY_BYTES, seg_head_infer runs: it
# projects each image inside the kernel, threads take whole images while at least as many remain (batch 3 on
# 2 threads: two whole images, one split by tiles), and fp32 layers of a width that is a multiple of the
# kernel's block (16 on AVX2, 32 on AVX-512: widths (32, 32) with 3 members fit both) run in the packed
# linear+ReLU kernel. Its results must equal the reference's as the autograd route's do.
PACKED_WIDTHS = (32, 32)


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def spy_inference(monkeypatch):
    calls = []
    original = _cpu_seg._infer

    def spy(*args):
        calls.append(args[0][0].shape[0])
        return original(*args)

    monkeypatch.setattr(_cpu_seg, "_infer", spy)
    return calls


@pytest.mark.parametrize("packed", [True, False])
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("mode,crop", [("bilinear", None), ("nearest", (3, 17, 2, 19))])
def test_inference_route_matches_reference(monkeypatch, two_threads, packed, batch, mode, crop):
    monkeypatch.setattr(_cpu_seg, "PACKED", packed)
    calls = spy_inference(monkeypatch)
    feats, mlps = random_case(SIZES, CHANNELS, batch=batch, members=3, widths=PACKED_WIDTHS, seed=batch)
    want = reference64(feats, mlps, (20, 20), crop=crop, mode=mode)
    got = run("cpu", feats, mlps, (20, 20), crop=crop, mode=mode)
    assert calls == [batch]
    assert got.shape == want.shape and got.dtype == torch.float32
    assert rel_err(got, want) < FP32_BOUND
    # The autograd route (the Function, projections stored for backward) gives the same logits.
    leaves = [f.clone().requires_grad_() for f in feats]
    assert rel_err(run("cpu", leaves, mlps, (20, 20), crop=crop, mode=mode).detach(), want) < FP32_BOUND
    assert calls == [batch]


@pytest.mark.parametrize("tile", [1, 5, 13])
def test_inference_route_partial_tiles_and_float64(monkeypatch, two_threads, tile):
    """Tiles that split output rows and leave partial blocks of the packed kernel's 6 rows; float64 (BLAS path)
    in nearest mode, where the taps are exact and the bound is 1e-10."""
    monkeypatch.setattr(_cpu_seg, "TILE_PIXELS", tile)
    calls = spy_inference(monkeypatch)
    feats, mlps = random_case(SIZES, CHANNELS, batch=3, members=3, widths=PACKED_WIDTHS, seed=17)
    kw = dict(crop=(4, 17, 1, 19), mode="bilinear")
    assert rel_err(run("cpu", feats, mlps, (20, 20), **kw), reference64(feats, mlps, (20, 20), **kw)) < FP32_BOUND
    kw["mode"] = "nearest"
    got64 = run("cpu", [f.double() for f in feats], [m.to(torch.float64) for m in mlps], (20, 20), **kw)
    assert got64.dtype == torch.float64
    assert rel_err(got64, reference64(feats, mlps, (20, 20), **kw)) < FP64_BOUND["nearest"]
    assert calls == [3, 3]


@pytest.mark.parametrize("tile", [3, 40])
def test_inference_route_one_image_split_by_tiles(monkeypatch, two_threads, tile):
    """One image (the real-time path) on two threads: its projections run first, then its tiles are split
    between the threads; a full crop and a scattered region, whose tiles start and end mid-row, both equal the
    reference."""
    monkeypatch.setattr(_cpu_seg, "TILE_PIXELS", tile)
    calls = spy_inference(monkeypatch)
    feats, mlps = random_case(SIZES, CHANNELS, batch=1, members=3, widths=PACKED_WIDTHS, seed=23)
    region = regions((16, 19), torch.Generator().manual_seed(5))["scattered"]
    for kw in (dict(crop=None), dict(crop=(2, 18, 1, 20), region=region)):
        want = reference64(feats, mlps, (20, 20), mode="bilinear", **kw)
        assert rel_err(run("cpu", feats, mlps, (20, 20), mode="bilinear", **kw), want) < FP32_BOUND
    assert calls == [1, 1]


def sparse_members(mlps):
    """The members with their first-layer biases lowered: ~15-20 % of the units fire, so about half the (6-pixel
    block, unit) pairs of the packed second layer are all zero (skipped) and a quarter are on in one row only
    (must not be skipped, whichever row)."""
    import dataclasses
    return [dataclasses.replace(m, biases=(m.biases[0] - 0.7 * m.weights[0].norm(dim=1), *m.biases[1:]))
            for m in mlps]


@pytest.mark.parametrize("batch,widths", [(1, PACKED_WIDTHS), (3, PACKED_WIDTHS), (1, (20, 32))])
def test_packed_second_layer_skips_units_off_in_a_whole_block(monkeypatch, two_threads, batch, widths):
    """The packed second layer skips the first-layer units that are zero in every row of its 6-row blocks
    (sparse_members): the logits (inference route) and the feature gradients (the autograd route, whose backward
    recomputes the layer) still equal the reference. 20 first-layer units: the unit scan's tail past the vector
    width."""
    calls = spy_inference(monkeypatch)
    feats, mlps = random_case(SIZES, CHANNELS, batch=batch, members=3, widths=widths, seed=29)
    sparse = sparse_members(mlps)
    want = reference64(feats, sparse, (20, 20), mode="bilinear")
    assert rel_err(run("cpu", feats, sparse, (20, 20), mode="bilinear"), want) < FP32_BOUND
    assert calls == [batch]
    weight = torch.randn(want.shape, generator=torch.Generator().manual_seed(31))
    grads = feature_grads("reference", feats, sparse, (20, 20), weight, torch.float64, mode="bilinear")
    for got, ref in zip(feature_grads("cpu", feats, sparse, (20, 20), weight, mode="bilinear"), grads):
        assert rel_err(got, ref) < FP32_BOUND


def test_inference_route_regions_and_fallbacks(monkeypatch):
    """A region takes the inference route too (its plan is not cached); projections over LAZY_BYTES and the
    bf16 mode take the Function's route."""
    calls = spy_inference(monkeypatch)
    feats, mlps = random_case(SIZES, CHANNELS, batch=2, members=3, widths=PACKED_WIDTHS, seed=19)
    region = regions((16, 19), torch.Generator().manual_seed(2))["scattered"]
    kw = dict(crop=(2, 18, 1, 20), mode="bilinear", region=region)
    assert rel_err(run("cpu", feats, mlps, (20, 20), **kw), reference64(feats, mlps, (20, 20), **kw)) < FP32_BOUND
    assert calls == [2]
    monkeypatch.setattr(_cpu_seg, "LAZY_BYTES", 0)
    assert rel_err(run("cpu", feats, mlps, (20, 20), **kw), reference64(feats, mlps, (20, 20), **kw)) < FP32_BOUND
    monkeypatch.setattr(_cpu_seg, "LAZY_BYTES", 2**30)
    run("cpu", feats, mlps, (20, 20), dtype=torch.bfloat16, **kw)
    assert calls == [2]


def test_cached_plans_follow_shapes_crops_and_members():
    """Full-crop plans are reused per (ensemble, shapes, crop, mode): alternating them, and another ensemble of
    the same shapes, each still gives its own reference result."""
    feats, mlps = random_case(SIZES, CHANNELS, batch=2, members=3, widths=PACKED_WIDTHS, seed=23)
    _, others = random_case(SIZES, CHANNELS, batch=2, members=3, widths=PACKED_WIDTHS, seed=24)
    small = [f[:1, :, :, :] for f in feats]
    cases = [(feats, mlps, dict(crop=None, mode="bilinear")), (feats, mlps, dict(crop=(3, 17, 2, 19), mode="nearest")),
             (small, mlps, dict(crop=None, mode="bilinear")), (feats, others, dict(crop=None, mode="bilinear"))]
    for _ in range(2):
        for f, m, kw in cases:
            assert rel_err(run("cpu", f, m, (20, 20), **kw), reference64(f, m, (20, 20), **kw)) < FP32_BOUND


@pytest.mark.parametrize("isa", ["portable", "avx2", "avx512"])
def test_packed_kernel_on_every_isa_build(isa):
    best = _cpu_isa.best_cpu_isa()
    order = ("portable", "avx2", "avx512")
    if order.index(isa) > order.index(best):
        pytest.skip(f"this CPU cannot execute the {isa} build (its widest is {best})")
    feats, mlps = random_case(SIZES, CHANNELS, batch=2, members=3, widths=PACKED_WIDTHS, seed=29)
    want = reference64(feats, mlps, (20, 20), mode="bilinear")
    weight = torch.randn(want.shape, generator=torch.Generator().manual_seed(3))
    want_grads = feature_grads("reference", feats, mlps, (20, 20), weight, torch.float64, mode="bilinear")
    with _cpu_isa.cpu_settings(isa=isa):
        assert rel_err(run("cpu", feats, mlps, (20, 20), mode="bilinear"), want) < FP32_BOUND
        got = feature_grads("cpu", feats, mlps, (20, 20), weight, mode="bilinear")
    for g, w in zip(got, want_grads):
        assert rel_err(g, w) < FP32_BOUND


# ----------------------------------------------------------------------------- the separable bilinear gather
# Bilinear projected groups are gathered run by run of a tile's pixels on one output row (the kernel's
# separable_run): a group whose source-column span is small against the run's pixel count gets a row buffer
# interpolated between its two source rows, and each pixel 2 taps of it; the other groups keep 4 taps from the
# projections. SEPARABLE=False forces the 4-tap path everywhere. Tiles of 7 and 13 pixels on 18-pixel rows
# change rows inside a tile and split rows between tiles; runs of 2 pixels rarely pay for a row buffer (mostly
# the 4-tap path); in runs of 5 and more both paths mix (the 4 and 7 px maps mostly separable, the 16 px one,
# resampled down, never); region rows are partial (a blob plus scattered pixels).
def dense_and_scattered_region(shape, seed):
    region = regions(shape, torch.Generator().manual_seed(seed))
    return region["blob"] | region["scattered"]


@pytest.mark.parametrize("separable", [True, False])
@pytest.mark.parametrize("tile,use_region", [(0, False), (7, False), (13, False), (2, False), (5, True),
                                             (0, True)])
def test_separable_gather_forward_and_gradients(monkeypatch, two_threads, separable, tile, use_region):
    monkeypatch.setattr(_cpu_seg, "SEPARABLE", separable)
    monkeypatch.setattr(_cpu_seg, "TILE_PIXELS", tile)
    feats, mlps = random_case(SIZES, CHANNELS, batch=3, members=3, widths=PACKED_WIDTHS, seed=37)
    region = dense_and_scattered_region((13, 18), 10) if use_region else None
    kw = dict(crop=(4, 17, 1, 19), mode="bilinear", region=region)
    # The inference route (no graph), then the autograd route's forward and backward.
    assert rel_err(run("cpu", feats, mlps, (20, 20), **kw), reference64(feats, mlps, (20, 20), **kw)) < FP32_BOUND
    shape = (3, 5, int(region.sum())) if use_region else (3, 5, 13, 18)
    weight = torch.randn(shape, generator=torch.Generator().manual_seed(12))
    want = feature_grads("reference", feats, mlps, (20, 20), weight, torch.float64, **kw)
    got = feature_grads("cpu", feats, mlps, (20, 20), weight, **kw)
    for g, w in zip(got, want):
        assert rel_err(g, w) < FP32_BOUND


@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
@pytest.mark.parametrize("dtype", [None, torch.bfloat16])
def test_separable_gather_changes_only_bilinear_rounding(monkeypatch, mode, dtype):
    """Both paths match the reference, fp32 and bf16 storage (the row buffer is fp32 there); bilinear results
    differ between them in the last bits (the separable path really runs), nearest ones (1 tap, one path) not
    at all."""
    feats, mlps = random_case((4, 8, 16, 32), (24, 20, 12, 6), batch=2, members=3, widths=(32, 16))
    kw = dict(crop=(4, 28, 0, 32), mode=mode)
    want = reference64(feats, mlps, 32, **kw)
    got = {}
    for separable in (True, False):
        monkeypatch.setattr(_cpu_seg, "SEPARABLE", separable)
        got[separable] = run("cpu", feats, mlps, 32, dtype=dtype, **kw)
        assert rel_err(got[separable], want) < (FP32_BOUND if dtype is None else BF16_BOUND)
    assert torch.equal(got[True], got[False]) == (mode == "nearest")


@pytest.mark.parametrize("tile", [0, 6])
def test_separable_gather_float64_gradcheck(monkeypatch, tile):
    """float64 on full rows (every projected group separable) and on 6-pixel tiles splitting rows (mixed)."""
    monkeypatch.setattr(_cpu_seg, "TILE_PIXELS", tile)
    feats, mlps = random_case((2, 3, 5, 9), (2, 3, 2, 2), batch=2, members=2, widths=(4, 3), classes=3, seed=5)
    leaves = [f.double().requires_grad_() for f in feats]
    members = [m.to(torch.float64) for m in mlps]

    def head(*fs):
        with editgan_fast.use_backend("cpu"):
            return seg_head(list(fs), members, (9, 10), crop=(1, 8, 0, 10), mode="bilinear")

    assert torch.autograd.gradcheck(head, leaves, eps=1e-6, atol=1e-8)
    want = reference64(feats, mlps, (9, 10), crop=(1, 8, 0, 10), mode="bilinear")
    assert rel_err(head(*leaves).detach(), want) < FP64_BOUND["bilinear"]


# ------------------------------------------------------------------------- packed weights, built in Python
# The fp32 layers the kernel runs packed (widths a multiple of seg_head_packed_block()) get their weights packed
# once per ensemble and block size (_packed_weights, cached on the stacked members) and passed to the kernels,
# which check them.
class _Ops:
    """torch.ops.editgan_fast with the kernel calls recorded and, optionally, another packed block size."""

    def __init__(self, block=None):
        self.block, self.calls = block, []

    def seg_head_packed_block(self):
        return self.block or torch.ops.editgan_fast.seg_head_packed_block()

    def __getattr__(self, name):
        op = getattr(torch.ops.editgan_fast, name)

        def call(*args):
            self.calls.append((name, args))
            return op(*args)
        return call


def packs(stack):
    return {k: v for k, v in stack.weights.items() if k[0] in ("w1d_pack", "w2_pack")}


def test_packed_weights_built_once_per_ensemble_and_block(monkeypatch):
    feats, mlps = random_case(SIZES, CHANNELS, batch=2, members=3, widths=PACKED_WIDTHS, seed=31)
    kw = dict(crop=(3, 17, 2, 19), mode="bilinear")
    want = reference64(feats, mlps, (20, 20), **kw)
    nb = torch.ops.editgan_fast.seg_head_packed_block()
    assert nb in (16, 32)
    ops = _Ops()
    monkeypatch.setattr(_cpu_seg, "_ops", lambda: ops)
    assert rel_err(run("cpu", feats, mlps, (20, 20), **kw), want) < FP32_BOUND
    stack = _cpu_seg._stacked(mlps, torch.float32)
    first = packs(stack)
    assert sorted((k[0], k[1]) for k in first) == [("w1d_pack", nb), ("w2_pack", nb)]
    # Both routes, forward and backward, pass the same cached tensors.
    leaves = [f.clone().requires_grad_() for f in feats]
    run("cpu", leaves, mlps, (20, 20), **kw).sum().backward()
    assert packs(stack) == first
    kernels = [(name, args) for name, args in ops.calls if name.startswith("seg_head_") and name[9:] in
               ("forward", "infer", "backward")]
    assert sorted({name for name, _ in kernels}) == ["seg_head_backward", "seg_head_forward", "seg_head_infer"]
    for _, args in kernels:
        assert {id(a) for a in args[-2:]} == {id(v) for v in first.values()}
    # Another block (another ISA selected): packed and cached under it, and refused by this ISA's kernel.
    monkeypatch.setattr(_cpu_seg, "_ops", lambda: _Ops(block=2 * nb))
    with pytest.raises(RuntimeError, match=r"seg_head: w1d_pack (must be a contiguous float32 tensor of shape|"
                                           r"missing)"):
        run("cpu", feats, mlps, (20, 20), **kw)
    assert {k[1] for k in packs(stack)} >= {nb}


def test_kernels_check_the_packed_weights(monkeypatch):
    feats, mlps = random_case(SIZES, CHANNELS, batch=1, members=3, widths=PACKED_WIDTHS, seed=33)
    ops = _Ops()
    monkeypatch.setattr(_cpu_seg, "_ops", lambda: ops)
    run("cpu", feats, mlps, (20, 20))
    args = next(list(a) for name, a in ops.calls if name == "seg_head_infer")
    op = torch.ops.editgan_fast.seg_head_infer
    torch.testing.assert_close(op(*args), run("cpu", feats, mlps, (20, 20)).flatten(2))
    w1d, w2 = args[-2:]
    for bad, match in [((w1d, None), "w2_pack missing: packed weights are needed for the second layer"),
                       ((None, w2), "w1d_pack missing: packed weights are needed for the first layer's direct"),
                       ((w1d, w2[:, :, :-1]), "w2_pack must be a contiguous float32 tensor of shape"),
                       ((w1d.double(), w2), "w1d_pack must be a contiguous float32 tensor of shape"),
                       ((w1d, w2.transpose(-1, -2)), "w2_pack must be a contiguous")]:
        with pytest.raises(RuntimeError, match=match):
            op(*args[:-2], *bad)
    packed = len(args) - 4  # (..., packed, separable, w1d_pack, w2_pack); False: no pack is expected
    unpacked = args[:packed] + [False] + args[packed + 1:]
    with pytest.raises(RuntimeError, match="w1d_pack given, but packed weights are not used for the first layer"):
        op(*unpacked)
    torch.testing.assert_close(op(*unpacked[:-2], None, None), op(*args))
