"""The cpu backend's torch.library custom ops (editgan_fast/ops/_library.py): opcheck per op and per `<op>_grad`
(schema, fake kernel, autograd registration, AOT dispatch), each op's value and gradients against the reference,
and its vmap rule against a loop; and the native kernels below them: opcheck and vmap rule of each."""
import pytest
import torch

from editgan_fast import backend
from editgan_fast.ops import _library
from editgan_fast.ops.bias_act import bias_act_reference
from editgan_fast.ops.modulated_conv2d import modulated_conv2d_reference
from editgan_fast.ops.seg_head import PixelMLP, seg_head_reference
from editgan_fast.ops.upfirdn2d import setup_filter, upfirdn2d_reference

pytestmark = pytest.mark.skipif(not backend.available("cpu"), reason="native extension not built")


def _rand(*shape, seed, dtype=torch.float64, requires_grad=False):
    t = torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)
    return t.requires_grad_(requires_grad)


def _opcheck(op, args):
    result = torch.library.opcheck(op, args)
    assert set(result.values()) == {"SUCCESS"}, result


def _detached(args):
    detach = lambda a: a.detach() if isinstance(a, torch.Tensor) else a
    return [[detach(t) for t in a] if isinstance(a, list) else detach(a) for a in args]


def _opcheck_grad(op, grad_out, args):
    """opcheck of a `<op>_grad` op (first-order only: its inputs do not require grad)."""
    _opcheck(op, (grad_out, *_detached(args)))


@pytest.fixture
def no_vmap_fallback():
    """vmap must use the registered rules: PyTorch's per-sample fallback loop raises instead."""
    torch._C._functorch._set_vmap_fallback_enabled(False)
    yield
    torch._C._functorch._set_vmap_fallback_enabled(True)


def _check_vmap(op, args, positions):
    """vmap of the op over two batches of the (tensor or tensor-list) arguments at `positions` equals two calls."""
    scale = lambda a, k: [t.detach() * (1 + k) for t in a] if isinstance(a, list) else a.detach() * (1 + k)
    calls = [[scale(a, k) if i in positions else a for i, a in enumerate(args)] for k in range(2)]
    stacked = [([torch.stack(ts) for ts in zip(*(c[i] for c in calls))] if isinstance(a, list) else
                torch.stack([c[i] for c in calls])) if i in positions else a for i, a in enumerate(args)]
    in_dims = tuple(([0] * len(a) if isinstance(a, list) else 0) if i in positions else None
                    for i, a in enumerate(args))
    with torch.no_grad():
        got = torch.func.vmap(op, in_dims=in_dims)(*stacked)
        torch.testing.assert_close(got, torch.stack([op(*c) for c in calls]))


def _check_nograd_twin(op, args, positions):
    """The op's inference twin, which a graph traced under no_grad records instead (no autograd kernel, so its
    calls skip torch.library's Python autograd hop): its own registration passes opcheck, it computes what the op
    computes, and it has the op's vmap rule."""
    with torch.no_grad():
        twin = _library.for_trace(op)
    assert twin is not op and "nograd" in str(twin)
    args = _detached(args)
    _opcheck(twin, args)
    torch.testing.assert_close(twin(*args), op(*args), atol=0, rtol=0)
    _check_vmap(twin, args, positions)


def _check_grads(op_out, ref_out, inputs, atol):
    """Output and input gradients of the custom op equal the reference's, for one random output gradient."""
    torch.testing.assert_close(op_out, ref_out.to(op_out.dtype), atol=atol, rtol=atol)
    g = _rand(*op_out.shape, seed=99, dtype=op_out.dtype)
    got = torch.autograd.grad(op_out, inputs, g)
    want = torch.autograd.grad(ref_out, inputs, g.to(ref_out.dtype))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=atol, rtol=atol)


@pytest.mark.parametrize("up,skip", [(1, False), (2, False), (1, True)])
def test_modulated_conv2d(up, skip, no_vmap_fallback):
    x = _rand(2, 5, 6, 6, seed=0, requires_grad=True)
    weight = _rand(4, 5, 3 if not skip else 1, 3 if not skip else 1, seed=1)
    styles = _rand(2, 5, seed=2, requires_grad=True)
    f = setup_filter([1, 3, 3, 1], dtype=torch.float64)
    noise = _rand(1, 1, 6 * up, 6 * up, seed=3)
    bias = _rand(4, seed=4)
    skip_t = _rand(2, 4, 3, 3, seed=5, requires_grad=True) if skip else None
    act = "linear" if skip else "lrelu"
    args = (x, weight, styles, f, None, None if skip else noise, bias, skip_t, not skip, up, act, 0.2,
            1.0 if skip else 2 ** 0.5, None, 1e-8, None)
    _opcheck(_library.modulated_conv2d, args)
    out = _library.modulated_conv2d(*args)
    _opcheck_grad(_library.modulated_conv2d_grad, _rand(*out.shape, seed=6), args)
    _check_vmap(_library.modulated_conv2d, args, positions=(0, 2, 7) if skip else (0, 2))  # x, styles, skip
    _check_nograd_twin(_library.modulated_conv2d, args, positions=(0, 2, 7) if skip else (0, 2))
    ref = modulated_conv2d_reference(x, weight, styles, demodulate=not skip, up=up, resample_filter=f,
                                     noise=None if skip else noise, bias=bias, act=act, skip=skip_t)
    _check_grads(out, ref, [t for t in (x, styles, skip_t) if t is not None], atol=1e-9)


def test_bias_act(no_vmap_fallback):
    x = _rand(2, 3, 4, 5, seed=0, requires_grad=True)
    b = _rand(3, seed=1)
    args = (x, b, 1, "lrelu", 0.2, 2 ** 0.5, 0.7, None)
    _opcheck(_library.bias_act, args)
    _opcheck_grad(_library.bias_act_grad, _rand(*x.shape, seed=2), args)
    _check_vmap(_library.bias_act, args, positions=(0,))
    _check_nograd_twin(_library.bias_act, args, positions=(0,))
    _check_grads(_library.bias_act(*args), bias_act_reference(x, b, act="lrelu", clamp=0.7), [x], atol=1e-12)


@pytest.mark.parametrize("up,down,padding", [(2, 1, [2, 1, 2, 1]), (1, 2, [1, 1, 1, 1])])
def test_upfirdn2d(up, down, padding, no_vmap_fallback):
    x = _rand(2, 3, 7, 6, seed=0, requires_grad=True)
    f = setup_filter([1, 3, 3, 1], dtype=torch.float64)
    args = (x, f, up, down, padding, False, float(up * up), None)
    _opcheck(_library.upfirdn2d, args)
    ref = upfirdn2d_reference(x, f, up=up, down=down, padding=padding, gain=up * up)
    _opcheck_grad(_library.upfirdn2d_grad, _rand(*ref.shape, seed=2), args)
    _check_vmap(_library.upfirdn2d, args, positions=(0,))
    _check_nograd_twin(_library.upfirdn2d, args, positions=(0,))
    _check_grads(_library.upfirdn2d(*args), ref, [x], atol=1e-12)


def _member(dim, classes, seed, widths=(8, 6), dtype=torch.float64):
    r = lambda *s, k: _rand(*s, seed=seed * 20 + k, dtype=dtype)
    h1, h2 = widths
    return PixelMLP(weights=(r(h1, dim, k=0), r(h2, h1, k=1), r(classes, h2, k=2)), biases=(r(h1, k=3), r(h2, k=4),
                    r(classes, k=5)), bn_mean=(r(h1, k=6), r(h2, k=7)), bn_var=(r(h1, k=8).abs() + 0.5,
                    r(h2, k=9).abs() + 0.5), bn_weight=(r(h1, k=10), r(h2, k=11)), bn_bias=(r(h1, k=12), r(h2, k=13)))


@pytest.mark.parametrize("region", [False, True])
def test_seg_head(region, no_vmap_fallback):
    features = [_rand(2, 3, 4, 4, seed=0, requires_grad=True), _rand(2, 2, 8, 8, seed=1, requires_grad=True)]
    members = [_member(5, 4, seed) for seed in (2, 3)]
    crop = [1, 7, 0, 8]
    mask = _rand(6, 8, seed=4) > 0 if region else None
    pixels = mask.flatten().nonzero()[:, 0] if region else None
    tensors, eps = _library.flatten_members(members)
    args = (features, tensors, eps, [8, 8], crop, "bilinear", pixels, None)
    _opcheck(_library.seg_head, args)
    ref = seg_head_reference(features, members, (8, 8), crop=tuple(crop), region=mask)
    out = _library.seg_head(*args)
    _opcheck_grad(_library.seg_head_grad, _rand(*out.shape, seed=6), args)
    _check_vmap(_library.seg_head, args, positions=(0,))
    _check_nograd_twin(_library.seg_head, args, positions=(0,))
    if not region:
        out, ref = out.flatten(2), ref.flatten(2)
    _check_grads(out, ref, features, atol=1e-9)


def test_seg_head_public_op_takes_indices_and_masks_alike():
    features = [_rand(1, 3, 4, 4, seed=0), _rand(1, 2, 8, 8, seed=1)]
    members = [_member(5, 4, seed=2)]
    mask = _rand(8, 8, seed=4) > 0
    from editgan_fast.ops import seg_head
    with backend.use_backend("cpu"):
        by_mask = seg_head(features, members, 8, region=mask)
        by_index = seg_head(features, members, 8, region=mask.flatten().nonzero()[:, 0])
    torch.testing.assert_close(by_index, by_mask)
    with pytest.raises(ValueError, match="sorted, unique"):
        seg_head(features, members, 8, region=torch.tensor([3, 2]))


# ------------------------------------------------------------------- the native kernels below the custom ops
NATIVE_OPS = ("epilogue_forward", "epilogue_backward", "fir_separable", "fir_upsample", "winograd_conv",
              "seg_head_forward", "seg_head_backward", "seg_head_infer")
NO_VMAP_RULE = {"seg_head_infer"}  # inference only: under torch.func the seg head takes seg_head_forward


class _Spy:
    """Stands for torch.ops.editgan_fast in the cpu backend's modules and records each kernel call's arguments."""

    def __init__(self, calls):
        self.calls = calls

    def __getattr__(self, name):
        op = getattr(torch.ops.editgan_fast, name)

        def call(*args):
            detach = lambda a: a.detach() if isinstance(a, torch.Tensor) else a
            detached = [[detach(t) for t in a] if isinstance(a, list) else detach(a) for a in args]
            self.calls.setdefault(name, []).append(detached)
            return op(*args)
        return call


@pytest.fixture(scope="module")
def native_calls():
    """Each native kernel's arguments as the cpu backend passes them: modulated_conv2d through the Winograd
    kernels (up 1 and 2) with gradients and fused without, the ToRGB epilogue with its skip, seg_head with a
    projected and a direct group, forward and backward, float64 and fp32 with packed weights; and
    fir_separable reading bf16."""
    from editgan_fast.ops import _cpu_layers, _cpu_seg, modulated_conv2d, seg_head
    calls = {}
    spy = _Spy(calls)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_cpu_layers, "_native", lambda: spy)
        mp.setattr(_cpu_seg, "_ops", lambda: spy)
        mp.setattr(_cpu_layers, "WINOGRAD_MIN_PIXELS", {1: 1, 2: 1})  # these 16 px layers take the Winograd kernels
        f = setup_filter([1, 3, 3, 1])
        x = _rand(1, 64, 16, 16, seed=0, dtype=torch.float32, requires_grad=True)
        styles = _rand(1, 64, seed=1, dtype=torch.float32, requires_grad=True)
        weight = _rand(64, 64, 3, 3, seed=2, dtype=torch.float32) / 24
        noise = _rand(1, 1, 32, 32, seed=3, dtype=torch.float32)
        with backend.use_backend("cpu"):
            for up in (1, 2):
                for grad in (True, False):
                    with torch.set_grad_enabled(grad):
                        out = modulated_conv2d(x, weight, styles, up=up, resample_filter=f,
                                               noise=noise[..., :16 * up, :16 * up], bias=weight[:, 0, 0, 0],
                                               act="lrelu")
                    if grad:
                        out.sum().backward()
            skip = _rand(1, 3, 8, 8, seed=4, dtype=torch.float32, requires_grad=True)
            rgb = modulated_conv2d(x, weight[:3, :, :1, :1], styles, demodulate=False, resample_filter=f, skip=skip)
            rgb.sum().backward()
            features = [_rand(1, 3, 4, 4, seed=5, requires_grad=True), _rand(1, 2, 8, 8, seed=6, requires_grad=True)]
            members = [_member(5, 4, seed) for seed in (2, 3)]
            seg_head(features, members, 8, region=_rand(8, 8, seed=7) > 1).sum().backward()  # a small region
            seg_head(features, members, 8).sum().backward()
            with torch.no_grad():
                seg_head(features, members, 8)  # the inference route
            # fp32 with widths a multiple of the packed kernel's block (16 or 32): the packed weights passed in.
            features = [f.detach().float().requires_grad_() for f in features]
            members = [_member(5, 4, seed, widths=(32, 32), dtype=torch.float32) for seed in (2, 3)]
            seg_head(features, members, 8).sum().backward()
            with torch.no_grad():
                seg_head(features, members, 8)
        spy.fir_separable(_rand(1, 2, 6, 5, seed=8, dtype=torch.bfloat16), f, 2, 1)
    return calls


@pytest.mark.parametrize("name", NATIVE_OPS)
def test_native_op_fake_kernel_and_vmap_rule(native_calls, name, no_vmap_fallback):
    """opcheck per captured call (schema, fake kernel against the real one, AOT dispatch), and vmap over a batch
    of two calls equals the calls one by one."""
    calls = native_calls[name]
    assert calls, f"the cpu backend made no {name} call"
    op = getattr(torch.ops.editgan_fast, name).default
    for args in calls:
        _opcheck(op, tuple(args))
    if name.startswith("seg_head_"):  # the fp32 calls pass both packed weights (w1d_pack, w2_pack)
        assert any(all(isinstance(a, torch.Tensor) for a in args[-2:]) for args in calls)
    if name in NO_VMAP_RULE:
        return
    args = calls[0]
    batched = [torch.stack([a, 2 * a]) if i == 0 and isinstance(a, torch.Tensor) else a for i, a in enumerate(args)]
    if name == "seg_head_forward":
        batched[0] = [torch.stack([s, 2 * s]) for s in args[0]]
    in_dims = tuple([0] * len(args[0]) if i == 0 and name == "seg_head_forward" else 0 if i == 0 else None
                    for i in range(len(args)))
    got = torch.func.vmap(lambda *a: op(*a), in_dims=in_dims)(*batched)
    for k in range(2):
        one = [[s[k] for s in a] if i == 0 and name == "seg_head_forward" else a[k] if i == 0 else a
               for i, a in enumerate(batched)]
        want = op(*one)
        for g, w in zip(got if isinstance(got, (list, tuple)) else [got], want if isinstance(want, (list, tuple))
                        else [want]):
            torch.testing.assert_close(g[k], w)
