"""seg_head on the `cpu` backend: the native tiled kernel (csrc/cpu/seg_head.cpp) behind an autograd Function.

Plan (see the C++ file for the per-tile work):
1. Fold each member's BatchNorms into the next Linear (in float64, then cast) and stack the members: W1 rows
   [E*H1, D], the second and third layers as [E, H2, H1] / [E, C, H2] (once per ensemble).
2. The requested pixels (the crop, or the region's pixels) as a row-major list; the source window of each map
   is only the rows/cols their taps read.
3. Maps of one resolution share their taps, so they form one group. A group is *projected* (W1's columns
   applied at source resolution, E*H1 channels stored, bf16 in the bf16 mode) when that is cheaper than
   *direct* (raw channels resampled per tile and projected per tile), which wins for maps with at least as
   many window pixels as requested pixels -- e.g. maps already at output size, where the projection IS the
   full-resolution work, or a small region.
4. Output rows are processed in bands whose projections fit BAND_BYTES (car configuration, fp32, no autograd:
   ~300 MiB peak extra measured, ~830 MiB in one piece, ~14 GB for the reference's stack).
Weights are frozen: only gradients w.r.t. the feature maps are computed. The layers the kernel runs in its packed
linear+ReLU kernel get their packed weights from here, built once per ensemble and kernel block size
(_packed_weights), not on every call.

Inference (no autograd graph, fp32/fp64 storage, one image's projections under LAZY_BYTES -- the real-time path:
`apply`, the service, batch jobs) takes a shorter route, `seg_head_infer`: the kernel projects each image itself
right before that image's tiles, so a batch never stores every image's projections (16 images of the bundled
model: 90 MB, past the L3 cache, written and read back from memory) and threads take whole images (no barrier
per image). The plan of a full crop (pixel list, groups, stacked weights per group) is built once per
(ensemble, shapes, crop, mode) and reused: a frame does no planning.

bf16 mode (`use_backend("cpu", dtype=torch.bfloat16)`): the projections are stored in bf16 (half the memory and
gather traffic); the tiles' arithmetic is fp32. The projections' products run as EDITGAN_FAST_BF16_PRODUCTS says
(ops/_cpu_isa.py): natively in bf16 (oneDNN, fp32 accumulation, one rounding of the sum over the group's maps),
and so do the per-tile products of the second layer (the kernel's bf16_products), where the CPU has native
bf16; else in fp32 (oneDNN emulates bf16 GEMMs on AVX2 at ~0.3 GFLOP/s). Measured error,
EditGAN car configuration (random members, bench/cases_seg.py, fp32 products): max |bf16 - fp32| = 1.8e-3 of the
largest logit; the tests bound it by 2e-2 against the float64 reference.
"""
from __future__ import annotations

import weakref

import torch
import torch.nn.functional as F

from .. import backend
from . import _function, _vmap
from ._cpu_isa import native_bf16_products
from .seg_head import crop_box

_MODE = {"bilinear": 0, "nearest": 1}
_PROJECTION_CHUNK_BYTES = 64 * 2**20  # fp32 temporary per projection step, bounds the peak in bf16 mode
BAND_BYTES = 256 * 2**20  # projections alive at once (per band of output rows), bounds the peak memory
TILE_PIXELS = 0  # pixels per tile; 0 lets the kernel size tiles for L2 (tests set tiny tiles)
# fp32 layers whose width is a multiple of the kernel's block run in its packed linear+ReLU kernel; False sends
# them to BLAS (the path of other widths), so tests cover both on one shape and benchmarks compare them.
PACKED = True
# Bilinear projected groups gather separably, per output row (the kernel's separable_run); False: 4 taps per
# pixel from the projections. For A/B benchmarks and tests of both paths.
SEPARABLE = True


def _ops():
    return torch.ops.editgan_fast


class _StackedMembers:
    """All ensemble members' folded layers, stacked so the kernel runs them as batched GEMMs."""

    def __init__(self, members, dtype):
        folded = [m.to(torch.float64).folded() for m in members]
        shapes = {tuple(tuple(w.shape) for w, _ in f) for f in folded}
        if len(shapes) != 1:
            raise ValueError(f"the cpu seg_head needs ensemble members of one architecture, got layer shapes "
                             f"{sorted(shapes)}")
        cast = lambda t: t.to(dtype).contiguous()
        self.w1 = cast(torch.cat([f[0][0] for f in folded]))          # [E*H1, D]
        self.b1 = cast(torch.cat([f[0][1] for f in folded]))          # [E*H1]
        self.w2 = cast(torch.stack([f[1][0] for f in folded]))        # [E, H2, H1]
        self.b2 = cast(torch.stack([f[1][1] for f in folded]))        # [E, H2]
        self.w3 = cast(torch.stack([f[2][0] for f in folded]))        # [E, C, H2]
        self.b3 = cast(torch.stack([f[2][1] for f in folded]))        # [E, C]
        self.num_classes = self.w3.shape[1]
        self.weights = {}  # derived weights (a group's W1 columns, packed layers) by layout, see _cached

    def mlp_tail(self):
        return self.b1, self.w2, self.b2, self.w3, self.b3


def _pixel_list(box, region):
    """Row-major (y, x) output coordinates of the requested pixels, int32."""
    y0, y1, x0, x1 = box
    if region is None:
        ys = torch.arange(y0, y1, dtype=torch.int32).repeat_interleave(x1 - x0)
        xs = torch.arange(x0, x1, dtype=torch.int32).repeat(y1 - y0)
    else:
        ry, rx = region.cpu().nonzero(as_tuple=True)  # row-major, as the reference's boolean indexing
        ys, xs = (ry + y0).to(torch.int32), (rx + x0).to(torch.int32)
    return ys.contiguous(), xs.contiguous()


class _Group:
    """Feature maps of one resolution: their indices, W1 columns and source window."""

    def __init__(self, size, maps, col_slices, window):
        self.size, self.maps, self.col_slices, self.window = size, maps, col_slices, window
        self.direct = False

    @property
    def channels(self):
        return sum(s.stop - s.start for s in self.col_slices)


def _plan_groups(features, out_size, mode, ys, xs, eh1):
    """Group the maps by resolution, crop each to the window its taps read, pick projected or direct."""
    groups, offset = {}, 0
    for i, f in enumerate(features):
        c, size = f.shape[1], tuple(f.shape[-2:])
        if size not in groups:
            groups[size] = _Group(size, [], [], None)
        groups[size].maps.append(i)
        groups[size].col_slices.append(slice(offset, offset + c))
        offset += c
    npix = ys.numel()
    oy0, oy1 = int(ys.min()), int(ys.max()) + 1
    ox0, ox1 = int(xs.min()), int(xs.max()) + 1
    taps = 4 if mode == "bilinear" else 1
    for g in groups.values():
        r0, r1 = _ops().seg_head_source_range(g.size[0], out_size[0], oy0, oy1, _MODE[mode])
        c0, c1 = _ops().seg_head_source_range(g.size[1], out_size[1], ox0, ox1, _MODE[mode])
        g.window = (r0, r1 + 1, c0, c1 + 1)
        window_px = (r1 + 1 - r0) * (c1 + 1 - c0)
        projected_cost = window_px * g.channels * eh1 + npix * eh1 * taps
        direct_cost = npix * g.channels * eh1 + npix * g.channels * taps
        g.direct = direct_cost <= projected_cost
    return list(groups.values())


def _window(f, g):
    r0, r1, c0, c1 = g.window
    return f[:, :, r0:r1, c0:c1]


def _direct_source(features, g, dtype):
    """A direct group's raw window, channel-last [N, rows, cols, C_g], written map by map (one copy)."""
    r0, r1, c0, c1 = g.window
    out = torch.empty((features[0].shape[0], r1 - r0, c1 - c0, g.channels), dtype=dtype)
    for i, start, s in zip(g.maps, _starts(g.col_slices), g.col_slices):
        out[..., start:start + (s.stop - s.start)] = _window(features[i], g).permute(0, 2, 3, 1)
    return out


def _cached(stack, key, build):
    """A weight derived from the stacked members, built once per ensemble (whatever the batch or crop)."""
    if key not in stack.weights:
        stack.weights[key] = build()
    return stack.weights[key]


def _cached_weight(stack, kind, g, build):
    """A group's W1 columns in some layout."""
    return _cached(stack, (kind, tuple((s.start, s.stop) for s in g.col_slices)), build)


def _group_weight(stack, g):
    """[E*H1, C_g]: the group's columns of W1."""
    return _cached_weight(stack, "direct", g,
                          lambda: torch.cat([stack.w1[:, s] for s in g.col_slices], dim=1).contiguous())


def _projection_weight(stack, g):
    """[C_g, E*H1]: the group's W1 columns transposed, contiguous, as the inference kernel projects with them."""
    return _cached_weight(stack, "projection", g, lambda: _group_weight(stack, g).t().contiguous())


def _pack(w, nb):
    """W [..., N, K] -> [..., N / nb, K, nb]: the packed kernel's layout (blocks of nb outputs, K-major)."""
    *lead, n, k = w.shape
    return w.reshape(*lead, n // nb, nb, k).transpose(-1, -2).contiguous()


def _packed_weights(stack, groups, bf16_products):
    """(w1d_pack, w2_pack) for the kernel: the layers that run in its packed linear+ReLU kernel (fp32, width a
    multiple of its block), packed once per ensemble instead of on every call. The block depends on the ISA
    selected at run time (set_cpu_isa), so it is part of the cache key."""
    if not PACKED or stack.b1.dtype != torch.float32:
        return None, None
    nb = _ops().seg_head_packed_block()
    e, h2, h1 = stack.w2.shape
    direct = [g for g in groups if g.direct]
    w1d = None
    if direct and e * h1 % nb == 0:  # the direct groups' W1 columns side by side, in group order
        key = ("w1d_pack", nb, tuple((s.start, s.stop) for g in direct for s in g.col_slices))
        w1d = _cached(stack, key, lambda: _pack(torch.cat([_group_weight(stack, g) for g in direct], 1), nb))
    w2 = None
    if h2 % nb == 0 and not bf16_products:  # bf16 products run the second layer in oneDNN instead
        w2 = _cached(stack, ("w2_pack", nb), lambda: _pack(stack.w2, nb))
    return w1d, w2


def _project(features, g, stack, dtype, storage):
    """P = sum_m x_m^T W1_m^T at source resolution, [N, rows, cols, E*H1]: one GEMM per map and band of rows,
    reading the channels-first maps as transposed matrices (no copies), in bands so that the fp32 temporary
    stays small when P is stored in bf16."""
    r0, r1, c0, c1 = g.window
    rows, cols, eh1 = r1 - r0, c1 - c0, stack.w1.shape[0]
    n = features[0].shape[0]
    out = torch.empty((n, rows, cols, eh1), dtype=storage)
    if storage == torch.bfloat16 and native_bf16_products():
        return _project_bf16(features, g, stack, out)
    weights = [stack.w1[:, s].t() for s in g.col_slices]  # [C_m, E*H1] views
    step = max(1, _PROJECTION_CHUNK_BYTES // (cols * eh1 * 4))
    for b in range(n):
        for r in range(0, rows, step):
            k = min(step, rows - r)
            dest = out[b, r:r + k].view(k * cols, eh1)
            acc = dest if storage == dtype else torch.empty((k * cols, eh1), dtype=dtype)
            for j, (i, w) in enumerate(zip(g.maps, weights)):
                x = features[i][b, :, r0 + r:r0 + r + k, c0:c1].to(dtype).reshape(-1, k * cols).t()
                if j == 0:
                    torch.mm(x, w, out=acc)
                else:
                    acc.addmm_(x, w)
            if acc is not dest:
                dest.copy_(acc)
    return out


def _project_bf16(features, g, stack, out):
    """The projections as bf16 products with fp32 accumulation (oneDNN): the group's maps stacked along the
    channels, one GEMM per image and band of rows written straight into the bf16 result."""
    r0, r1, c0, c1 = g.window
    rows, cols, eh1 = out.shape[1:]
    weight = _group_weight(stack, g).to(torch.bfloat16).t()  # [C_g, E*H1]
    step = max(1, _PROJECTION_CHUNK_BYTES // (cols * g.channels * 2))
    for b in range(out.shape[0]):
        for r in range(0, rows, step):
            k = min(step, rows - r)
            x = torch.cat([features[i][b, :, r0 + r:r0 + r + k, c0:c1].to(torch.bfloat16) for i in g.maps])
            torch.mm(x.reshape(g.channels, k * cols).t(), weight, out=out[b, r:r + k].view(k * cols, eh1))
    return out


class _SegHeadFunction(torch.autograd.Function):
    """Returns (logits, *sources, *direct weights): the kernel's inputs built from the features come out as
    non-differentiable outputs so that setup_context saves them for the backward (the form torch.func needs)."""

    @staticmethod
    def forward(plan, *features):
        stack, groups, ys, xs, out_size, mode, dtype, storage = plan
        n = features[0].shape[0]
        if ys.numel() == 0:
            return (features[0].new_zeros((n, stack.num_classes, 0), dtype=dtype),)
        sources, direct = [], []
        for g in groups:
            if g.direct:
                sources.append(_direct_source(features, g, dtype))
                direct.append(_group_weight(stack, g))
            else:
                sources.append(_project(features, g, stack, dtype, storage))
                direct.append(torch.empty(0, dtype=dtype))
        args = _kernel_args(groups, sources, direct, ys, xs, out_size, mode, stack, _bf16_products(storage))
        return (_ops().seg_head_forward(*args), *sources, *direct)

    @staticmethod
    def setup_context(ctx, inputs, output):
        plan, *features = inputs
        ctx.plan, ctx.shapes, ctx.dtypes = plan, [f.shape for f in features], [f.dtype for f in features]
        ctx.mark_non_differentiable(*output[1:])
        ctx.set_materialize_grads(False)  # no zero gradients of the (large) sources
        ctx.save_for_backward(*output[1:])

    @staticmethod
    def backward(ctx, grad_out, *_):
        stack, groups, ys, xs, out_size, mode, dtype, storage = ctx.plan
        grads = [None] * len(ctx.shapes)
        if grad_out is None:  # grads are not materialized: the logits got none either
            return (None, *grads)
        if ys.numel() == 0:
            grads = [grad_out.new_zeros(s, dtype=d) for s, d in zip(ctx.shapes, ctx.dtypes)]
            return (None, *grads)
        saved = ctx.saved_tensors
        args = _kernel_args(groups, list(saved[:len(groups)]), list(saved[len(groups):]), ys, xs, out_size, mode,
                            stack, _bf16_products(storage))
        source_grads = _ops().seg_head_backward(grad_out.to(dtype).contiguous(), *args)
        for g, gs in zip(groups, source_grads):
            r0, r1, c0, c1 = g.window
            for i, s, start in zip(g.maps, g.col_slices, _starts(g.col_slices)):
                if not ctx.needs_input_grad[1 + i]:
                    continue
                if g.direct:
                    gm = gs[..., start:start + (s.stop - s.start)]
                else:
                    gm = torch.matmul(gs, stack.w1[:, s])  # dL/dx_m = dL/dP W1_m, at source resolution
                h, w = ctx.shapes[i][2:]  # zero outside the window (padded, not written into: vmap-friendly)
                grads[i] = F.pad(gm.permute(0, 3, 1, 2), (c0, w - c1, r0, h - r1)).to(
                    ctx.dtypes[i], memory_format=torch.contiguous_format)  # NCHW, as the features
        return (None, *grads)

    @staticmethod
    def vmap(info, in_dims, plan, *features):
        features, n = _vmap.fold(info, in_dims[1:], features, range(len(features)), "the cpu seg_head")
        out = _SegHeadFunction.apply(plan, *features)
        sources = len(out) // 2  # as many sources (batched) as direct weights (shared)
        return ((*(_vmap.unfold(info, t, n) for t in out[:1 + sources]), *out[1 + sources:]),
                (0,) * (1 + sources) + (None,) * sources)


def _bf16_products(storage):
    return storage == torch.bfloat16 and native_bf16_products()


def _starts(col_slices):
    out, at = [], 0
    for s in col_slices:
        out.append(at)
        at += s.stop - s.start
    return out


def _group_geometry(groups):
    """(source_sizes, source_offsets) as the kernels take them: each group's map size and window origin."""
    return [v for g in groups for v in g.size], [v for g in groups for v in (g.window[0], g.window[2])]


def _kernel_args(groups, sources, direct, ys, xs, out_size, mode, stack, bf16_products):
    return (sources, direct, *_group_geometry(groups), ys, xs, out_size[0], out_size[1], _MODE[mode],
            *stack.mlp_tail(), TILE_PIXELS, bf16_products, PACKED, SEPARABLE,
            *_packed_weights(stack, groups, bf16_products))


def _bands(features, out_size, mode, ys, xs, eh1, storage):
    """Split the row-major pixel list into bands of output rows so that one band's projections stay under
    BAND_BYTES: without autograd only one band's projections are alive at a time (with autograd each band
    keeps its own for backward, as one band would). Rows on a band edge are projected by both bands."""
    if ys.numel() == 0:
        return [(ys, xs)]
    groups = _plan_groups(features, out_size, mode, ys, xs, eh1)
    total = sum((g.window[1] - g.window[0]) * (g.window[3] - g.window[2]) * eh1 * storage.itemsize
                for g in groups if not g.direct)
    rows = torch.unique_consecutive(ys)
    count = min(len(rows), max(1, -(-total // BAND_BYTES)))
    if count == 1:
        return [(ys, xs)]
    edges = torch.searchsorted(ys, rows[torch.linspace(0, len(rows), count + 1).long()[1:-1]])
    bounds = [0, *edges.tolist(), ys.numel()]
    return [(ys[a:b], xs[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]


_stack_cache: dict = {}


def _stacked(members, dtype):
    """Members are frozen: fold and stack them once per ensemble (an `apply` loop reuses one segmenter)."""
    key = (tuple(id(m) for m in members), dtype)
    hit = _stack_cache.get(key)
    if hit is None or any(a is not b for a, b in zip(hit[0], members)):
        _stack_cache.clear()  # one ensemble at a time: the stacked weights are as large as the members
        hit = _stack_cache[key] = (list(members), _StackedMembers(members, dtype))
    return hit[1]


LAZY_BYTES = 64 * 2**20  # one image's projections (compute dtype) a thread may hold on the inference route
_PLAN_CACHE_SIZE = 8
_plan_cache: dict = {}


def _make_plan(features, out_size, mode, box, region, eh1, storage):
    """(ys, xs, bands: [(ys, xs, groups)] for the autograd route, groups of all pixels for the inference route)."""
    ys, xs = _pixel_list(box, region)
    if ys.numel() == 0:
        return ys, xs, [(ys, xs, [])], []
    bands = [(bys, bxs, _plan_groups(features, out_size, mode, bys, bxs, eh1))
             for bys, bxs in _bands(features, out_size, mode, ys, xs, eh1, storage)]
    whole = bands[0][2] if len(bands) == 1 else _plan_groups(features, out_size, mode, ys, xs, eh1)
    return ys, xs, bands, whole


def _plan(stack, features, out_size, mode, box, region, eh1, storage):
    """The plan of a full crop is cached (the same model and shapes come every frame; plans are small: pixel
    lists and windows, the weights live with the stack); a region's is not."""
    if region is not None:
        return _make_plan(features, out_size, mode, box, region, eh1, storage)
    key = (id(stack), tuple((tuple(f.shape), f.dtype) for f in features), out_size, mode, box, storage)
    hit = _plan_cache.get(key)
    if hit is None or hit[0]() is not stack:  # a weak reference: a plan never keeps an old ensemble alive
        if len(_plan_cache) >= _PLAN_CACHE_SIZE:
            _plan_cache.pop(next(iter(_plan_cache)))
        hit = _plan_cache[key] = (weakref.ref(stack), _make_plan(features, out_size, mode, box, None, eh1,
                                                                 storage))
    return hit[1]


def _lazy_fits(groups, eh1, dtype):
    per_image = sum((g.window[1] - g.window[0]) * (g.window[3] - g.window[2]) for g in groups if not g.direct)
    return per_image * eh1 * dtype.itemsize <= LAZY_BYTES


def _infer(features, stack, groups, ys, xs, out_size, mode, dtype):
    """The inference route (module docstring): projected groups handed over as their maps' windows."""
    sources, direct, maps, map_groups, weights = [], [], [], [], []
    empty = torch.empty(0, dtype=dtype)
    for k, g in enumerate(groups):
        if g.direct:
            sources.append(_direct_source(features, g, dtype))
            direct.append(_group_weight(stack, g))
            weights.append(empty)
            continue
        sources.append(empty)
        direct.append(empty)
        weights.append(_projection_weight(stack, g))
        for i in g.maps:
            maps.append(_window(features[i], g).to(dtype))
            map_groups.append(k)
    return _ops().seg_head_infer(sources, direct, maps, map_groups, weights, *_group_geometry(groups), ys, xs,
                                 out_size[0], out_size[1], _MODE[mode], *stack.mlp_tail(), TILE_PIXELS, PACKED,
                                 SEPARABLE, *_packed_weights(stack, groups, False))


def seg_head_cpu(features, members, out_size, crop=None, mode="bilinear", region=None):
    """The reference's signature and result; never builds the [N, D, h, w] stack."""
    in_dtype = features[0].dtype
    dtype = torch.float64 if in_dtype == torch.float64 else torch.float32
    mode_dtype = backend.compute_dtype(dtype)
    if mode_dtype == torch.float16:
        raise ValueError("the cpu backend has no float16 mode (no fast fp16 on CPU); use torch.float32 or "
                         "torch.bfloat16")
    # bf16 mode: projections stored in bf16, all arithmetic in fp32 (this CPU family's bf16 GEMMs are no faster).
    storage = torch.bfloat16 if (mode_dtype == torch.bfloat16 and dtype == torch.float32) else dtype
    out_size = tuple(out_size)
    box = crop_box(out_size, crop)
    stack = _stacked(members, dtype)
    eh1 = stack.w1.shape[0]
    ys, xs, bands, whole = _plan(stack, features, out_size, mode, box, region, eh1, storage)
    if ys.numel() and storage == dtype and not _function.needs_graph(features) and _lazy_fits(whole, eh1, dtype):
        logits = _infer(features, stack, whole, ys, xs, out_size, mode, dtype)
    else:
        pieces = [_SegHeadFunction.apply((stack, groups, bys, bxs, out_size, mode, dtype, storage), *features)[0]
                  for bys, bxs, groups in bands]
        logits = pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=2)
    if region is None:
        logits = logits.reshape(logits.shape[0], logits.shape[1], box[1] - box[0], box[3] - box[2])
    return logits.to(in_dtype)


OPS = {"seg_head": seg_head_cpu}
