"""Segmentation head (DatasetGAN pixel-classifier ensemble), in bands of output rows, never the feature stack.

The first Linear layer commutes with the per-channel, linear upsampling, so with W1 = [W1_m]_m split by map:
    h1[n, :, p] = sum_g sum_taps w_tap(p) * P_g[n, :, src_tap(p)] + b1,   P_g = sum_{m of size g} W1_m @ f_m
where P_g (all ensemble members at once: E*H1 channels) is projected at the maps' own resolution by a GEMM
(`gemm_kernel`), maps of the same size into one P_g (their projections add), and w_tap/src_tap are the bilinear
(4 taps, align_corners=False) or nearest (1 tap) weights of output pixel p, torch's F.interpolate rule.

Memory: the output rows are split into bands (`plan`), and for each band only the source rows its taps reach
are projected, into a buffer of at most `budget_bytes()` (1 GiB by default, EDITGAN_FAST_SEG_BUDGET_MB) for the
projection and its gradient together, counted at 4 bytes each: whatever the resolution, the head never
allocates more (one band holds at least one output row). At EditGAN's car configuration (16 maps, 8 sizes,
E*H1 = 2560, 512x384 crop) a band is ~70 output rows (6 bands); a source row reached by two bands is projected
twice, ~2 % extra work.

`head_kernel` then, per tile of the band's output pixels (all of its crop rows, or a region's pixels in it),
gathers h1 per member in chunks of H1C units, applies ReLU and the two remaining Linear layers with BatchNorm
folded in (PixelMLP.folded()), and averages the members' logits. The chunks keep the live tiles small enough
for registers at H1=256, H2=128 (no spills: tests/test_triton_aot.py reads ptxas's report at the car shapes).

Backward (dL/dfeatures), band by band: the band's projection is recomputed; `head_kernel` with BACKWARD
recomputes each member's activations, pushes dL/dlogits back to dL/dh1 and scatters it with the same tap
weights into dL/dP_g (fp32 atomic adds); then dL/df_m[band rows] += W1_m^T @ dL/dP_g, the GEMM kernel with
other strides, accumulated band after band in order. The atomics make the last bits of dL/dP_g depend on the
order of the adds: each element is a sum of at most (upsampling factor + 1)^2 * N terms per band, so runs
differ by at most that many fp32 roundings of the sum's magnitude (~1e-6 relative at the car configuration's
128x upsampled 4 px maps), far under the fp32 bound the tests and bench/gpu.py check.

Offsets: every index into a buffer or a feature map that can pass 2^31 elements (a 1024 px map times E*H1
columns: 2.7e9) is computed in int64.

Cost at the car configuration (E=10, H1=256, H2=128, C=32, D=6016 over 16 maps): projections 2 * D * E*H1 *
sum_m h_m w_m FLOPs at native resolution (+2 % band overlap), gathers 4 * G * E*H1 loads per output pixel (G =
8 distinct sizes, cache resident), the MLP tail 2 * E * (H1*H2 + H2*C) FLOPs per pixel; the output is N*C*h*w.
"""
import os

import triton
import triton.language as tl

from . import tile

BILINEAR, NEAREST = 0, 1
GEMM_M, GEMM_N, GEMM_K = tile(64, 256), 64, 32
HEAD_P = tile(16, 256)  # 16 pixels: no register spills at H1=256, H2=128 with fp32 (tf32x3) products
HEAD_H1C = 32  # first-layer units gathered per chunk on a GPU (the interpreter takes all of them at once)
META = tl.constexpr(5)  # per size group and band: (row offset in the band buffer, h, w, first source row, source rows)


def budget_bytes():
    """The band buffer budget: projection + its gradient, at 4 bytes per element."""
    return int(float(os.environ.get("EDITGAN_FAST_SEG_BUDGET_MB", "1024")) * 2**20)


@triton.jit
def gemm_kernel(a_ptr, b_ptr, c_ptr, M, N, K, sa_b, sa_m, sa_k, sb_k, sb_n, sc_b, sc_m, sc_n,
                ACCUMULATE: tl.constexpr, DOT_FP32: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """c[b, m, n] (+)= sum_k a[b, m, k] b[k, n], all strided (channels-first maps read as pixel rows); int64
    offsets (a 1024 px map's pixel times E*H1 columns passes 2^31)."""
    bi = tl.program_id(2).to(tl.int64)
    rm = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = tl.program_id(1).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = tl.full((BLOCK_M, BLOCK_N), 0.0, tl.float32)
    for k0 in range(0, K, BLOCK_K):
        rk = k0 + tl.arange(0, BLOCK_K).to(tl.int64)
        a = tl.load(a_ptr + bi * sa_b + rm[:, None] * sa_m + rk[None, :] * sa_k,
                    mask=(rm[:, None] < M) & (rk[None, :] < K), other=0.0)
        b = tl.load(b_ptr + rk[:, None] * sb_k + rn[None, :] * sb_n,
                    mask=(rk[:, None] < K) & (rn[None, :] < N), other=0.0)
        if DOT_FP32:
            acc += tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="tf32x3")
        else:
            acc += tl.dot(a.to(b.dtype), b)
    ptrs = c_ptr + bi * sc_b + rm[:, None] * sc_m + rn[None, :] * sc_n
    mask = (rm[:, None] < M) & (rn[None, :] < N)
    if ACCUMULATE:
        acc += tl.load(ptrs, mask=mask, other=0.0).to(tl.float32)
    tl.store(ptrs, acc.to(c_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _taps_1d(o, in_len, out_len, MODE: tl.constexpr):
    """(i0, i1, w0, w1) of output index o: torch's bilinear (align_corners=False) or legacy nearest rule."""
    scale = in_len.to(tl.float32) / out_len  # in_len is loaded (a tensor); out_len may be specialized
    if MODE == 0:
        src = tl.maximum((o.to(tl.float32) + 0.5) * scale - 0.5, 0.0)
        i0 = tl.minimum(src.to(tl.int32), in_len - 1)
        w1 = src - i0.to(tl.float32)
        i1 = tl.minimum(i0 + 1, in_len - 1)
        return i0, i1, 1.0 - w1, w1
    else:
        i0 = tl.minimum(tl.floor(o.to(tl.float32) * scale).to(tl.int32), in_len - 1)
        return i0, i0, tl.full(o.shape, 1.0, tl.float32), tl.full(o.shape, 0.0, tl.float32)


@triton.jit
def _map_taps(meta_ptr, g, n, oy, ox, OUT_H, OUT_W, NOUT, MODE: tl.constexpr):
    """Element offsets (int64) in the band buffer of size group g's taps of output pixels (oy, ox) of image n,
    and their weights, taps (y0|y1, x0|x1): (o00, o01, o10, o11, w00, w01, w10, w11). Nearest mode uses only
    the first (weight 1). meta[g] = (row offset, h, w, first source row in the buffer, source rows)."""
    base = tl.load(meta_ptr + META * g).to(tl.int64)
    hm = tl.load(meta_ptr + META * g + 1)
    wm = tl.load(meta_ptr + META * g + 2)
    sy0 = tl.load(meta_ptr + META * g + 3)
    bh = tl.load(meta_ptr + META * g + 4).to(tl.int64)
    y0, y1, wy0, wy1 = _taps_1d(oy, hm, OUT_H, MODE)
    x0, x1, wx0, wx1 = _taps_1d(ox, wm, OUT_W, MODE)
    w64 = wm.to(tl.int64)
    row0 = base + (n * bh + (y0 - sy0)) * w64
    row1 = base + (n * bh + (y1 - sy0)) * w64
    return ((row0 + x0) * NOUT, (row0 + x1) * NOUT, (row1 + x0) * NOUT, (row1 + x1) * NOUT,
            wy0 * wx0, wy0 * wx1, wy1 * wx0, wy1 * wx1)


@triton.jit
def _gather(proj_ptr, meta_ptr, NUM_GROUPS, n, oy, ox, col, qmask, OUT_H, OUT_W, NOUT,
            MODE: tl.constexpr, BLOCK_P: tl.constexpr, WIDTH: tl.constexpr):
    """z1[:, col] before its bias: every size group's taps of the tile's pixels, weighted."""
    z1 = tl.full((BLOCK_P, WIDTH), 0.0, tl.float32)
    for g in range(NUM_GROUPS):
        o00, o01, o10, o11, w00, w01, w10, w11 = _map_taps(meta_ptr, g, n, oy, ox, OUT_H, OUT_W, NOUT, MODE)
        z1 += w00[:, None] * tl.load(proj_ptr + o00[:, None] + col, mask=qmask[:, None], other=0.0).to(tl.float32)
        if MODE == 0:
            z1 += w01[:, None] * tl.load(proj_ptr + o01[:, None] + col, mask=qmask[:, None],
                                         other=0.0).to(tl.float32)
            z1 += w10[:, None] * tl.load(proj_ptr + o10[:, None] + col, mask=qmask[:, None],
                                         other=0.0).to(tl.float32)
            z1 += w11[:, None] * tl.load(proj_ptr + o11[:, None] + col, mask=qmask[:, None],
                                         other=0.0).to(tl.float32)
    return z1


@triton.jit
def _scatter(gproj_ptr, meta_ptr, NUM_GROUPS, n, oy, ox, col, qmask, gh1, OUT_H, OUT_W, NOUT,
             MODE: tl.constexpr):
    """The transpose of _gather: gh1 added into every size group's taps (fp32 atomics)."""
    for g in range(NUM_GROUPS):
        o00, o01, o10, o11, w00, w01, w10, w11 = _map_taps(meta_ptr, g, n, oy, ox, OUT_H, OUT_W, NOUT, MODE)
        tl.atomic_add(gproj_ptr + o00[:, None] + col, w00[:, None] * gh1, mask=qmask[:, None], sem="relaxed")
        if MODE == 0:
            tl.atomic_add(gproj_ptr + o01[:, None] + col, w01[:, None] * gh1, mask=qmask[:, None],
                          sem="relaxed")
            tl.atomic_add(gproj_ptr + o10[:, None] + col, w10[:, None] * gh1, mask=qmask[:, None],
                          sem="relaxed")
            tl.atomic_add(gproj_ptr + o11[:, None] + col, w11[:, None] * gh1, mask=qmask[:, None],
                          sem="relaxed")


@triton.jit
def _dot(a, b, DOT_FP32: tl.constexpr):
    if DOT_FP32:
        return tl.dot(a, b.to(tl.float32), input_precision="tf32x3")
    else:
        return tl.dot(a.to(b.dtype), b)


@triton.jit
def head_kernel(proj_ptr, gproj_ptr, meta_ptr, pix_ptr, b1_ptr, w2_ptr, b2_ptr, w3_ptr, b3_ptr, out_ptr, g_ptr,
                NUM_GROUPS, E, inv_e, P, PIX0, P_TOTAL, OUT_H, OUT_W, CROP_W, Y0, X0, NOUT,
                H1: tl.constexpr, H2: tl.constexpr, C: tl.constexpr, NUM_CLASSES, MODE: tl.constexpr,
                HAS_PIXELS: tl.constexpr, BACKWARD: tl.constexpr, DOT_FP32: tl.constexpr,
                BLOCK_P: tl.constexpr, H1C: tl.constexpr):
    """One band. Forward: out[n, :, PIX0 + q] = mean_e MLP_e(gathered h1). Backward: scatter dL/dh1 into gproj.

    proj [rows, NOUT] holds the band's projections (NOUT = E*H1, member e at columns e*H1..). The band's
    pixels are pix[q] (a region's list, already offset to the band) or PIX0 + q, indices into the crop; out
    and g are [N, C, P_TOTAL]."""
    n = tl.program_id(1).to(tl.int64)
    q = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    qmask = q < P
    if HAS_PIXELS:
        idx = tl.load(pix_ptr + q, mask=qmask, other=0)
    else:
        idx = PIX0 + q
    oy = idx // CROP_W + Y0
    ox = idx % CROP_W + X0
    qout = (PIX0 + q).to(tl.int64)
    jh = tl.arange(0, H1C)
    j2 = tl.arange(0, H2)
    jc = tl.arange(0, C)
    cmask = jc < NUM_CLASSES
    if BACKWARD:
        gl = tl.load(g_ptr + (n * NUM_CLASSES + jc[None, :]) * P_TOTAL + qout[:, None],
                     mask=qmask[:, None] & cmask[None, :], other=0.0).to(tl.float32) * inv_e
    logits = tl.full((BLOCK_P, C), 0.0, tl.float32)
    for e in range(E):
        z2 = tl.full((BLOCK_P, H2), 0.0, tl.float32)
        for c0 in range(0, H1, H1C):
            col = e * H1 + c0 + jh
            z1 = _gather(proj_ptr, meta_ptr, NUM_GROUPS, n, oy, ox, col[None, :], qmask, OUT_H, OUT_W, NOUT,
                         MODE, BLOCK_P, H1C) + tl.load(b1_ptr + col)[None, :]
            w2 = tl.load(w2_ptr + (e * H1 + c0 + jh[:, None]) * H2 + j2[None, :])  # [H1C, H2] of folded W2^T
            z2 += _dot(tl.maximum(z1, 0.0), w2, DOT_FP32)
        z2 += tl.load(b2_ptr + e * H2 + j2)[None, :]
        h2 = tl.maximum(z2, 0.0)
        if BACKWARD:
            w3t = tl.load(w3_ptr + (e * H2 + j2[None, :]) * C + jc[:, None]).to(tl.float32)  # [C, H2] = W3
            gh2 = tl.where(z2 > 0, tl.dot(gl, w3t, input_precision="tf32x3"), 0.0)
            for c0 in range(0, H1, H1C):  # the first layer again, chunk by chunk, for its ReLU mask
                col = e * H1 + c0 + jh
                z1 = _gather(proj_ptr, meta_ptr, NUM_GROUPS, n, oy, ox, col[None, :], qmask, OUT_H, OUT_W, NOUT,
                             MODE, BLOCK_P, H1C) + tl.load(b1_ptr + col)[None, :]
                w2t = tl.load(w2_ptr + (e * H1 + c0 + jh[None, :]) * H2 + j2[:, None]).to(tl.float32)  # [H2, H1C]
                gh1 = tl.where(z1 > 0, tl.dot(gh2, w2t, input_precision="tf32x3"), 0.0)
                _scatter(gproj_ptr, meta_ptr, NUM_GROUPS, n, oy, ox, col[None, :], qmask, gh1, OUT_H, OUT_W,
                         NOUT, MODE)
        else:
            w3 = tl.load(w3_ptr + (e * H2 + j2[:, None]) * C + jc[None, :])  # [H2, C] = folded W3^T
            logits += _dot(h2, w3, DOT_FP32)
            logits += tl.load(b3_ptr + e * C + jc)[None, :]
    if not BACKWARD:
        tl.store(out_ptr + (n * NUM_CLASSES + jc[None, :]) * P_TOTAL + qout[:, None],
                 (logits * inv_e).to(out_ptr.dtype.element_ty), mask=qmask[:, None] & cmask[None, :])


def _pad16(v):
    return max(16, triton.next_power_of_2(v))


def pack_members(members, dtype):
    """The ensemble's folded weights, each member padded to power-of-two widths (zeros change nothing):
    w1 [E*H1, D] (rows of member e at e*H1), b1 [E*H1], w2 [E, H1, H2] and w3 [E, H2, C] transposed for
    h @ W^T, b2 [E, H2], b3 [E, C]. fp32 biases, weights in `dtype`."""
    import torch
    folded = [m.folded() for m in members]
    (w1_0, _), (w2_0, _), (w3_0, _) = folded[0]
    e_count, (h1, d), h2, c = len(folded), w1_0.shape, w2_0.shape[0], w3_0.shape[0]
    h1p, h2p, cp = _pad16(h1), _pad16(h2), _pad16(c)
    dev = w1_0.device
    w1 = torch.zeros(e_count * h1p, d, device=dev)
    b1 = torch.zeros(e_count * h1p, device=dev)
    w2 = torch.zeros(e_count, h1p, h2p, device=dev)
    b2 = torch.zeros(e_count, h2p, device=dev)
    w3 = torch.zeros(e_count, h2p, cp, device=dev)
    b3 = torch.zeros(e_count, cp, device=dev)
    for e, ((we1, be1), (we2, be2), (we3, be3)) in enumerate(folded):
        w1[e * h1p:e * h1p + h1] = we1
        b1[e * h1p:e * h1p + h1] = be1
        w2[e, :h1, :h2] = we2.t()
        b2[e, :h2] = be2
        w3[e, :h2, :c] = we3.t()
        b3[e, :c] = be3
    return dict(w1=w1.to(dtype), b1=b1, w2=w2.to(dtype).contiguous(), b2=b2, w3=w3.to(dtype).contiguous(),
                b3=b3, members=e_count, h1=h1p, h2=h2p, classes=c, classes_padded=cp)


def gemm(a, a_strides, b, b_strides, c, c_strides, batch, m, n, k, dot_fp32, accumulate=False):
    gemm_kernel[(triton.cdiv(m, GEMM_M), triton.cdiv(n, GEMM_N), batch)](
        a, b, c, m, n, k, *a_strides, *b_strides, *c_strides, ACCUMULATE=accumulate, DOT_FP32=dot_fp32,
        BLOCK_M=GEMM_M, BLOCK_N=GEMM_N, BLOCK_K=GEMM_K)


def _source_rows(oy0, oy1, h, out_h, mode):
    """[lo, hi): the rows of a size-h map that output rows [oy0, oy1) tap, one row of margin each side for the
    kernel's float32 rounding of the same rule."""
    if mode == BILINEAR:
        first = max((oy0 + 0.5) * h / out_h - 0.5, 0.0)
        last = max((oy1 - 1 + 0.5) * h / out_h - 0.5, 0.0) + 1
    else:
        first, last = oy0 * h / out_h, (oy1 - 1) * h / out_h
    return max(int(first) - 1, 0), min(int(last) + 2, h)


class Plan:
    """How the head runs for one set of feature shapes, output box, mode and ensemble width (host ints, built
    once per model and cached by the caller, plus one device table):

    groups: [(h, w, [(feature index, first W1 column, channels)])], one per distinct map size;
    bands: [(oy0, oy1, rows, [(row offset, h, w, lo, hi - lo)] per group)], output rows [oy0, oy1) in the crop's
    coordinates (absolute output rows), `rows` band-buffer rows;
    table: [bands, groups, META] int32 on the device (band b's meta is table[b]); max_rows: the largest band."""

    def __init__(self, shapes, out_size, box, mode, nout, budget, device):
        import torch
        n = shapes[0][0]
        sizes = {}
        col = 0
        for i, (_, c, h, w) in enumerate(shapes):
            sizes.setdefault((h, w), []).append((i, col, c))
            col += c
        self.groups = [(h, w, maps) for (h, w), maps in sizes.items()]
        y0, y1 = box[0], box[1]
        row_cost = 8 * nout * n  # bytes per buffer row: projection + gradient at 4 bytes, every image
        self.bands = []
        oy0 = y0
        while oy0 < y1:
            oy1 = oy0 + 1
            while oy1 < y1 and self._rows(oy0, oy1 + 1, out_size[0], mode) * row_cost <= budget:
                oy1 += 1
            self.bands.append(self._band(oy0, oy1, out_size[0], mode, n))
            oy0 = oy1
        self.max_rows = max(rows for _, _, rows, _ in self.bands)
        self.table = torch.tensor([meta for *_, meta in self.bands], dtype=torch.int32, device=device)

    def _rows(self, oy0, oy1, out_h, mode):
        rows = 0
        for h, w, _ in self.groups:
            lo, hi = _source_rows(oy0, oy1, h, out_h, mode)
            rows += (hi - lo) * w
        return rows

    def _band(self, oy0, oy1, out_h, mode, n):
        meta, rows = [], 0
        for h, w, _ in self.groups:
            lo, hi = _source_rows(oy0, oy1, h, out_h, mode)
            meta.append((rows, h, w, lo, hi - lo))
            rows += n * (hi - lo) * w
        return oy0, oy1, rows, meta


def project_band(features, packed, plan, band, buf, dot_fp32):
    """The band's P_g = sum over the group's maps of W1_m @ f_m[:, :, lo:hi], into buf [rows, E*H1]."""
    w1 = packed["w1"]
    nout, d = w1.shape
    for (h, w, maps), (base, _, _, lo, bh) in zip(plan.groups, plan.bands[band][3]):
        for j, (i, col, cm) in enumerate(maps):
            f = features[i][:, :, lo:]
            gemm(f, (cm * h * w, 1, h * w), w1[:, col:], (1, d), buf[base:], (bh * w * nout, nout, 1),
                 f.shape[0], bh * w, nout, cm, dot_fp32, accumulate=j > 0)


def head(proj, plan, band, packed, out_size, box, mode, pixels, pix0, count, p_total, n, out=None, gproj=None,
         grad_logits=None, dot_fp32=True):
    """Band `band` of the head: logits into out [N, C, p_total] at columns pix0..pix0+count (forward), or,
    given grad_logits [N, C, p_total] and gproj (fp32, zeroed, like proj), dL/dproj added into gproj.
    pixels: the region's pixel list (the band's are pixels[pix0:pix0+count]) or None (crop rows)."""
    if count == 0:
        return
    y0, y1, x0, x1 = box
    backward = grad_logits is not None
    dummy = proj
    pix = pixels[pix0:] if pixels is not None else dummy
    head_kernel[(triton.cdiv(count, HEAD_P), n)](
        proj, gproj if backward else dummy, plan.table[band], pix, packed["b1"], packed["w2"], packed["b2"],
        packed["w3"], packed["b3"], out if not backward else dummy, grad_logits if backward else dummy,
        len(plan.groups), packed["members"], 1.0 / packed["members"], count, pix0, p_total, out_size[0],
        out_size[1], x1 - x0, y0, x0, proj.shape[1], H1=packed["h1"], H2=packed["h2"], C=packed["classes_padded"],
        NUM_CLASSES=packed["classes"], MODE=BILINEAR if mode == "bilinear" else NEAREST,
        HAS_PIXELS=pixels is not None, BACKWARD=backward, DOT_FP32=dot_fp32, BLOCK_P=HEAD_P,
        H1C=tile(min(HEAD_H1C, packed["h1"]), packed["h1"]))


def feature_grads_band(gproj, plan, band, packed, grads, dot_fp32):
    """grads[m][:, :, lo:hi] += W1_m^T @ dL/dP_g for every map of every group (grads fp32, zero-initialized)."""
    w1 = packed["w1"]
    nout, d = w1.shape
    for (h, w, maps), (base, _, _, lo, bh) in zip(plan.groups, plan.bands[band][3]):
        for i, col, cm in maps:
            g = grads[i][:, :, lo:]
            gemm(gproj[base:], (bh * w * nout, nout, 1), w1[:, col:], (d, 1), g, (cm * h * w, 1, h * w),
                 g.shape[0], bh * w, cm, nout, dot_fp32, accumulate=True)
