"""The `triton` backend: the kernels in kernels/ behind autograd Functions with the reference signatures.

Runs on CUDA tensors. Under TRITON_INTERPRET=1 (Triton's CPU interpreter, how the tests run these kernels on
a machine without a GPU) it also accepts CPU tensors. The storage dtype is the backend's compute dtype
(`use_backend("triton", dtype=torch.bfloat16)`) or else the input's; accumulation is always fp32. Weights
(modulated conv, segmentation members) are frozen: no gradient is returned for them.

Sync-free: everything derived from frozen tensors or from shapes (packed conv weights, filter kernels, packed
members, the seg head's band plan and table, a region's pixel list) is built once and cached (`DerivedCache`), so a
warm `apply` or refinement step makes no device->host copy (.item, .tolist, nonzero, .cpu) and can be captured
in a CUDA graph; tests/test_triton_sync_free.py checks that. The modulated conv's launch configuration is
chosen on a CUDA device by timing its candidates on the first call per shape class (kernels/autotune.py): that
first call synchronizes and belongs to the warm-up, like the caches above; never during graph capture.
"""
import importlib.util

import torch

from ._derived import DerivedCache, member_tensors



def _interpreting():
    if importlib.util.find_spec("triton") is None:
        return False
    import triton
    return bool(triton.knobs.runtime.interpret)


_INTERPRET = _interpreting()
DEVICES = {"cuda", "cpu"} if _INTERPRET else {"cuda"}


def unavailable_reason():
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed"
    if not _INTERPRET and not torch.cuda.is_available():
        return "no CUDA device (set TRITON_INTERPRET=1 to run the kernels on CPU tensors, slowly)"
    return None


OPS = {}
if unavailable_reason() is None:
    from editgan_fast.kernels import bias_act as _ba
    from editgan_fast.kernels import modulated_conv as _mc
    from editgan_fast.kernels import seg_head as _sh
    from editgan_fast.kernels import upfirdn2d as _ud

    from .. import backend
    from .bias_act import _defaults
    from .modulated_conv2d import skip_padding, up_blur_padding
    from .upfirdn2d import output_size, parse_padding

    def _storage(x):
        return backend.current().dtype or x.dtype

    def _dot_fp32(dtype):
        """fp32 storage multiplies in fp32 (tf32x3 on tensor cores, ~fp32 accuracy); the interpreter gets fp32
        operands for every storage dtype, because its bf16/fp16 tl.dot is wrong."""
        return dtype == torch.float32 or _INTERPRET

    # ---------------------------------------------------------------- bias_act
    class _BiasAct(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, b, dim, act, alpha, gain, clamp):
            dtype = _storage(x)
            x = x.to(dtype).contiguous()
            b = b.contiguous() if b is not None else None
            ctx.save_for_backward(x, b)
            ctx.args = (dim, act, alpha, gain, clamp)
            return _ba.launch(x, b, dim, act, alpha, gain, clamp)

        @staticmethod
        def backward(ctx, gy):
            x, b = ctx.saved_tensors
            dim = ctx.args[0]
            gx = _ba.launch(x, b, *ctx.args, grad_y=gy.to(x.dtype).contiguous())
            gb = None
            if b is not None and ctx.needs_input_grad[1]:
                gb = gx.float().sum([i for i in range(gx.ndim) if i != dim]).to(b.dtype)
            return gx, gb, None, None, None, None, None

    def bias_act(x, b=None, dim=1, act="linear", alpha=None, gain=None, clamp=None):
        alpha, gain = _defaults(act, alpha, gain)
        return _BiasAct.apply(x, b, dim, act, alpha, gain, clamp)

    # ---------------------------------------------------------------- upfirdn2d
    def _upfirdn(x, c, up, down, padding, out_hw):
        return _ud.launch(x.contiguous(), c, up, down, padding, out_hw)

    class _Upfirdn2d(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, f, up, down, padding, flip_filter, gain):
            c = _ud.correlation_kernel(f, flip_filter, gain)
            fh, fw = c.shape
            out_hw = output_size(x.shape[2], x.shape[3], fh, fw, up, down, padding)
            ctx.save_for_backward(f)
            ctx.args = (x.shape, up, down, padding, flip_filter, gain, out_hw)
            return _upfirdn(x.to(_storage(x)), c, up, down, padding, out_hw)

        @staticmethod
        def backward(ctx, gy):
            (f,) = ctx.saved_tensors
            shape, up, down, padding, flip_filter, gain, (oh, ow) = ctx.args
            c = _ud.correlation_kernel(f, not flip_filter, gain)
            p = _ud.backward_padding(shape[2], shape[3], oh, ow, c.shape[0], c.shape[1], up, down, padding)
            gx = _upfirdn(gy, c, down, up, p, (shape[2], shape[3]))
            return gx, None, None, None, None, None, None

    def upfirdn2d(x, f, up=1, down=1, padding=0, flip_filter=False, gain=1.0):
        return _Upfirdn2d.apply(x, f, up, down, parse_padding(padding), flip_filter, float(gain))

    # ---------------------------------------------------------------- modulated_conv2d
    _packed_weights = DerivedCache()  # (weight[, filter]) -> forward and input-gradient weights
    _skip_kernels = DerivedCache()    # (filter,) -> (ToRGB's skip upsampling kernel, its leading padding)

    def _packed(weight, up, resample_filter, dtype):
        """The layer's packed weights; up=2 folds the blur filter in, so the filter is part of the key."""
        def build():
            pad0 = up_blur_padding(weight.shape[-1], resample_filter.shape[0])[0] if up == 2 else 0
            return _mc.pack_weights(weight.detach(), up, resample_filter, pad0, dtype)
        tensors = (weight, resample_filter) if up == 2 else (weight,)
        return _packed_weights.get(tensors, (up, dtype, tuple(weight.shape)), build)

    def _skip_kernel(resample_filter):
        return _skip_kernels.get((resample_filter,), (), lambda: (
            _ud.correlation_kernel(resample_filter.detach(), False, 4.0), skip_padding(resample_filter.shape[0])[0]))

    class _ModulatedConv2d(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, styles, noise, bias, skip, weight, resample_filter, wsq, demodulate, up, act, alpha,
                    gain, clamp, eps):
            dtype = _storage(x)
            packed = _packed(weight, up, resample_filter, dtype)
            s = styles.float().contiguous()
            d = None
            if demodulate:
                wsq = (weight.detach().float().square().sum([2, 3]) if wsq is None else wsq.float())
                d = torch.rsqrt(s.square() @ wsq.t() + eps).contiguous()
            skip_kernel, skip_pad0 = None, 0
            if skip is not None:
                skip_kernel, skip_pad0 = _skip_kernel(resample_filter)
                skip = skip.to(dtype).contiguous()
            xs = x.to(dtype).contiguous()
            need_grad = any(ctx.needs_input_grad[:5])
            out, pre, _ = _mc.launch(
                xs, packed, up, in_scale=s, out_scale=d, noise=noise, bias=bias, act=act, alpha=alpha, gain=gain,
                clamp=clamp, skip=skip, skip_kernel=skip_kernel, skip_pad0=skip_pad0, save_pre=need_grad,
                dot_fp32=_dot_fp32(dtype))
            ctx.save_for_backward(xs, s, d, pre, noise, bias, wsq if demodulate else None, resample_filter)
            ctx.args = (packed, up, act, alpha, gain, clamp, skip is not None, x.dtype, styles.dtype)
            return out

        @staticmethod
        def backward(ctx, g):
            xs, s, d, pre, noise, bias, wsq, resample_filter = ctx.saved_tensors
            packed, up, act, alpha, gain, clamp, has_skip, x_dtype, s_dtype = ctx.args
            g = g.float().contiguous()
            n, cout, oh, ow = g.shape
            gv = g if (act == "linear" and gain == 1 and clamp is None) else \
                _ba.launch(pre, None, 1, act, alpha, gain, clamp, grad_y=g)
            gx = gs = gnoise = gbias = gskip = None
            if ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
                # dL/dx = s * W^T(gv * d): the forward kernel on gv, phases as channels for up=2.
                gin = gv if up == 1 else gv.reshape(n, cout, oh // 2, 2, ow // 2, 2).permute(0, 3, 5, 1, 2, 4) \
                    .reshape(n, 4 * cout, oh // 2, ow // 2)
                in_scale = None if d is None else (d if up == 1 else d.repeat(1, 4)).contiguous()
                gx, _, gs = _mc.launch(gin.to(xs.dtype).contiguous(), packed, 1, in_scale=in_scale, out_scale=s,
                                       style_grad_x=xs, dot_fp32=_dot_fp32(xs.dtype), backward=True,
                                       out_dtype=x_dtype)
                if d is not None:  # the demodulation's share: d = rsqrt(s^2 @ wsq^T + eps)
                    conv = pre - (0 if noise is None else noise.float()) - \
                        (0 if bias is None else bias.float()[None, :, None, None])
                    dd = (gv * conv).sum([2, 3]) / d
                    gs = gs - s * ((dd * d.pow(3)) @ wsq)
                gs = gs.to(s_dtype)
            if ctx.needs_input_grad[2]:
                gnoise = gv.sum(1, keepdim=True).sum_to_size(noise.shape).to(noise.dtype)
            if ctx.needs_input_grad[3]:
                gbias = gv.sum([0, 2, 3]).to(bias.dtype)
            if ctx.needs_input_grad[4]:
                c = _ud.correlation_kernel(resample_filter, True, 4.0)
                p0, p1 = skip_padding(resample_filter.shape[0])
                h, w = oh // 2, ow // 2
                p = _ud.backward_padding(h, w, oh, ow, c.shape[0], c.shape[1], 2, 1, (p0, p1, p0, p1))
                gskip = _ud.launch(g, c, 1, 2, p, (h, w))
            return gx, gs, gnoise, gbias, gskip, None, None, None, None, None, None, None, None, None, None

    def modulated_conv2d(x, weight, styles, demodulate=True, up=1, resample_filter=None, wsq=None, noise=None,
                         bias=None, act="linear", alpha=None, gain=None, clamp=None, skip=None, eps=1e-8):
        alpha, gain = _defaults(act, alpha, gain)
        return _ModulatedConv2d.apply(x, styles, noise, bias, skip, weight, resample_filter, wsq, demodulate, up,
                                      act, alpha, gain, clamp, eps)

    # ---------------------------------------------------------------- seg_head
    _packed_members = DerivedCache()  # every member tensor -> the folded, padded ensemble
    _regions = DerivedCache()         # (region,) -> its pixels' int32 indices and per-row counts (one sync)
    _plans = {}                        # (feature shapes, output box, mode, width, budget, device) -> _sh.Plan

    def _members(members, dtype, device):
        return _packed_members.get(member_tensors(members), (dtype, device, tuple(m.bn_eps for m in members)),
                                   lambda: _sh.pack_members(members, dtype))

    def _plan(features, out_size, box, mode, nout):
        shapes = tuple(tuple(f.shape) for f in features)
        key = (shapes, out_size, box, mode, nout, _sh.budget_bytes(), features[0].device)
        if key not in _plans:
            _plans[key] = _sh.Plan(shapes, out_size, box, mode, nout, key[5], key[6])
        return _plans[key]

    def _region(region):
        """(pixel indices [P] int32 in row-major order, first pixel of each crop row [h + 1] as host ints)."""
        def build():
            starts = [0]
            for count in region.sum(1).tolist():
                starts.append(starts[-1] + count)
            return region.reshape(-1).nonzero().reshape(-1).to(torch.int32), starts
        return _regions.get((region,), (), build)

    def _band_pixels(plan, band, box, region_starts):
        """(first pixel, count) of a band: in the region's list, or crop indices."""
        oy0, oy1 = plan.bands[band][:2]
        r0, r1 = oy0 - box[0], oy1 - box[0]
        if region_starts is None:
            width = box[3] - box[2]
            return r0 * width, (r1 - r0) * width
        return region_starts[r0], region_starts[r1] - region_starts[r0]

    class _SegHead(torch.autograd.Function):
        """Band by band (kernels/seg_head.py): project the band's source rows, run the head on its pixels. The
        backward recomputes each band's projection (one band buffer, within the budget, at any size)."""

        @staticmethod
        def forward(ctx, members, out_size, box, mode, region, *features):
            dtype = _storage(features[0])
            n = features[0].shape[0]
            packed = _members(members, dtype, features[0].device)
            plan = _plan(features, out_size, box, mode, packed["w1"].shape[0])
            pixels, starts = _region(region) if region is not None else (None, None)
            total = (box[1] - box[0]) * (box[3] - box[2]) if region is None else starts[-1]
            out = torch.empty(n, packed["classes"], total, dtype=dtype, device=features[0].device)
            buf = torch.empty(plan.max_rows, packed["w1"].shape[0], dtype=dtype, device=features[0].device)
            fs = [f.to(dtype).contiguous() for f in features]
            for band in range(len(plan.bands)):
                pix0, count = _band_pixels(plan, band, box, starts)
                if count:
                    _sh.project_band(fs, packed, plan, band, buf, _dot_fp32(dtype))
                    _sh.head(buf, plan, band, packed, out_size, box, mode, pixels, pix0, count, total, n, out=out,
                             dot_fp32=_dot_fp32(dtype))
            ctx.save_for_backward(pixels, *fs)
            ctx.args = (packed, plan, out_size, box, mode, starts, [f.dtype for f in features])
            return out

        @staticmethod
        def backward(ctx, g):
            pixels, *fs = ctx.saved_tensors
            packed, plan, out_size, box, mode, starts, dtypes = ctx.args
            g = g.float().contiguous()
            nout = packed["w1"].shape[0]
            buf = torch.empty(plan.max_rows, nout, dtype=fs[0].dtype, device=g.device)
            gbuf = torch.empty(plan.max_rows, nout, dtype=torch.float32, device=g.device)
            grads = [torch.zeros(f.shape, dtype=torch.float32, device=g.device) for f in fs]
            dot_fp32 = _dot_fp32(fs[0].dtype)
            for band in range(len(plan.bands)):
                pix0, count = _band_pixels(plan, band, box, starts)
                if count:
                    _sh.project_band(fs, packed, plan, band, buf, dot_fp32)
                    gbuf[:plan.bands[band][2]].zero_()
                    _sh.head(buf, plan, band, packed, out_size, box, mode, pixels, pix0, count, g.shape[2],
                             g.shape[0], gproj=gbuf, grad_logits=g, dot_fp32=dot_fp32)
                    _sh.feature_grads_band(gbuf, plan, band, packed, grads, dot_fp32)
            return (None, None, None, None, None, *(gr.to(dt) for gr, dt in zip(grads, dtypes)))

    def seg_head(features, members, out_size, crop=None, mode="bilinear", region=None):
        from .seg_head import crop_box
        out_size = (out_size, out_size) if isinstance(out_size, int) else tuple(out_size)
        box = crop_box(out_size, crop)
        out = _SegHead.apply(members, out_size, box, mode, region, *features)
        if region is None:
            out = out.reshape(out.shape[0], out.shape[1], box[1] - box[0], box[3] - box[2])
        return out

    OPS = {"bias_act": bias_act, "upfirdn2d": upfirdn2d, "modulated_conv2d": modulated_conv2d,
           "seg_head": seg_head}
