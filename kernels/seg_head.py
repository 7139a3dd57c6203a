"""Segmentation head (DatasetGAN pixel-classifier ensemble), tiled over output pixels, no feature stack.

The first Linear layer commutes with the per-channel, linear upsampling, so with W1 = [W1_m]_m split by map:
    h1[n, :, p] = sum_m sum_taps w_tap(p) * P_m[n, :, src_tap(p)] + b1,   P_m = W1_m @ features[m]
where P_m (all ensemble members at once: E*H1 channels) is computed at the map's native resolution by a GEMM
(`gemm_kernel`), and w_tap/src_tap are the bilinear (4 taps, align_corners=False) or nearest (1 tap) weights
of output pixel p, exactly torch's F.interpolate rule. `head_kernel` then, per tile of output pixels (all
of the crop, or only a region's pixel list), gathers h1 per member, applies ReLU, the two remaining Linear
layers with BatchNorm folded in (PixelMLP.folded()), and averages the members' logits. The [N, D, h, w] stack
is never built.

Backward (dL/dfeatures): `head_kernel` with BACKWARD recomputes each member's activations per tile, pushes
dL/dlogits back to dL/dh1 and scatters it with the same tap weights into dL/dP_m (atomic adds); then
dL/dfeatures[m] = W1_m^T @ dL/dP_m, the same GEMM kernel with other strides.

Cost at the car configuration (E=10, H1=128, H2=32, C classes, 512x384 crop, D≈5k channels over ~18 maps):
projections 2 * D * E*H1 * sum_m h_m w_m FLOPs at native resolution, gathers 4 * M * E*H1 loads per output
pixel (cache resident), the MLP tail 2 * E * (H1*H2 + H2*C) FLOPs per pixel; the output is N*C*h*w floats.
"""
import triton
import triton.language as tl

from . import tile

BILINEAR, NEAREST = 0, 1
GEMM_M, GEMM_N, GEMM_K = tile(64, 256), 64, 32
HEAD_P = tile(32, 256)


@triton.jit
def gemm_kernel(a_ptr, b_ptr, c_ptr, M, N, K, sa_b, sa_m, sa_k, sb_k, sb_n, sc_b, sc_m, sc_n,
                DOT_FP32: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """c[b, m, n] = sum_k a[b, m, k] b[k, n], all strided (channels-first maps read as pixel rows)."""
    bi = tl.program_id(2).to(tl.int64)
    rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = tl.full((BLOCK_M, BLOCK_N), 0.0, tl.float32)
    for k0 in range(0, K, BLOCK_K):
        rk = k0 + tl.arange(0, BLOCK_K)
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
def _map_taps(meta_ptr, m, n, oy, ox, OUT_H, OUT_W, MODE: tl.constexpr):
    """Map m's source rows in proj of output pixels (oy, ox) of image n and their weights, taps (y0|y1, x0|x1):
    (r00, r01, r10, r11, w00, w01, w10, w11). Nearest mode uses only the first (weight 1)."""
    base = tl.load(meta_ptr + 3 * m)
    hm = tl.load(meta_ptr + 3 * m + 1)
    wm = tl.load(meta_ptr + 3 * m + 2)
    y0, y1, wy0, wy1 = _taps_1d(oy, hm, OUT_H, MODE)
    x0, x1, wx0, wx1 = _taps_1d(ox, wm, OUT_W, MODE)
    row = base + n * hm * wm
    return (row + y0 * wm + x0, row + y0 * wm + x1, row + y1 * wm + x0, row + y1 * wm + x1,
            wy0 * wx0, wy0 * wx1, wy1 * wx0, wy1 * wx1)


@triton.jit
def head_kernel(proj_ptr, gproj_ptr, meta_ptr, pix_ptr, b1_ptr, w2_ptr, b2_ptr, w3_ptr, b3_ptr, out_ptr, g_ptr,
                NUM_MAPS, E, inv_e, P, OUT_H, OUT_W, CROP_W, Y0, X0, NOUT,
                H1: tl.constexpr, H2: tl.constexpr, C: tl.constexpr, NUM_CLASSES, MODE: tl.constexpr,
                HAS_PIXELS: tl.constexpr, BACKWARD: tl.constexpr, DOT_FP32: tl.constexpr,
                BLOCK_P: tl.constexpr):
    """Forward: out[n, :, p] = mean_e MLP_e(gathered h1). Backward: scatter dL/dh1 into gproj.

    proj [rows, NOUT] holds every map's projections (NOUT = E*H1, member e at columns e*H1..), row
    meta[m, 0] + (n * h_m + y) * w_m + x; meta[m] = (row offset, h_m, w_m). Pixels are indices into the crop
    (a region's list, or 0..P-1)."""
    n = tl.program_id(1).to(tl.int64)
    q = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    qmask = q < P
    if HAS_PIXELS:
        idx = tl.load(pix_ptr + q, mask=qmask, other=0)
    else:
        idx = q
    oy = idx // CROP_W + Y0
    ox = idx % CROP_W + X0
    j1 = tl.arange(0, H1)
    j2 = tl.arange(0, H2)
    jc = tl.arange(0, C)
    cmask = jc < NUM_CLASSES
    if BACKWARD:
        gl = tl.load(g_ptr + (n * NUM_CLASSES + jc[None, :]) * P + q[:, None],
                     mask=qmask[:, None] & cmask[None, :], other=0.0).to(tl.float32) * inv_e
    logits = tl.full((BLOCK_P, C), 0.0, tl.float32)
    for e in range(E):
        col = e * H1 + j1[None, :]
        z1 = tl.full((BLOCK_P, H1), 0.0, tl.float32)
        for m in range(NUM_MAPS):
            r00, r01, r10, r11, w00, w01, w10, w11 = _map_taps(meta_ptr, m, n, oy, ox, OUT_H, OUT_W, MODE)
            z1 += w00[:, None] * tl.load(proj_ptr + r00[:, None] * NOUT + col, mask=qmask[:, None],
                                         other=0.0).to(tl.float32)
            if MODE == 0:
                z1 += w01[:, None] * tl.load(proj_ptr + r01[:, None] * NOUT + col, mask=qmask[:, None],
                                             other=0.0).to(tl.float32)
                z1 += w10[:, None] * tl.load(proj_ptr + r10[:, None] * NOUT + col, mask=qmask[:, None],
                                             other=0.0).to(tl.float32)
                z1 += w11[:, None] * tl.load(proj_ptr + r11[:, None] * NOUT + col, mask=qmask[:, None],
                                             other=0.0).to(tl.float32)
        z1 += tl.load(b1_ptr + e * H1 + j1)[None, :]
        h1 = tl.maximum(z1, 0.0)
        w2 = tl.load(w2_ptr + (e * H1 + j1[:, None]) * H2 + j2[None, :])  # [H1, H2] = folded W2^T
        if DOT_FP32:
            z2 = tl.dot(h1, w2.to(tl.float32), input_precision="tf32x3")
        else:
            z2 = tl.dot(h1.to(w2.dtype), w2)
        z2 += tl.load(b2_ptr + e * H2 + j2)[None, :]
        h2 = tl.maximum(z2, 0.0)
        if BACKWARD:
            w3t = tl.load(w3_ptr + (e * H2 + j2[None, :]) * C + jc[:, None]).to(tl.float32)  # [C, H2] = W3
            gh2 = tl.where(z2 > 0, tl.dot(gl, w3t, input_precision="tf32x3"), 0.0)
            w2t = tl.load(w2_ptr + (e * H1 + j1[None, :]) * H2 + j2[:, None]).to(tl.float32)  # [H2, H1] = W2
            gh1 = tl.where(z1 > 0, tl.dot(gh2, w2t, input_precision="tf32x3"), 0.0)
            for m in range(NUM_MAPS):  # scatter dL/dh1 back to each map's projection, with the same taps
                r00, r01, r10, r11, w00, w01, w10, w11 = _map_taps(meta_ptr, m, n, oy, ox, OUT_H, OUT_W, MODE)
                tl.atomic_add(gproj_ptr + r00[:, None] * NOUT + col, w00[:, None] * gh1, mask=qmask[:, None])
                if MODE == 0:
                    tl.atomic_add(gproj_ptr + r01[:, None] * NOUT + col, w01[:, None] * gh1, mask=qmask[:, None])
                    tl.atomic_add(gproj_ptr + r10[:, None] * NOUT + col, w10[:, None] * gh1, mask=qmask[:, None])
                    tl.atomic_add(gproj_ptr + r11[:, None] * NOUT + col, w11[:, None] * gh1, mask=qmask[:, None])
        else:
            w3 = tl.load(w3_ptr + (e * H2 + j2[:, None]) * C + jc[None, :])  # [H2, C] = folded W3^T
            if DOT_FP32:
                logits += tl.dot(h2, w3.to(tl.float32), input_precision="tf32x3")
            else:
                logits += tl.dot(h2.to(w3.dtype), w3)
            logits += tl.load(b3_ptr + e * C + jc)[None, :]
    if not BACKWARD:
        tl.store(out_ptr + (n * NUM_CLASSES + jc[None, :]) * P + q[:, None],
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


def gemm(a, a_strides, b, b_strides, c, c_strides, batch, m, n, k, dot_fp32):
    gemm_kernel[(triton.cdiv(m, GEMM_M), triton.cdiv(n, GEMM_N), batch)](
        a, b, c, m, n, k, *a_strides, *b_strides, *c_strides, DOT_FP32=dot_fp32,
        BLOCK_M=GEMM_M, BLOCK_N=GEMM_N, BLOCK_K=GEMM_K)


def map_layout(shapes, device):
    """(rows, [(row offset, h, w)] per map, the same as an [M, 3] int32 table on `device`) of the projection
    buffer for feature maps of `shapes` [(N, C, h, w)]. Depends on shapes only: callers cache it."""
    import torch
    rows, maps = 0, []
    for n, _, h, w in shapes:
        maps.append((rows, h, w))
        rows += n * h * w
    return rows, maps, torch.tensor(maps, dtype=torch.int32, device=device)


def project(features, packed, layout, dot_fp32, dtype):
    """P = W1_m @ features[m] for every map, at native resolution, into one [rows, E*H1] buffer."""
    import torch
    w1 = packed["w1"]
    nout, d = w1.shape
    rows, maps, _ = layout
    proj = torch.empty(rows, nout, dtype=dtype, device=w1.device)
    col = 0
    for (base, h, w), f in zip(maps, features):
        n, cm = f.shape[:2]
        f = f.to(dtype).contiguous()
        gemm(f, (cm * h * w, 1, h * w), w1[:, col:], (1, d), proj[base:], (h * w * nout, nout, 1),
             n, h * w, nout, cm, dot_fp32)
        col += cm
    return proj


def head(proj, meta, packed, out_size, box, mode, pixels, n, out_dtype, dot_fp32, grad_logits=None):
    """Logits [N, C, P] (forward) or, given grad_logits [N, C, P], dL/dproj (fp32, like proj)."""
    import torch
    y0, y1, x0, x1 = box
    count = (y1 - y0) * (x1 - x0) if pixels is None else pixels.numel()
    backward = grad_logits is not None
    c = packed["classes"]
    out = torch.empty(n, c, count, dtype=out_dtype, device=proj.device) if not backward else None
    gproj = torch.zeros(proj.shape, dtype=torch.float32, device=proj.device) if backward else None
    if count == 0:
        return gproj if backward else out
    dummy = proj
    head_kernel[(triton.cdiv(count, HEAD_P), n)](
        proj, gproj if backward else dummy, meta, pixels if pixels is not None else dummy, packed["b1"],
        packed["w2"], packed["b2"], packed["w3"], packed["b3"], out if not backward else dummy,
        grad_logits if backward else dummy, meta.shape[0], packed["members"], 1.0 / packed["members"], count, out_size[0], out_size[1],
        x1 - x0, y0, x0, proj.shape[1], H1=packed["h1"], H2=packed["h2"], C=packed["classes_padded"],
        NUM_CLASSES=c, MODE=BILINEAR if mode == "bilinear" else NEAREST, HAS_PIXELS=pixels is not None,
        BACKWARD=backward, DOT_FP32=dot_fp32, BLOCK_P=HEAD_P)
    return gproj if backward else out


def feature_grads(gproj, layout, packed, features, dot_fp32):
    """dL/dfeatures[m] = W1_m^T @ dL/dP_m, in each feature's shape and dtype."""
    import torch
    w1 = packed["w1"]
    nout, d = w1.shape
    grads, col = [], 0
    for (base, h, w), f in zip(layout[1], features):
        n, cm = f.shape[:2]
        g = torch.empty((n, cm, h, w), dtype=torch.float32, device=f.device)
        gemm(gproj[base:], (h * w * nout, nout, 1), w1[:, col:], (d, 1), g, (cm * h * w, 1, h * w),
             n, h * w, cm, nout, dot_fp32)
        grads.append(g.to(f.dtype))
        col += cm
    return grads
