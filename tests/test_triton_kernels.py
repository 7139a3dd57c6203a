"""Every Triton kernel against the reference backend, forward and backward, on fresh random inputs.

Here (no GPU) the kernels run on CPU tensors through Triton's interpreter. TRITON_INTERPRET is read when a
kernel is decorated, i.e. when editgan_fast.kernels is imported, so this module sets it at import time, before
anything imports the kernels (pytest imports every test module before running any test, and nothing else
imports them). It stays set for the process; its only effect elsewhere is that the triton backend then also
accepts CPU tensors, which "auto" never selects for them.
With EDITGAN_FAST_TRITON_DEVICE=cuda (test_triton_aot.py's GPU test runs this module that way) the same
tests run compiled on the GPU instead.

Gradients are compared with the reference's autograd in float64 rather than by gradcheck: the kernels
accumulate in fp32 by design, so finite differences in fp64 do not apply to them.
Bounds: max |fast - reference| <= rel * max |reference|, rel = 2e-5 for fp32 storage (the reference runs in
fp64), 1e-2 for fp16 and 4e-2 for bf16 storage (8 mantissa bits, the inputs themselves are rounded).
"""
import os
import sys

DEVICE = os.environ.get("EDITGAN_FAST_TRITON_DEVICE", "cpu")
if DEVICE == "cpu":
    if "editgan_fast.kernels" in sys.modules and not sys.modules["editgan_fast.kernels"].INTERPRET:
        raise RuntimeError("editgan_fast.kernels was imported before TRITON_INTERPRET=1 was set; run "
                           "tests/test_triton_kernels.py in its own process")
    os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

triton = pytest.importorskip("triton")
tl = triton.language

import editgan_fast  # noqa: E402
from editgan_fast.ops import PixelMLP, bias_act, modulated_conv2d, seg_head, setup_filter, upfirdn2d  # noqa: E402
from editgan_fast.kernels import seg_head as seg_kernels  # noqa: E402

if DEVICE == "cuda" and not torch.cuda.is_available():
    if os.environ.get("EDITGAN_FAST_REQUIRE_GPU") == "1":  # bench/gpu_check.sh: a skip is a failure
        raise RuntimeError("EDITGAN_FAST_TRITON_DEVICE=cuda and EDITGAN_FAST_REQUIRE_GPU=1 but no CUDA device")
    pytest.skip("EDITGAN_FAST_TRITON_DEVICE=cuda but no CUDA device", allow_module_level=True)

FULL = os.environ.get("EDITGAN_FAST_FULL") == "1"
REL = {torch.float32: 2e-5, torch.float16: 1e-2, torch.bfloat16: 4e-2}


def randn(*shape, seed=None):
    g = torch.Generator().manual_seed(seed) if seed is not None else None
    return torch.randn(*shape, generator=g).to(DEVICE)


def assert_rel(actual, expected, rel, what=""):
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    err = (actual.double() - expected.double()).abs().max().item()
    scale = expected.double().abs().max().item()
    assert err <= rel * scale, f"{what}: max error {err:.3g} > {rel} x {scale:.3g}"


def run(backend, fn, inputs, dtype=None):
    """fn(*inputs) under `backend` and its gradients w.r.t. every input for a fixed random dL/dy."""
    inputs = [t.detach().clone().requires_grad_(True) for t in inputs]
    with editgan_fast.use_backend(backend, dtype=dtype):
        y = fn(*inputs)
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(7)).to(y.device, y.dtype)
    return y, torch.autograd.grad(y, inputs, g)


def check(fn, inputs, storage=torch.float32, grads=True):
    """Triton (storage dtype) vs the reference in fp64: outputs and, for fp32, every input gradient."""
    ref_y, ref_g = run("reference", fn, [t.double() for t in inputs])
    if storage == torch.float32:
        y, g = run("triton", fn, inputs)
    else:
        with torch.no_grad(), editgan_fast.use_backend("triton", dtype=storage):
            y, g = fn(*inputs), ()
        assert y.dtype == storage
    assert_rel(y, ref_y, REL[storage], "output")
    if grads and storage == torch.float32:
        for i, (a, b) in enumerate(zip(g, ref_g)):
            assert_rel(a, b, REL[storage], f"gradient of input {i}")


def test_backend_accepts_these_tensors():
    from editgan_fast.ops import _triton_backend
    assert _triton_backend.unavailable_reason() is None
    assert DEVICE in _triton_backend.DEVICES
    assert set(_triton_backend.OPS) == {"bias_act", "upfirdn2d", "modulated_conv2d", "seg_head"}


# ------------------------------------------------------------------------------------------ bias_act
@pytest.mark.parametrize("act,clamp,dim,shape", [("lrelu", 0.6, 1, (2, 5, 9, 13)), ("linear", None, 1, (3, 4, 7)),
                                                 ("lrelu", None, 0, (6, 1000)), ("linear", 0.3, 2, (2, 3, 4, 5))])
def test_bias_act(act, clamp, dim, shape):
    x, b = randn(*shape), randn(shape[dim])
    check(lambda x, b: bias_act(x, b, dim=dim, act=act, clamp=clamp), [x, b])


def test_bias_act_without_bias_custom_gain_alpha():
    check(lambda x: bias_act(x, act="lrelu", alpha=0.1, gain=0.7), [randn(2, 3, 40)])


@pytest.mark.parametrize("storage", [torch.float16, torch.bfloat16])
def test_bias_act_low_precision_storage(storage):
    x, b = randn(2, 6, 8, 8), randn(6)
    check(lambda x, b: bias_act(x, b, act="lrelu", clamp=0.8), [x, b], storage=storage)


# ------------------------------------------------------------------------------------------ upfirdn2d
@pytest.mark.parametrize("up,down,padding,flip,gain,taps", [
    (2, 1, (2, 1, 2, 1), False, 4.0, [1, 3, 3, 1]),       # StyleGAN2's skip upsampler
    (1, 2, 1, False, 1.0, [1, 3, 3, 1]),                  # downsampler
    (1, 1, (1, 2, 0, -1), True, 1.5, [1, 2, 5]),          # uneven, cropped, flipped, odd taps
    (3, 2, (1, 3, 2, 0), False, 2.0, [1, 4, 6, 4, 1]),    # up and down at once
])
def test_upfirdn2d(up, down, padding, flip, gain, taps):
    f = setup_filter(taps, device=DEVICE)
    check(lambda x: upfirdn2d(x, f.to(x.dtype), up=up, down=down, padding=padding, flip_filter=flip, gain=gain),
          [randn(2, 3, 9, 11)])


def test_upfirdn2d_2d_filter():
    f = torch.rand(3, 4).to(DEVICE)
    check(lambda x: upfirdn2d(x, f.to(x.dtype), up=2, padding=(1, 2, 2, 1)), [randn(1, 2, 7, 6)])


@pytest.mark.parametrize("storage", [torch.float16, torch.bfloat16])
def test_upfirdn2d_low_precision_storage(storage):
    f = setup_filter([1, 3, 3, 1], device=DEVICE)
    check(lambda x: upfirdn2d(x, f.to(x.dtype), up=2, padding=(2, 1, 2, 1), gain=4), [randn(2, 3, 8, 8)],
          storage=storage)


# ------------------------------------------------------------------------------------------ modulated_conv2d
def conv_case(n=2, cin=40, cout=70, size=17, up=1, k=3):
    """Shapes span more than one tile in pixels (17x17 > 256), input channels (40 > 32) and Cout (70 > 64)."""
    f = setup_filter([1, 3, 3, 1], device=DEVICE)
    w = randn(cout, cin, k, k) / (cin * k * k) ** 0.5
    x, s = randn(n, cin, size, size), randn(n, cin) + 1
    noise, bias = randn(n, 1, size * up, size * up) * 0.3, randn(cout)
    return f, w, x, s, noise, bias


@pytest.mark.parametrize("up", [1, 2])
def test_modulated_conv2d_layer(up):
    # up=2: 4 output phases, and the input gradient's GEMM has 4 * Cout input channels: keep Cout small.
    f, w, x, s, noise, bias = conv_case(up=up, size=17 if up == 1 else 9, cout=70 if up == 1 else 20)

    def layer(x, s, noise, bias):
        return modulated_conv2d(x, w.to(x.dtype), s, up=up, resample_filter=f.to(x.dtype), noise=noise,
                                bias=bias, act="lrelu", clamp=1.0)
    check(layer, [x, s, noise, bias])


def test_modulated_conv2d_shared_noise_precomputed_wsq_no_clamp():
    f, w, x, s, _, bias = conv_case(n=3, cin=8, cout=16, size=10)
    noise = randn(1, 1, 10, 10)
    wsq = w.square().sum([2, 3])
    check(lambda x, s, noise: modulated_conv2d(x, w.to(x.dtype), s, wsq=wsq.to(x.dtype), noise=noise,
                                               bias=bias.to(x.dtype), act="lrelu"), [x, s, noise])


def check_torgb_with_fused_skip(cin):
    f, w, x, s, _, _ = conv_case(cin=cin, cout=3, size=16, k=1)
    skip, bias = randn(2, 3, 8, 8), randn(3)

    def torgb(x, s, skip, bias):
        return modulated_conv2d(x, w.to(x.dtype), s, demodulate=False, resample_filter=f.to(x.dtype), bias=bias,
                                skip=skip)
    check(torgb, [x, s, skip, bias])


def test_modulated_conv2d_torgb_with_fused_skip():
    check_torgb_with_fused_skip(cin=24)


@pytest.mark.parametrize("storage", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("up", [1, 2])
def test_modulated_conv2d_low_precision_storage(storage, up):
    f, w, x, s, noise, bias = conv_case(cin=16, cout=24, size=8, up=up)
    check(lambda x, s: modulated_conv2d(x, w.to(x.dtype), s, up=up, resample_filter=f.to(x.dtype),
                                        noise=noise.to(x.dtype), bias=bias.to(x.dtype), act="lrelu"),
          [x, s], storage=storage)


def test_modulated_conv2d_sees_in_place_weight_updates():
    """Packed weights are cached per frozen weight; an in-place change must invalidate the cache."""
    f, w, x, s, _, _ = conv_case(cin=8, cout=16, size=6, up=2)
    conv = lambda: modulated_conv2d(x, w, s, up=2, resample_filter=f)  # noqa: E731
    with editgan_fast.use_backend("triton"):
        first = conv()
        w.mul_(-0.5).add_(randn(*w.shape) * 0.1)
        second = conv()
    with editgan_fast.use_backend("reference"):
        expected = conv()
    assert_rel(second, expected, REL[torch.float32], "after the in-place update")
    assert not torch.allclose(first, second)


def _all_configs():
    """The interpreter's config, then every device candidate with a distinct tiling (warps and stages do not
    change what the interpreter computes); of the fp32-storage lists (K = 16) one nhwc tile unless FULL."""
    from editgan_fast.kernels import modulated_conv as mc
    configs = {c[:4]: c for key in sorted(mc.CANDIDATES) for c in mc.CANDIDATES[key]
               if FULL or key[1] == 2 or c[:4] == ("nhwc", 128, 64, 16)}
    configs.pop(mc.INTERPRETED[:4], None)
    return [mc.INTERPRETED, *configs.values()]


def _config_id(c):
    return f"{c.layout}{c.block_p}x{c.block_co}x{c.block_ci}"


@pytest.mark.parametrize("config", _all_configs(), ids=_config_id)
@pytest.mark.parametrize("up", [1, 2] if FULL else [2])
def test_modulated_conv2d_every_tuning_candidate(config, up, monkeypatch):
    """Each candidate the tuner may pick on an sm_80 or sm_90 device (its tile sizes, and the "nhwc" layout's
    pre-pass) as the only candidate, so a GPU run times nothing and runs it: a whole layer, forward and backward.
    Cin = 80 (whole 16-channel vectors, as the nhwc layout needs) spans two K blocks of 64 or three of 32 with a
    tail, five of 16; up=2 at 9x9 has 81 pixels per phase (two 64-pixel tiles) and an input-gradient GEMM over
    4 x 20 = 80 channels; up=1 (FULL) at 12x12 has 144 pixels (two 128-pixel tiles) and Cout = 80 (two
    64-channel tiles)."""
    from editgan_fast.kernels import modulated_conv as mc
    monkeypatch.setattr(mc, "candidates", lambda device, dtype: (config,))
    f, w, x, s, noise, bias = conv_case(cin=80, cout=80 if up == 1 else 20, size=12 if up == 1 else 9, up=up)

    def layer(x, s, noise, bias):
        return modulated_conv2d(x, w.to(x.dtype), s, up=up, resample_filter=f.to(x.dtype), noise=noise,
                                bias=bias, act="lrelu", clamp=1.0)
    check(layer, [x, s, noise, bias])


@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
def test_modulated_conv2d_torgb_every_layout(layout, monkeypatch):
    """ToRGB (1x1, 3 output channels: the channel tile shrinks to 16) in both layouts, with the fused skip; its
    input gradient has 3 input channels, too few for nhwc's 16-channel vectors, so it runs nchw."""
    from editgan_fast.kernels import modulated_conv as mc
    config = next(c for c in _all_configs() if c.layout == layout)
    monkeypatch.setattr(mc, "candidates", lambda device, dtype: (config,))
    check_torgb_with_fused_skip(cin=32)


def test_modulated_conv2d_config_resolves_per_layer():
    """What runs on a layer: shrunk channel tiles, fewer warps for a shrunk output tile, nhwc only with whole
    16-channel vectors."""
    from editgan_fast.kernels.modulated_conv import Config, resolve
    cfg = Config("nhwc", 128, 128, 64, 8, 3)
    assert resolve(cfg, 512, 512) == cfg
    assert resolve(cfg, 512, 3) == Config("nhwc", 128, 16, 64, 4, 3)
    assert resolve(cfg, 3, 512) == Config("nchw", 128, 128, 16, 8, 3)
    assert resolve(cfg, 40, 64) == Config("nchw", 128, 64, 64, 4, 3)


def test_modulated_conv2d_tuning_times_every_candidate_once_on_scratch_outputs(monkeypatch):
    """The tuner path of the launcher, with a fake clock in place of do_bench: every candidate is run (on
    scratch buffers: the style gradient accumulates with atomics, so a timed run writing the real ds would
    double it), the fastest is kept per shape class, and a second call times nothing."""
    from editgan_fast.kernels import autotune
    from editgan_fast.kernels import modulated_conv as mc
    configs = (mc.Config("nchw", 64, 32, 16, 4, 2), mc.Config("nhwc", 128, 16, 32, 4, 2))
    timed = []

    def bench(fn):
        fn()
        timed.append(fn)
        return {0: 2.0, 1: 1.0}[len(timed) % 2 == 0]  # the second candidate is the faster

    monkeypatch.setattr(autotune, "INTERPRET", False)
    monkeypatch.setattr(mc, "TUNER", autotune.Tuner(bench))
    monkeypatch.setattr(mc, "candidates", lambda device, dtype: configs)
    f, w, x, s, noise, bias = conv_case(cin=24, cout=20, size=6)

    def layer(x, s, noise, bias):
        return modulated_conv2d(x, w.to(x.dtype), s, noise=noise, bias=bias, act="lrelu")
    check(layer, [x, s, noise, bias])  # forward, then the input-gradient launch (ds by atomics): both tuned
    assert len(timed) == 4 and set(mc.TUNER.chosen().values()) == {configs[1]}
    check(layer, [x, s, noise, bias])
    assert len(timed) == 4, "a tuned shape class was timed again"


def test_tuner_falls_back_without_timing(monkeypatch):
    """Tuning off, a single candidate, or candidates that cannot run: the default, or a clear error."""
    from triton.runtime.errors import OutOfResources
    from editgan_fast.kernels import autotune
    monkeypatch.setattr(autotune, "INTERPRET", False)
    calls = []
    tuner = autotune.Tuner(lambda fn: calls.append(fn) or 1.0)
    monkeypatch.setenv("EDITGAN_FAST_AUTOTUNE", "0")
    assert tuner.choose("k", ("a", "b"), lambda c: None, "a") == "a" and not calls and not tuner.chosen()
    monkeypatch.delenv("EDITGAN_FAST_AUTOTUNE")
    assert tuner.choose("k", ("a",), lambda c: None, "a") == "a" and not calls

    def run(c):
        if c != "b":
            raise OutOfResources(300000, 232448, "shared memory")
    tuner = autotune.Tuner(lambda fn: fn() or 1.0)
    assert tuner.choose("k", ("a", "b"), run, "a") == "b"
    with pytest.raises(RuntimeError, match="no candidate configuration runs"):
        tuner.choose("k2", ("a", "c"), run, "a")


# ------------------------------------------------------------------------------------------ seg_head
def member(d, h1, h2, classes):
    r = torch.randn
    m = PixelMLP((r(h1, d) / d ** 0.5, r(h2, h1) / h1 ** 0.5, r(classes, h2) / h2 ** 0.5), (r(h1), r(h2), r(classes)),
                 (r(h1), r(h2)), (torch.rand(h1) + 0.5, torch.rand(h2) + 0.5), (r(h1), r(h2)), (r(h1), r(h2)))
    return m.to(DEVICE)


def seg_case():
    """Three maps at three resolutions (one at the output size), 20x20 output = 400 pixels (> one tile)."""
    feats = [randn(2, 6, 5, 5), randn(2, 5, 10, 10), randn(2, 3, 20, 20)]
    return feats, [member(14, 20, 9, 5) for _ in range(2)]


@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
@pytest.mark.parametrize("crop,with_region", [(None, False), ((3, 17, 0, 20), False), ((2, 19, 1, 18), True)])
def test_seg_head(mode, crop, with_region):
    feats, members = seg_case()
    box = crop or (0, 20, 0, 20)
    region = (torch.rand(box[1] - box[0], box[3] - box[2]) > 0.4).to(DEVICE) if with_region else None

    def head(*fs):
        ms = [m.to(fs[0].dtype) for m in members]
        return seg_head(list(fs), ms, 20, crop=crop, mode=mode, region=region)
    check(head, feats)


def test_seg_head_empty_region():
    feats, members = seg_case()
    region = torch.zeros(20, 20, dtype=torch.bool, device=DEVICE)
    with editgan_fast.use_backend("triton"):
        out = seg_head(feats, members, 20, region=region)
    assert out.shape == (2, 5, 0)


@pytest.mark.parametrize("storage", [torch.float16, torch.bfloat16])
def test_seg_head_low_precision_storage(storage):
    feats, members = seg_case()
    members = members[:1]  # also covers a single-member "ensemble"
    check(lambda *fs: seg_head(list(fs), [m.to(fs[0].dtype) for m in members], 20, crop=(3, 17, 0, 20)), feats,
          storage=storage)


def test_seg_head_in_bands(monkeypatch):
    """A budget small enough for three bands of output rows: each band projects only the source rows its taps
    reach (overlapping its neighbours'), and the feature gradients accumulate band after band."""
    from editgan_fast.ops import _triton_backend
    monkeypatch.setenv("EDITGAN_FAST_SEG_BUDGET_MB", "0.25")
    feats, members = seg_case()
    region = (torch.rand(17, 20) > 0.3).to(DEVICE)

    def head(*fs):
        return seg_head(list(fs), [m.to(fs[0].dtype) for m in members], 20, crop=(2, 19, 0, 20), region=region)
    check(head, feats)
    plans = [p for key, p in _triton_backend._plans.items() if key[5] == int(0.25 * 2**20)]
    assert plans and all(len(p.bands) >= 3 for p in plans)


def test_seg_head_band_buffer_fits_its_budget_at_real_sizes():
    """Host-side plans only (no kernel runs): EditGAN's car configuration and a 1024 px face model."""
    from editgan_fast.kernels.seg_head import Plan
    car = [(1, 512, 4, 4)] * 2 + [(1, c, r, r) for c, r in ((512, 8), (512, 16), (512, 32), (512, 64), (256, 128),
                                                            (128, 256), (64, 512)) for _ in (0, 1)]
    face = car + [(1, 32, 1024, 1024)] * 2
    for shapes, out, box in ((car, (512, 512), (64, 448, 0, 512)), (face, (1024, 1024), (0, 1024, 0, 1024))):
        for mode in (0, 1):
            plan = Plan(shapes, out, box, mode, nout=2560, budget=2**30, device="cpu")
            assert plan.max_rows * 2560 * 8 <= 2**30
            assert len(plan.groups) == len({s[2] for s in shapes})  # same-size maps merged
            assert [b[:2] for b in plan.bands] == list(zip([b[0] for b in plan.bands],
                                                           [b[0] for b in plan.bands[1:]] + [box[1]]))
            assert plan.bands[0][0] == box[0] and len(plan.bands) <= (box[1] - box[0]) // 32  # bands, not rows


@triton.jit
def _last_pixel_offsets(meta_ptr, out_ptr, NOUT, MODE: tl.constexpr):
    o = tl.full((2,), 1023, tl.int32)
    o00, o01, o10, o11, w00, w01, w10, w11 = seg_kernels._map_taps(meta_ptr, 0, tl.full((), 1, tl.int32), o, o, 1024,
                                                                  1024, NOUT, MODE)
    tl.store(out_ptr + tl.arange(0, 2), o00)


def test_seg_head_offsets_are_int64_at_1024_px():
    """The gather offset of the last pixel of the second image of a 1024 px map with E*H1 = 2560 columns is
    5.4e9 elements: the kernel helper must compute it without int32 wrap-around whatever the caller's index
    type (interpreted with numpy's fixed-width integers, a wrap shows)."""
    meta = torch.tensor([0, 1024, 1024, 0, 1024], dtype=torch.int32, device=DEVICE)
    out = torch.zeros(2, dtype=torch.int64, device=DEVICE)
    _last_pixel_offsets[(1,)](meta, out, 2560, MODE=seg_kernels.NEAREST)
    expected = ((1 * 1024 + 1023) * 1024 + 1023) * 2560
    assert expected > 2**32 and out.tolist() == [expected, expected]
