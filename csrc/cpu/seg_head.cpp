// The segmentation head (DatasetGAN pixel-classifier ensemble) on CPU, tiled over output pixels.
//
// Python (editgan_fast/ops/_cpu_seg.py) groups the feature maps by resolution and hands each group over as a
// channel-last "source" [N, rows, cols, K] covering only the source rows/cols the requested pixels touch:
// - a projected group: K = E*H1, the first Linear layer already applied at the map's own resolution
//   (exact: a linear layer commutes with per-channel bilinear/nearest resampling), fp32/fp64 or bf16 storage;
// - a direct group (maps with at least as many needed source pixels as output pixels, e.g. maps already at
//   output resolution): K = C_g raw feature channels, resampled per tile and projected per tile with its
//   columns of W1 (`direct_weights[g]`, [E*H1, C_g]), because projecting them up front is the same work.
// Per tile of output pixels (a run of the row-major pixel list: the whole crop, or a region's pixels):
//   h = b1 + sum_g resample(source_g) [@ W1_g^T]; ReLU; per member Linear(+folded BN), ReLU, Linear(+folded BN);
//   mean over members -> out[n, :, tile]. Nothing at full resolution larger than the output is ever built.
//   Bilinear resampling of the projected groups is separable (separable_run): per run of the tile's pixels on
//   one output row, each group's two source rows are first interpolated into one row buffer (cache-resident),
//   then every pixel sums 2 taps of it per group, all groups in one pass, instead of 4 taps per group read
//   from the projections (4 groups on the bundled model: ~8 taps and a small row pass instead of 16 taps).
//   Measured 2026-12-02 (2 threads, shared 2-core AVX2 host, load ~1.5; separable vs 4-tap interleaved in one
//   process): the gather's cycles -23% (perf, against linear_relu's); bundled model N=16 -2% (12.6 -> 12.4
//   ms/image), N=1 within noise (12.8-15.5 ms); car configuration fwd fp32 -7.5% (10.9 -> 10.1 s, load 3.4).
//   With bf16_products (the bf16 mode on CPUs with native bf16) the second layer's per-tile products (the
//   largest per-pixel GEMMs) run in bf16 with fp32 accumulation; the hidden activations stay fp32.
//   In fp32, layers whose width is a multiple of packed_block() (the first layer's direct products, and the
//   second layer member by member) run in linear_relu, a register-blocked product with pre-packed weights
//   (packed once per ensemble by Python: w1d_pack, w2_pack) and the bias/ReLU fused, instead of a BLAS call
//   per tile; the last layer and the members' mean run in mean_logits, written straight into the logits.
// seg_head_infer (inference: no autograd) also takes projected groups lazily -- their channels-first windows
// and W1 columns -- and projects each image right before its tiles. Threads take whole images while at least
// as many images remain as threads (no barrier per image; each image's projections stay in its thread's
// cache), the rest are split by tiles (a single-image call: the real-time path).
// Backward recomputes the tile, pushes dL/dlogits back to dL/dh and scatters it with the same tap weights into
// per-group gradients at source resolution (dL/dP_g for projected groups, dL/dfeatures for direct ones);
// Python finishes with dL/df = W1_g^T dL/dP_g at native resolution.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <optional>
#include <utility>
#include <vector>

#include "editgan/elementwise.h"
#include "editgan/isa.h"

namespace {

// The gather/scatter loops are compiled per ISA and picked at run time (editgan/isa.h); the GEMMs go to ATen's
// BLAS / oneDNN, which select their own.
#define EG_INLINE EG_ALWAYS_INLINE

enum Mode : int64_t { kBilinear = 0, kNearest = 1 };

EG_INLINE float bf16_to_float(uint16_t v) {
  uint32_t u = static_cast<uint32_t>(v) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

EG_INLINE float load(float v) { return v; }
EG_INLINE double load(double v) { return v; }
EG_INLINE float load(uint16_t v) { return bf16_to_float(v); }

// dst[k] = init[k] (or 0) + sum_j w[j] src[j][k]: the taps of one output pixel in one group, summed in blocks
// of k so dst is written once instead of read and written per tap. Portable form (float64, and the last
// K % 8 channels of the fp32 path below).
template <typename S, typename D>
EG_INLINE void gather_block(D* dst, const D* init, const S* const* src, const float* w, int ntaps,
                         int64_t k0, int64_t len) {
  constexpr int64_t B = 64;
  D acc[B];
  for (int64_t i = 0; i < B; ++i) acc[i] = (init && i < len) ? init[k0 + i] : D(0);
  for (int j = 0; j < ntaps; ++j) {
    const S* sj = src[j] + k0;
    const D wj = w[j];
    if (len == B) {
      for (int64_t i = 0; i < B; ++i) acc[i] += wj * load(sj[i]);
    } else {
      for (int64_t i = 0; i < len; ++i) acc[i] += wj * load(sj[i]);
    }
  }
  for (int64_t i = 0; i < len; ++i) dst[k0 + i] = acc[i];
}

template <typename S, typename D>
EG_INLINE void gather_taps_impl(D* dst, const D* init, const S* const* src, const float* w, int ntaps, int64_t K) {
  for (int64_t k0 = 0; k0 < K; k0 += 64) gather_block(dst, init, src, w, ntaps, k0, std::min<int64_t>(64, K - k0));
}

// fp32 destination: GCC vector types of L floats (8: AVX2's registers, 16: AVX-512's), so the 64-float
// accumulator block provably lives in 64 / L registers (an array of floats gets spilled to the stack) and each
// ISA variant compiles them to its own instructions.
template <int L>
struct Lanes;
// (Explicit specializations: GCC rejects __builtin_convertvector on vector types that depend on L.)
#define EG_LANES(L)                                                                      \
  template <>                                                                            \
  struct Lanes<L> {                                                                      \
    typedef float f __attribute__((vector_size(4 * L)));                                 \
    typedef float fu __attribute__((vector_size(4 * L), aligned(4)));                    \
    typedef uint16_t hu __attribute__((vector_size(2 * L), aligned(2)));                 \
    typedef uint32_t u __attribute__((vector_size(4 * L)));                              \
    static EG_INLINE f load(const float* p) { return *reinterpret_cast<const fu*>(p); }  \
    static EG_INLINE f load(const uint16_t* p) { /* bf16: the bits into the high half */ \
      u bits = __builtin_convertvector(*reinterpret_cast<const hu*>(p), u) << 16;        \
      f v;                                                                               \
      std::memcpy(&v, &bits, sizeof v);                                                  \
      return v;                                                                          \
    }                                                                                    \
    static EG_INLINE void store(float* p, f v) { *reinterpret_cast<fu*>(p) = v; }        \
  };
EG_LANES(8)
EG_LANES(16)
#undef EG_LANES

template <int L, typename S>
EG_INLINE void gather_taps_body(float* dst, const float* init, const S* const* src, const float* w, int ntaps,
                                int64_t K) {
  using V = Lanes<L>;
  using f = typename V::f;
  constexpr int R = 64 / L;  // registers per 64-float block
  int64_t k0 = 0;
  for (; k0 + 64 <= K; k0 += 64) {
    f acc[R];
#pragma GCC unroll 8
    for (int i = 0; i < R; ++i) acc[i] = init ? V::load(init + k0 + L * i) : f{};
    for (int j = 0; j < ntaps; ++j) {
      const S* sj = src[j] + k0;
      const f wj = f{} + w[j];
#pragma GCC unroll 8
      for (int i = 0; i < R; ++i) acc[i] += wj * V::load(sj + L * i);
    }
#pragma GCC unroll 8
    for (int i = 0; i < R; ++i) V::store(dst + k0 + L * i, acc[i]);
  }
  for (; k0 + L <= K; k0 += L) {
    f acc = init ? V::load(init + k0) : f{};
    for (int j = 0; j < ntaps; ++j) acc += (f{} + w[j]) * V::load(src[j] + k0);
    V::store(dst + k0, acc);
  }
  if (k0 < K) gather_block(dst, init, src, w, ntaps, k0, K - k0);
}

// The fp32 gathers per ISA.
EG_LANE_VARIANTS(template <typename S>, void, gather_taps,
                 (float* dst, const float* init, const S* const* src, const float* w, int ntaps, int64_t K),
                 (dst, init, src, w, ntaps, K))
void gather_taps(double* dst, const double* init, const double* const* src, const float* w, int ntaps, int64_t K) {
  gather_taps_impl(dst, init, src, w, ntaps, K);
}

// y[k] += w x[k]: the adjoint of one tap, in backward.
EG_INLINE void axpy_body(float* __restrict y, const float* __restrict x, float w, int64_t K) {
  for (int64_t k = 0; k < K; ++k) y[k] += w * x[k];
}
EG_ISA_VARIANTS(, void, axpy, (float* y, const float* x, float w, int64_t K), (y, x, w, K))
void axpy(double* __restrict y, const double* __restrict x, double w, int64_t K) {
  for (int64_t k = 0; k < K; ++k) y[k] += w * x[k];
}

// A tile's linear layer + ReLU in fp32 with a packed weight (Head::fused): y = ReLU(init + x W^T) for T rows,
// x [T, K] (row stride ldx), W [N, K] packed as [N / 2L][K][2L] so that a block's weights stay in L1 for every
// row of the tile, y [T, N] (row stride ldy); init is y itself (bias == nullptr) or the bias row. Per block of 2L
// outputs and R rows the accumulators take the K products in registers and are stored once, ReLU applied: no
// separate bias/ReLU pass and no packing per call (the BLAS call it replaces packed W every tile). Used for
// the first layer's direct groups (y = h, which already holds b1 and the projected groups' taps) and for the
// second layer, member by member.
// With `active` (room for K indices) the inputs k that are zero in every row of a block are skipped: exact, as
// they add nothing (weights are finite; a NaN input counts as nonzero). For the second layer, whose inputs are
// the first layer's ReLU: in the bundled model 49 % of (6-pixel block, unit) pairs are all zero.
constexpr int kFusedRows = 6;  // 6 x 2 accumulators + 2 weights + 1 broadcast: 15 of AVX2's 16 registers

// The columns k < K where any of the kFusedRows rows is nonzero (its bits other than the sign: -0 adds nothing,
// a NaN counts), written to `active` in order; returns their count. The rows' bits are ORed L columns at a time,
// then each column is appended without a branch.
template <int L>
EG_INLINE int64_t nonzero_columns(const float* const* xr, int64_t K, int32_t* active) {
  using V = Lanes<L>;
  using u = typename V::u;
  int64_t nk = 0, k = 0;
  for (; k + L <= K; k += L) {
    u bits{};
    for (int r = 0; r < kFusedRows; ++r) {
      u b;
      const typename V::f v = V::load(xr[r] + k);
      std::memcpy(&b, &v, sizeof b);
      bits |= b;
    }
    bits &= 0x7fffffffu;
    for (int i = 0; i < L; ++i) {
      active[nk] = (int32_t)(k + i);
      nk += bits[i] != 0;
    }
  }
  for (; k < K; ++k) {
    uint32_t bits = 0;
    for (int r = 0; r < kFusedRows; ++r) {
      uint32_t b;
      std::memcpy(&b, xr[r] + k, sizeof b);
      bits |= b;
    }
    active[nk] = (int32_t)k;
    nk += (bits & 0x7fffffffu) != 0;
  }
  return nk;
}

template <int L>
EG_INLINE void linear_relu_body(float* y, int64_t ldy, const float* bias, const float* x, int64_t ldx, int64_t T,
                                int64_t N, int64_t K, const float* wpack, int32_t* active) {
  using V = Lanes<L>;
  using f = typename V::f;
  constexpr int R = kFusedRows, NB = 2 * L;
  for (int64_t t0 = 0; t0 < T; t0 += R) {
    const int rows = (int)std::min<int64_t>(R, T - t0);
    const float* xr[R];
    float* yr[R];
    for (int r = 0; r < R; ++r) {  // rows past T repeat row T-1 and are not stored
      const int64_t t = t0 + std::min(r, rows - 1);
      xr[r] = x + t * ldx;
      yr[r] = y + t * ldy;
    }
    const int64_t nk = active ? nonzero_columns<L>(xr, K, active) : K;
    for (int64_t j0 = 0; j0 < N; j0 += NB) {
      const float* wb = wpack + (j0 / NB) * K * NB;
      f acc0[R], acc1[R];
#pragma GCC unroll 6
      for (int r = 0; r < R; ++r) {
        acc0[r] = V::load((bias ? bias : yr[r]) + j0);
        acc1[r] = V::load((bias ? bias : yr[r]) + j0 + L);
      }
      for (int64_t i = 0; i < nk; ++i) {
        const int64_t k = active ? active[i] : i;
        const f w0 = V::load(wb + k * NB), w1 = V::load(wb + k * NB + L);
#pragma GCC unroll 6
        for (int r = 0; r < R; ++r) {
          const float a = xr[r][k];  // scalar * vector: one broadcast from memory
          acc0[r] += a * w0;
          acc1[r] += a * w1;
        }
      }
      const f zero{};
#pragma GCC unroll 6
      for (int r = 0; r < R; ++r) {
        if (r >= rows) break;
        V::store(yr[r] + j0, acc0[r] < zero ? zero : acc0[r]);  // NaN stays NaN, as relu_
        V::store(yr[r] + j0 + L, acc1[r] < zero ? zero : acc1[r]);
      }
    }
  }
}
EG_LANE_VARIANTS(, void, linear_relu,
                 (float* y, int64_t ldy, const float* bias, const float* x, int64_t ldx, int64_t T, int64_t N,
                  int64_t K, const float* wpack, int32_t* active),
                 (y, ldy, bias, x, ldx, T, N, K, wpack, active))

// The last layer of every member and their mean for one tile in fp32, written straight into the logits:
// out[c * ldo + t] = bias[c] + sum_k z[t * K + k] w[c * K + k] for t < T, c < C, with z [T, K = E*H2] the
// members' second hidden layers side by side and w = w3s (each member's W3 / E side by side). Two pixels at a
// time against blocks of 6 classes: 12 accumulators, each weight load serving both pixels. Replaces a BLAS call
// of a 6-column product plus a strided copy into the logits (6 % of the bundled model's segmentation at N=16).
constexpr int kLogitClasses = 6, kLogitPixels = 2;

template <int L>
EG_INLINE float lanes_sum(typename Lanes<L>::f v) {
  float s = 0;
  for (int i = 0; i < L; ++i) s += v[i];
  return s;
}

template <int L>
EG_INLINE void mean_logits_body(float* out, int64_t ldo, const float* bias, const float* z, int64_t T, int64_t K,
                                const float* w, int64_t C) {
  using V = Lanes<L>;
  using f = typename V::f;
  constexpr int CB = kLogitClasses, PB = kLogitPixels;
  const int64_t kv = K / L * L;
  for (int64_t t0 = 0; t0 < T; t0 += PB) {
    const int pixels = (int)std::min<int64_t>(PB, T - t0);
    const float* zr[PB];
    for (int p = 0; p < PB; ++p) zr[p] = z + (t0 + std::min(p, pixels - 1)) * K;  // a missing pixel repeats
    for (int64_t c0 = 0; c0 < C; c0 += CB) {
      const int classes = (int)std::min<int64_t>(CB, C - c0);
      const float* wr[CB];
      for (int c = 0; c < CB; ++c) wr[c] = w + (c0 + std::min(c, classes - 1)) * K;  // so does a class
      f acc[PB][CB] = {};
      for (int64_t k = 0; k < kv; k += L) {
        f zv[PB];
        for (int p = 0; p < PB; ++p) zv[p] = V::load(zr[p] + k);
#pragma GCC unroll 6
        for (int c = 0; c < CB; ++c) {
          const f wc = V::load(wr[c] + k);
          for (int p = 0; p < PB; ++p) acc[p][c] += zv[p] * wc;
        }
      }
      for (int p = 0; p < pixels; ++p)
        for (int c = 0; c < classes; ++c) {
          float v = bias[c0 + c] + lanes_sum<L>(acc[p][c]);
          for (int64_t k = kv; k < K; ++k) v += zr[p][k] * wr[c][k];
          out[(c0 + c) * ldo + t0 + p] = v;
        }
    }
  }
}
EG_LANE_VARIANTS(, void, mean_logits,
                 (float* out, int64_t ldo, const float* bias, const float* z, int64_t T, int64_t K, const float* w,
                  int64_t C),
                 (out, ldo, bias, z, T, K, w, C))

// 2L outputs per block of linear_relu (16 lanes on AVX-512, 8 elsewhere): a layer runs packed when its width is a
// multiple of it. Python packs the weights in this block size once per ensemble (W [..., N, K] ->
// [..., N / nb, K, nb]) and keys them on it, as the ISA (and so the block) can change at run time.
int64_t packed_block() { return editgan::active_isa() == editgan::Isa::Avx512 ? 32 : 16; }

// Taps of every output row (or column) for one source length, with the source offset already subtracted.
// Nearest uses i0 only (w0 = 1).
std::vector<editgan::LinearTaps> taps_table(int64_t src_len, int64_t offset, int64_t out_len, int64_t mode) {
  std::vector<editgan::LinearTaps> t(out_len);
  for (int64_t o = 0; o < out_len; ++o) {
    if (mode == kBilinear) {
      t[o] = editgan::linear_taps((int)o, (int)src_len, (int)out_len);
    } else {
      int i = editgan::nearest_index((int)o, (int)src_len, (int)out_len);
      t[o] = {i, i, 1.f, 0.f};
    }
    t[o].i0 -= (int)offset;
    t[o].i1 -= (int)offset;
  }
  return t;
}

// The source rows [lo, hi] (inclusive) that output indices [o0, o1) read; Python crops sources to them.
std::vector<int64_t> seg_head_source_range(int64_t src_len, int64_t out_len, int64_t o0, int64_t o1,
                                           int64_t mode) {
  TORCH_CHECK(src_len > 0 && out_len > 0 && 0 <= o0 && o0 < o1 && o1 <= out_len,
              "seg_head_source_range: bad range [", o0, ", ", o1, ") of ", out_len);
  int64_t lo = src_len, hi = -1;
  auto table = taps_table(src_len, 0, out_len, mode);
  for (int64_t o = o0; o < o1; ++o) {
    lo = std::min<int64_t>(lo, table[o].i0);
    hi = std::max<int64_t>(hi, mode == kBilinear ? table[o].i1 : table[o].i0);
  }
  return {lo, hi};
}

// Everything the tile loops share: the groups' sources, taps and weights, and the MLP tail.
struct Head {
  std::vector<at::Tensor> sources, direct;
  // A lazy group (seg_head_infer) has no stored source: its maps' windows (channels first, [N, C_m, rows, cols])
  // are projected with its W1 columns (lazy_weight, [C_g, E*H1], the maps' channels in order) one image at a time
  // into a buffer while that image is computed.
  std::vector<std::vector<at::Tensor>> lazy_maps;
  std::vector<at::Tensor> lazy_weight;
  std::vector<std::vector<editgan::LinearTaps>> ty, tx;
  std::vector<int64_t> rows, cols, K;  // the source window and its channels per pixel
  const int32_t* py;
  const int32_t* px;
  int64_t npix, mode, N, EH1, E, H1, H2, C, tile;
  at::Tensor b1, w2t, w2, b2, w3s, b3mean;  // w2t [E,H1,H2], w3s [C, E*H2] pre-scaled by 1/E
  at::ScalarType dtype;                     // compute dtype: float or double
  bool projected_bf16 = false;              // projected groups stored in bf16 (all of them, or none)
  bool is_direct(int64_t g) const { return direct[g].numel() > 0; }
  bool is_lazy(int64_t g) const { return !lazy_maps[g].empty(); }
  at::Tensor w2t_bf16;                      // defined: the second layer's products run in bf16 (fp32 accumulation)
  // fp32 with E*H1 a multiple of packed_block(): the first layer's direct products run in linear_relu, the direct
  // groups' resampled features side by side in one [T, kd] block (group g's at column doff[g]) and their W1
  // columns packed in w1d_pack. w2_pack defined (fp32, H2 a multiple of packed_block(), no bf16 products): the
  // second layer runs in linear_relu too, member by member.
  bool fused = false;
  int64_t kd = 0;
  std::vector<int64_t> doff;
  at::Tensor w1d_pack, w2_pack;
  // Bilinear projected groups take the separable gather, row by row (projected_taps).
  bool separable = false;
  int64_t nprojected = 0;
};

// A pre-packed weight (Python's, see packed_block) must be given exactly when its layer runs packed, in the
// current block size.
void check_packed(const std::optional<at::Tensor>& pack, bool used, at::IntArrayRef shape, const char* name,
                  const char* layer) {
  const bool given = pack.has_value() && pack->defined();
  TORCH_CHECK(given == used, "seg_head: ", name, given ? " given, but packed weights are not used for "
                                                       : " missing: packed weights are needed for ",
              layer, given ? "" : " (float32, width a multiple of seg_head_packed_block())");
  if (used)
    TORCH_CHECK(pack->scalar_type() == at::kFloat && pack->is_contiguous() && pack->sizes() == shape, "seg_head: ",
                name, " must be a contiguous float32 tensor of shape ", shape, " (block ", packed_block(),
                " = seg_head_packed_block()), got ", pack->scalar_type(), " ", pack->sizes());
}

Head make_head(const std::vector<at::Tensor>& sources, const std::vector<at::Tensor>& direct,
               at::IntArrayRef sizes, at::IntArrayRef offsets, const at::Tensor& pix_y, const at::Tensor& pix_x,
               int64_t out_h, int64_t out_w, int64_t mode, const at::Tensor& b1, const at::Tensor& w2,
               const at::Tensor& b2, const at::Tensor& w3, const at::Tensor& b3, int64_t tile_pixels,
               bool bf16_products, bool packed, bool separable, const std::optional<at::Tensor>& w1d_pack,
               const std::optional<at::Tensor>& w2_pack, at::TensorList lazy_maps = {},
               at::IntArrayRef lazy_groups = {}, at::TensorList lazy_weights = {}) {
  Head h;
  const int64_t G = (int64_t)sources.size();
  TORCH_CHECK(lazy_maps.size() == lazy_groups.size() && (lazy_maps.empty() || (int64_t)lazy_weights.size() == G),
              "seg_head: maps and map_groups need one entry per map, group_weights one per group");
  h.lazy_maps.resize(G);
  h.lazy_weight.resize(G);
  for (size_t i = 0; i < lazy_maps.size(); ++i) {
    TORCH_CHECK(0 <= lazy_groups[i] && lazy_groups[i] < G, "seg_head: map ", i, " names group ", lazy_groups[i],
                " of ", G);
    h.lazy_maps[lazy_groups[i]].push_back(lazy_maps[i]);
    h.lazy_weight[lazy_groups[i]] = lazy_weights[lazy_groups[i]];
  }
  TORCH_CHECK(G > 0 && (int64_t)direct.size() == G && (int64_t)sizes.size() == 2 * G &&
                  (int64_t)offsets.size() == 2 * G,
              "seg_head: sources, direct_weights, source_sizes and source_offsets must describe the same groups");
  TORCH_CHECK(mode == kBilinear || mode == kNearest, "seg_head: mode must be 0 (bilinear) or 1 (nearest)");
  TORCH_CHECK(pix_y.scalar_type() == at::kInt && pix_x.scalar_type() == at::kInt && pix_y.is_contiguous() &&
                  pix_x.is_contiguous() && pix_y.numel() == pix_x.numel(),
              "seg_head: pixel coordinates must be contiguous int32 vectors of equal length");
  h.dtype = b1.scalar_type();
  TORCH_CHECK(h.dtype == at::kFloat || h.dtype == at::kDouble, "seg_head: weights must be float32 or float64");
  h.E = w2.size(0);
  h.H2 = w2.size(1);
  h.H1 = w2.size(2);
  h.EH1 = h.E * h.H1;
  h.C = w3.size(1);
  TORCH_CHECK(b1.dim() == 1 && b1.size(0) == h.EH1 && b2.sizes() == at::IntArrayRef({h.E, h.H2}) &&
                  w3.sizes() == at::IntArrayRef({h.E, h.C, h.H2}) && b3.sizes() == at::IntArrayRef({h.E, h.C}),
              "seg_head: inconsistent MLP weight shapes");
  h.npix = pix_y.numel();
  h.py = pix_y.data_ptr<int32_t>();
  h.px = pix_x.data_ptr<int32_t>();
  h.mode = mode;
  bool seen_projected = false;
  h.N = -1;
  for (int64_t g = 0; g < G; ++g) {
    if (h.is_lazy(g)) {  // rows, cols and the batch from the maps' windows
      const at::Tensor& m0 = h.lazy_maps[g][0];
      if (h.N < 0) h.N = m0.size(0);
      int64_t channels = 0;
      for (const at::Tensor& x : h.lazy_maps[g]) {
        TORCH_CHECK(x.dim() == 4 && x.size(0) == h.N && x.size(2) == m0.size(2) && x.size(3) == m0.size(3) &&
                        x.scalar_type() == h.dtype,
                    "seg_head: the maps of lazy group ", g, " must be [N, C_m, rows, cols] windows of one size in "
                    "the compute dtype");
        channels += x.size(1);
      }
      const at::Tensor& w = h.lazy_weight[g];
      TORCH_CHECK(w.is_contiguous() && w.scalar_type() == h.dtype && w.sizes() == at::IntArrayRef({channels, h.EH1}),
                  "seg_head: lazy group ", g, " needs a contiguous [C_g, E*H1] weight in the compute dtype");
      TORCH_CHECK(direct[g].numel() == 0, "seg_head: lazy group ", g, " cannot also be direct");
      h.rows.push_back(m0.size(2));
      h.cols.push_back(m0.size(3));
      h.K.push_back(h.EH1);
    } else {
      const at::Tensor& s = sources[g];
      if (h.N < 0) h.N = s.size(0);
      TORCH_CHECK(s.dim() == 4 && s.is_contiguous() && s.size(0) == h.N, "seg_head: source ", g,
                  " must be a contiguous [N, rows, cols, K] tensor with the batch of the other groups");
      h.rows.push_back(s.size(1));
      h.cols.push_back(s.size(2));
      h.K.push_back(s.size(3));
      if (direct[g].numel() > 0) {
        TORCH_CHECK(s.scalar_type() == h.dtype && direct[g].scalar_type() == h.dtype &&
                        direct[g].sizes() == at::IntArrayRef({h.EH1, s.size(3)}),
                    "seg_head: direct group ", g, " needs features and a [E*H1, K] weight in the compute dtype");
      } else {
        TORCH_CHECK(s.size(3) == h.EH1, "seg_head: projected group ", g, " must have E*H1 channels");
        TORCH_CHECK(s.scalar_type() == h.dtype || (h.dtype == at::kFloat && s.scalar_type() == at::kBFloat16),
                    "seg_head: projected group ", g, " must be stored in the compute dtype or bfloat16");
        const bool bf16 = s.scalar_type() == at::kBFloat16;
        TORCH_CHECK(!seen_projected || bf16 == h.projected_bf16,
                    "seg_head: projected groups must all share one storage dtype");
        h.projected_bf16 = bf16;
        seen_projected = true;
      }
    }
    h.ty.push_back(taps_table(sizes[2 * g], offsets[2 * g], out_h, mode));
    h.tx.push_back(taps_table(sizes[2 * g + 1], offsets[2 * g + 1], out_w, mode));
    // Every tap of a requested pixel must land inside the stored window (Python crops it to these taps).
    if (h.npix > 0) {
      auto inside = [](const std::vector<editgan::LinearTaps>& t, int64_t o, int64_t len) {
        return t[o].i0 >= 0 && t[o].i0 < len && t[o].i1 >= 0 && t[o].i1 < len;
      };
      const int64_t y_first = h.py[0], y_last = h.py[h.npix - 1];
      TORCH_CHECK(y_first >= 0 && y_last < out_h && inside(h.ty[g], y_first, h.rows[g]) &&
                      inside(h.ty[g], y_last, h.rows[g]),
                  "seg_head: source ", g, " does not cover the requested rows");
    }
    h.sources.push_back(sources[g]);
    h.direct.push_back(direct[g]);
  }
  TORCH_CHECK(!h.projected_bf16 || lazy_maps.empty(),
              "seg_head: lazy groups are projected in the compute dtype, not beside bf16-stored projections");
  for (int64_t i = 0; i < h.npix; ++i) {
    TORCH_CHECK(h.px[i] >= 0 && h.px[i] < out_w && (i == 0 || h.py[i] >= h.py[i - 1]),
                "seg_head: pixel list must be row-major inside the output");
    for (int64_t g = 0; g < G; ++g) {
      const auto& t = h.tx[g][h.px[i]];
      TORCH_CHECK(t.i0 >= 0 && t.i1 >= 0 && t.i0 < h.cols[g] && t.i1 < h.cols[g], "seg_head: source ", g,
                  " does not cover the requested columns");
    }
  }
  h.b1 = b1;
  const int64_t nb = packed_block();
  h.fused = packed && h.dtype == at::kFloat && h.EH1 % nb == 0;
  for (int64_t g = 0; g < G; ++g) {
    h.doff.push_back(h.kd);
    if (h.is_direct(g)) h.kd += h.K[g];
  }
  check_packed(w1d_pack, h.fused && h.kd > 0, {h.EH1 / nb, h.kd, nb}, "w1d_pack",
               "the first layer's direct products");
  if (h.fused && h.kd > 0) h.w1d_pack = *w1d_pack;  // [E*H1 / nb, kd, nb]
  check_packed(w2_pack, packed && h.dtype == at::kFloat && h.H2 % nb == 0 && !bf16_products,
               {h.E, h.H2 / nb, h.H1, nb}, "w2_pack", "the second layer");
  if (w2_pack.has_value() && w2_pack->defined()) h.w2_pack = *w2_pack;  // [E, H2 / nb, H1, nb]
  h.separable = separable && mode == kBilinear;
  for (int64_t g = 0; g < G; ++g) h.nprojected += !h.is_direct(g);
  h.w2 = w2;
  h.w2t = w2.transpose(1, 2);
  TORCH_CHECK(!bf16_products || h.dtype == at::kFloat, "seg_head: bf16 products need float32 weights");
  if (bf16_products) h.w2t_bf16 = h.w2t.to(at::kBFloat16);
  h.b2 = b2.contiguous().unsqueeze(1);  // [E, 1, H2]; linear_relu reads member e's row at e * H2
  h.w3s = w3.permute({1, 0, 2}).reshape({h.C, h.E * h.H2}) / (double)h.E;
  h.b3mean = b3.mean(0);
  // By default, tiles with a [tile, E*H1] hidden block of ~2.5 MB (250 pixels at the car configuration), at most
  // 256 pixels: the per-tile products need that many rows to run near matmul rate (measured 2 threads, car head:
  // 38-pixel tiles that kept the block in a 1 MiB L2 took 9.3-9.8 s, 256-1024-pixel tiles ~8.0 s; with the
  // packed kernel 102/128/250 pixels 4.95/5.25/4.89 s), while a narrower head gains from the smaller block
  // (bundled model, E*H1 = 1024: 256 instead of 512 pixels, 13.3-13.4 vs 14.0-14.2 ms/image at N=16; N=1 within
  // noise, 16.5-16.9 vs 16.6-17.1).
  h.tile = tile_pixels > 0 ? tile_pixels
                           : std::max<int64_t>(16, std::min<int64_t>(256, (640 * 1024) / std::max<int64_t>(h.EH1, 1)));
  return h;
}

// Appends the taps of output pixel (y, x) in group g (nonzero weights only: a map at output size, or a pixel
// at the border, has fewer than 4) to src/w.
template <typename S>
void pixel_taps(const Head& hd, int64_t g, const void* image, int64_t y, int64_t x, const S** src, float* w,
                int& ntaps) {
  const int64_t K = hd.K[g], cols = hd.cols[g];
  const S* base = static_cast<const S*>(image);
  const auto& ty = hd.ty[g][y];
  const auto& tx = hd.tx[g][x];
  auto add = [&](int64_t iy, int64_t ix, float wt) {
    if (wt != 0.f) {
      src[ntaps] = base + (iy * cols + ix) * K;
      w[ntaps++] = wt;
    }
  };
  if (hd.mode == kNearest) {
    add(ty.i0, tx.i0, 1.f);
  } else {
    add(ty.i0, tx.i0, ty.w0 * tx.w0);
    add(ty.i0, tx.i1, ty.w0 * tx.w1);
    add(ty.i1, tx.i0, ty.w1 * tx.w0);
    add(ty.i1, tx.i1, ty.w1 * tx.w1);
  }
}

// Where each group's source of image n starts: in its stored source, or (lazy groups) in `projected[g]`, the
// image's projection made by project_image.
using Bases = std::vector<const void*>;

Bases stored_bases(const Head& hd, int64_t n) {
  Bases b(hd.sources.size(), nullptr);
  for (size_t g = 0; g < b.size(); ++g)
    if (!hd.is_lazy(g))
      b[g] = static_cast<const char*>(hd.sources[g].data_ptr()) +
             n * hd.rows[g] * hd.cols[g] * hd.K[g] * hd.sources[g].element_size();
  return b;
}

// Image n's projection of every lazy group into projected[g] ([rows * cols, E*H1]): P = sum_m x_m^T W1_m^T, one
// product per map reading its channels-first window as a transposed matrix (no copy when the window spans whole
// rows of the map; stacking the maps into one product measured the same). Runs single-threaded inside a
// parallel region, multi-threaded outside.
Bases project_image(const Head& hd, int64_t n, std::vector<at::Tensor>& projected) {
  Bases b = stored_bases(hd, n);
  for (size_t g = 0; g < b.size(); ++g) {
    if (!hd.is_lazy(g)) continue;
    int64_t c0 = 0;
    for (const at::Tensor& map : hd.lazy_maps[g]) {
      const at::Tensor x = map[n].reshape({map.size(1), hd.rows[g] * hd.cols[g]}).t();
      const at::Tensor w = hd.lazy_weight[g].narrow(0, c0, map.size(1));  // this map's rows of W1_g^T
      if (c0 == 0) at::mm_out(projected[g], x, w);
      else projected[g].addmm_(x, w);
      c0 += map.size(1);
    }
    b[g] = projected[g].data_ptr();
  }
  return b;
}

std::vector<at::Tensor> projection_buffers(const Head& hd) {
  std::vector<at::Tensor> out(hd.sources.size());
  for (size_t g = 0; g < out.size(); ++g)
    if (hd.is_lazy(g)) out[g] = at::empty({hd.rows[g] * hd.cols[g], hd.EH1}, hd.b1.options());
  return out;
}

int64_t max_direct_channels(const Head& hd) {
  int64_t k = 1;
  for (size_t g = 0; g < hd.sources.size(); ++g)
    if (hd.is_direct(g)) k += hd.K[g];  // all of them side by side (fused_tile)
  return k;
}

// Per thread: the hidden block of one tile, the direct groups' resampled features, the lazy projections, and
// the separable gather's interpolated rows (one [cols, E*H1] row per projected group, compute dtype) with its
// per-run bookkeeping, and the second layer's list of nonzero inputs.
struct Scratch {
  at::Tensor h, direct;
  std::vector<at::Tensor> projected, rows;
  std::vector<char> separable;   // per group: takes its taps from rows[g] in the current run
  std::vector<const void*> src;  // one pixel's taps: 2 per separable group, or pixel_taps' 4
  std::vector<float> w;
  std::vector<int32_t> active;   // the packed second layer's nonzero inputs of one block (linear_relu)
  Scratch(const Head& hd, bool with_projections)
      : h(at::empty({hd.tile, hd.EH1}, hd.b1.options())),
        direct(at::empty({hd.tile * max_direct_channels(hd)}, hd.b1.options())),
        rows(hd.sources.size()),
        separable(hd.sources.size(), 0),
        src(std::max<size_t>(4, 2 * hd.sources.size())),
        w(std::max<size_t>(4, 2 * hd.sources.size())),
        active(hd.H1) {
    if (with_projections) projected = projection_buffers(hd);
    if (hd.separable)
      for (size_t g = 0; g < rows.size(); ++g)
        if (!hd.is_direct(g)) rows[g] = at::empty({hd.cols[g] * hd.EH1}, hd.b1.options());
  }
};

// Projected group g's taps (pixel_taps: up to 4 from its source of type S) for the pixels [p0, p0 + T), added
// to h's rows, or to b1 when they are the rows' first contribution.
template <typename scalar_t, typename S>
void group_taps(const Head& hd, int64_t g, const void* base, int64_t p0, int64_t T, scalar_t* hp, bool first) {
  const scalar_t* b1 = hd.b1.data_ptr<scalar_t>();
  const S* src[4];
  float w[4];
  for (int64_t t = 0; t < T; ++t) {
    int ntaps = 0;
    pixel_taps(hd, g, base, hd.py[p0 + t], hd.px[p0 + t], src, w, ntaps);
    scalar_t* d = hp + t * hd.EH1;
    gather_taps(d, first ? b1 : d, src, w, ntaps, hd.EH1);
  }
}

// A group's interpolated row pays off when building it (2 reads + 1 write per source column of the run's span)
// costs less than the 2 taps per pixel it saves: full rows of upsampled maps, not sparse region rows.
bool row_pays_off(int64_t span_cols, int64_t npix) { return 3 * span_cols <= 2 * npix; }

// The separable gather for the run [q0, q0 + n) of pixels on one output row y (bilinear). Resampling is separable:
// out[y, x] = sum_j H[x, j] (sum_i V[y, i] P[i, j]). A group whose row pays off first gets its row
// R_g[j] = V[y, i0] P[i0, j] + V[y, i1] P[i1, j] over the columns the run reads (into sc.rows[g], which stays
// in cache), then each pixel sums 2 taps of R_g per such group, all of them in one pass over its h row.
// Marks those groups in sc.separable; returns whether there were any (then h's rows hold b1 + their taps).
template <typename scalar_t, typename S>
bool separable_run(const Head& hd, const Bases& bases, int64_t q0, int64_t n, scalar_t* hp, Scratch& sc) {
  const int64_t G = (int64_t)hd.sources.size(), K = hd.EH1;
  const int64_t y = hd.py[q0];
  bool any = false;
  for (int64_t g = 0; g < G; ++g) {
    sc.separable[g] = 0;
    if (hd.is_direct(g)) continue;
    // Taps are monotone in x along the row-major run: its span is [first pixel's i0, last pixel's i1].
    const int64_t c0 = hd.tx[g][hd.px[q0]].i0, c1 = hd.tx[g][hd.px[q0 + n - 1]].i1;
    if (!row_pays_off(c1 - c0 + 1, n)) continue;
    const auto& ty = hd.ty[g][y];
    const S* base = static_cast<const S*>(bases[g]);
    const int64_t cols = hd.cols[g];
    const S* rsrc[2];
    float rw[2];
    int ntaps = 0;
    for (const auto& [i, wt] : {std::pair<int64_t, float>{ty.i0, ty.w0}, {ty.i1, ty.w1}}) {
      if (wt == 0.f) continue;  // a border row
      rsrc[ntaps] = base + (i * cols + c0) * K;
      rw[ntaps++] = wt;
    }
    gather_taps(sc.rows[g].template data_ptr<scalar_t>() + c0 * K, static_cast<const scalar_t*>(nullptr), rsrc, rw,
                ntaps, (c1 - c0 + 1) * K);
    sc.separable[g] = 1;
    any = true;
  }
  if (!any) return false;
  const scalar_t* b1 = hd.b1.data_ptr<scalar_t>();
  const scalar_t** src = reinterpret_cast<const scalar_t**>(sc.src.data());
  float* w = sc.w.data();
  for (int64_t t = 0; t < n; ++t) {
    const int64_t x = hd.px[q0 + t];
    int ntaps = 0;
    for (int64_t g = 0; g < G; ++g) {
      if (!sc.separable[g]) continue;
      const scalar_t* row = sc.rows[g].template data_ptr<scalar_t>();
      const auto& tx = hd.tx[g][x];
      for (const auto& [i, wt] : {std::pair<int64_t, float>{tx.i0, tx.w0}, {tx.i1, tx.w1}}) {
        if (wt == 0.f) continue;
        src[ntaps] = row + i * K;
        w[ntaps++] = wt;
      }
    }
    gather_taps(hp + t * K, b1, src, w, ntaps, K);
  }
  return true;
}

// The projected groups' part of the first layer for the tile's pixels: h = b1 + their taps. Bilinear (with the
// separable gather) run by run of one output row: the groups whose row pays off in one pass, then the others;
// nearest (1 tap) or without it, the whole tile at once. The latter go group by group (a few source streams at a
// time, which the hardware prefetchers follow; all groups' taps at once would be ~28 streams), each pixel's taps
// summed in registers and added to h once.
template <typename scalar_t, typename S>
void projected_taps(const Head& hd, const Bases& bases, int64_t p0, int64_t T, scalar_t* hp, Scratch& sc) {
  const int64_t G = (int64_t)hd.sources.size();
  for (int64_t a = 0; a < T;) {
    int64_t b = T;
    if (hd.separable)
      for (b = a + 1; b < T && hd.py[p0 + b] == hd.py[p0 + a];) ++b;
    scalar_t* run = hp + a * hd.EH1;
    bool first = !(hd.separable && separable_run<scalar_t, S>(hd, bases, p0 + a, b - a, run, sc));
    for (int64_t g = 0; g < G; ++g) {
      if (hd.is_direct(g) || (hd.separable && sc.separable[g])) continue;
      group_taps<scalar_t, S>(hd, g, bases[g], p0 + a, b - a, run, first);
      first = false;
    }
    a = b;
  }
}

// The tile's first layer a1 [T, E*H1] = ReLU(b1 + all groups' contributions).
template <typename scalar_t>
void hidden_tile(const Head& hd, const Bases& bases, int64_t p0, int64_t T, at::Tensor& h, Scratch& sc) {
  const int64_t G = (int64_t)hd.sources.size();
  scalar_t* hp = h.data_ptr<scalar_t>();
  if (hd.nprojected == 0) {
    h.copy_(hd.b1.unsqueeze(0).expand({T, hd.EH1}));
  } else if constexpr (std::is_same_v<scalar_t, float>) {
    if (hd.projected_bf16) projected_taps<float, uint16_t>(hd, bases, p0, T, hp, sc);
    else projected_taps<float, float>(hd, bases, p0, T, hp, sc);
  } else {
    projected_taps<scalar_t, scalar_t>(hd, bases, p0, T, hp, sc);
  }
  // The direct groups: resampled into sc.direct (side by side when fused), then their products.
  at::Tensor& buf = sc.direct;
  const scalar_t** src = reinterpret_cast<const scalar_t**>(sc.src.data());
  float* w = sc.w.data();
  const int64_t ld = hd.fused ? hd.kd : 0;
  for (int64_t g = 0; g < G; ++g) {
    if (!hd.is_direct(g)) continue;
    const int64_t K = hd.K[g];
    scalar_t* bp = buf.data_ptr<scalar_t>() + (hd.fused ? hd.doff[g] : 0);
    for (int64_t t = 0; t < T; ++t) {
      int ntaps = 0;
      pixel_taps(hd, g, bases[g], hd.py[p0 + t], hd.px[p0 + t], src, w, ntaps);
      gather_taps(bp + t * (hd.fused ? ld : K), static_cast<const scalar_t*>(nullptr), src, w, ntaps, K);
    }
    if (!hd.fused) h.addmm_(buf.narrow(0, 0, T * K).view({T, K}), hd.direct[g].t());
  }
  if constexpr (std::is_same_v<scalar_t, float>) {
    if (hd.fused) {
      linear_relu(hp, hd.EH1, nullptr, buf.data_ptr<float>(), hd.kd, T, hd.EH1, hd.kd,
                  hd.kd > 0 ? hd.w1d_pack.data_ptr<float>() : nullptr, nullptr);  // dense inputs: no skipping
      return;
    }
  }
  h.relu_();
}

// Both hidden layers of every member for one tile, shared by forward and backward (which recomputes them):
// a1 = ReLU(first layer) written into `a1` [T, E*H1], returns ReLU(second layer) [E, T, H2].
template <typename scalar_t>
at::Tensor hidden_layers(const Head& hd, const Bases& bases, int64_t p0, int64_t T, at::Tensor& a1, Scratch& sc) {
  hidden_tile<scalar_t>(hd, bases, p0, T, a1, sc);
  if (hd.w2_pack.defined()) {  // z [T, E, H2] in memory, returned as the [E, T, H2] view
    at::Tensor z = at::empty({T, hd.E, hd.H2}, a1.options());
    for (int64_t e = 0; e < hd.E; ++e)
      linear_relu(z.data_ptr<float>() + e * hd.H2, hd.E * hd.H2, hd.b2.data_ptr<float>() + e * hd.H2,
                  a1.data_ptr<float>() + e * hd.H1, hd.EH1, T, hd.H2, hd.H1,
                  hd.w2_pack.data_ptr<float>() + e * hd.H2 * hd.H1, sc.active.data());
    return z.transpose(0, 1);
  }
  at::Tensor a1e = a1.view({T, hd.E, hd.H1}).transpose(0, 1);
  at::Tensor z = hd.w2t_bf16.defined() ? at::bmm(a1e.to(at::kBFloat16), hd.w2t_bf16).to(at::kFloat)
                                       : at::bmm(a1e, hd.w2t);  // [E, T, H2]
  return z.add_(hd.b2).relu_();
}

template <typename scalar_t>
void forward_tile(const Head& hd, const Bases& bases, int64_t n, int64_t ti, Scratch& sc, at::Tensor& out) {
  const int64_t p0 = ti * hd.tile, T = std::min(hd.tile, hd.npix - p0);
  at::Tensor h = sc.h.narrow(0, 0, T);
  at::Tensor z = hidden_layers<scalar_t>(hd, bases, p0, T, h, sc);
  // [T, E*H2], contiguous: a view of the packed layer's [T, E, H2], else a copy of the batched product's rows.
  const at::Tensor zt = z.transpose(0, 1).reshape({T, hd.E * hd.H2});
  if constexpr (std::is_same_v<scalar_t, float>) {
    mean_logits(out[n].data_ptr<float>() + p0, hd.npix, hd.b3mean.data_ptr<float>(), zt.data_ptr<float>(), T,
                hd.E * hd.H2, hd.w3s.data_ptr<float>(), hd.C);
  } else {
    out[n].narrow(1, p0, T).copy_(at::addmm(hd.b3mean, zt, hd.w3s.t()).t());
  }
}

// Work split over the threads: while at least as many images remain as there are threads, each thread takes
// whole images (their projections and all their tiles, one after the other): no barrier per image, and an
// image's projections stay in its thread's cache. The images left over (a single-image call: the real-time
// path) are split by tiles, after their projections ran multi-threaded.
template <typename scalar_t>
void forward_impl(const Head& hd, at::Tensor& out) {
  const int64_t ntiles = (hd.npix + hd.tile - 1) / hd.tile;
  const int64_t threads = at::get_num_threads();
  const int64_t whole = threads > 1 ? hd.N / threads * threads : hd.N;
  // Images are handed out one at a time (not in fixed halves): on a shared machine a thread that loses its core
  // for a while does fewer images instead of holding the others at the end.
  std::atomic<int64_t> next{0};
  at::parallel_for(0, std::min(threads, whole), 1, [&](int64_t, int64_t) {
    at::NoGradGuard no_grad;
    Scratch sc(hd, true);
    for (int64_t n = next++; n < whole; n = next++) {
      const Bases bases = project_image(hd, n, sc.projected);
      for (int64_t ti = 0; ti < ntiles; ++ti) forward_tile<scalar_t>(hd, bases, n, ti, sc, out);
    }
  });
  std::vector<at::Tensor> projected = whole < hd.N ? projection_buffers(hd) : std::vector<at::Tensor>();
  for (int64_t n = whole; n < hd.N; ++n) {
    const Bases bases = project_image(hd, n, projected);
    at::parallel_for(0, ntiles, 1, [&](int64_t t0, int64_t t1) {
      at::NoGradGuard no_grad;
      Scratch sc(hd, false);
      for (int64_t ti = t0; ti < t1; ++ti) forward_tile<scalar_t>(hd, bases, n, ti, sc, out);
    });
  }
}

// Per-thread accumulation window of one group's source-resolution gradient: the rows its pixel run touches.
struct Window {
  int64_t row0 = 0, nrows = 0;
  at::Tensor acc;  // [nrows, cols, K]
};

template <typename scalar_t>
std::vector<at::Tensor> backward_impl(const Head& hd, const at::Tensor& grad_out) {
  const int64_t G = (int64_t)hd.sources.size();
  const int64_t ntiles = (hd.npix + hd.tile - 1) / hd.tile;
  const auto opts = hd.b1.options();
  std::vector<at::Tensor> grads;
  for (int64_t g = 0; g < G; ++g)
    grads.push_back(at::zeros({hd.N, hd.rows[g], hd.cols[g], hd.sources[g].size(3)}, opts));
  std::mutex merge;
  for (int64_t n = 0; n < hd.N; ++n) {
    const Bases bases = stored_bases(hd, n);
    at::parallel_for(0, ntiles, 1, [&](int64_t t0, int64_t t1) {
      at::NoGradGuard no_grad;
      const int64_t pbeg = t0 * hd.tile, pend = std::min(hd.npix, t1 * hd.tile);
      std::vector<Window> win(G);
      for (int64_t g = 0; g < G; ++g) {
        // Pixels are row-major, so the run's source rows lie between the taps of its first and last row.
        const auto& first = hd.ty[g][hd.py[pbeg]];
        const auto& last = hd.ty[g][hd.py[pend - 1]];
        win[g].row0 = std::min(first.i0, first.i1);
        win[g].nrows = std::max(last.i0, last.i1) - win[g].row0 + 1;
        win[g].acc = at::zeros({win[g].nrows, hd.cols[g], hd.sources[g].size(3)}, opts);
      }
      Scratch sc(hd, false);
      for (int64_t ti = t0; ti < t1; ++ti) {
        const int64_t p0 = ti * hd.tile, T = std::min(hd.tile, hd.npix - p0);
        at::Tensor a1 = sc.h.narrow(0, 0, T);
        at::Tensor z = hidden_layers<scalar_t>(hd, bases, p0, T, a1, sc);
        // dL/dlogits_e = dL/dmean / E (folded into w3s); back through Linear, ReLU, Linear, ReLU.
        at::Tensor ga2 = at::mm(grad_out[n].narrow(1, p0, T).t(), hd.w3s);  // [T, E*H2]
        at::Tensor gz = at::threshold_backward(ga2.view({T, hd.E, hd.H2}).transpose(0, 1), z, 0);
        at::Tensor ga1 = at::bmm(gz, hd.w2);  // [E, T, H1]
        at::Tensor gh = at::threshold_backward(ga1.transpose(0, 1), a1.view({T, hd.E, hd.H1}), 0)
                            .contiguous()
                            .view({T, hd.EH1});
        for (int64_t g = 0; g < G; ++g) {
          at::Tensor gsrc = gh;
          if (hd.is_direct(g)) gsrc = at::mm(gh, hd.direct[g]).contiguous();  // [T, C_g]
          const int64_t K = gsrc.size(1), cols = hd.cols[g];
          const scalar_t* gp = gsrc.data_ptr<scalar_t>();
          scalar_t* acc = win[g].acc.template data_ptr<scalar_t>();
          const int64_t r0 = win[g].row0;
          for (int64_t t = 0; t < T; ++t) {
            const auto& ty = hd.ty[g][hd.py[p0 + t]];
            const auto& tx = hd.tx[g][hd.px[p0 + t]];
            const scalar_t* src = gp + t * K;
            if (hd.mode == kNearest) {
              axpy(acc + ((ty.i0 - r0) * cols + tx.i0) * K, src, 1.f, K);
            } else {
              axpy(acc + ((ty.i0 - r0) * cols + tx.i0) * K, src, ty.w0 * tx.w0, K);
              axpy(acc + ((ty.i0 - r0) * cols + tx.i1) * K, src, ty.w0 * tx.w1, K);
              axpy(acc + ((ty.i1 - r0) * cols + tx.i0) * K, src, ty.w1 * tx.w0, K);
              axpy(acc + ((ty.i1 - r0) * cols + tx.i1) * K, src, ty.w1 * tx.w1, K);
            }
          }
        }
      }
      std::lock_guard<std::mutex> lock(merge);
      for (int64_t g = 0; g < G; ++g) grads[g][n].narrow(0, win[g].row0, win[g].nrows).add_(win[g].acc);
    });
  }
  return grads;
}

at::Tensor seg_head_forward(at::TensorList sources, at::TensorList direct, at::IntArrayRef sizes,
                            at::IntArrayRef offsets, const at::Tensor& pix_y, const at::Tensor& pix_x,
                            int64_t out_h, int64_t out_w, int64_t mode, const at::Tensor& b1, const at::Tensor& w2,
                            const at::Tensor& b2, const at::Tensor& w3, const at::Tensor& b3, int64_t tile_pixels,
                            bool bf16_products, bool packed, bool separable,
                            const std::optional<at::Tensor>& w1d_pack, const std::optional<at::Tensor>& w2_pack) {
  Head hd = make_head(sources.vec(), direct.vec(), sizes, offsets, pix_y, pix_x, out_h, out_w, mode, b1, w2, b2,
                      w3, b3, tile_pixels, bf16_products, packed, separable, w1d_pack, w2_pack);
  at::Tensor out = at::empty({hd.N, hd.C, hd.npix}, b1.options());
  if (hd.npix == 0) return out;
  if (hd.dtype == at::kFloat) forward_impl<float>(hd, out);
  else forward_impl<double>(hd, out);
  return out;
}

// Inference (no autograd): like seg_head_forward, but the projected groups may be lazy -- their maps' windows
// `maps` (channels first, [N, C_m, rows, cols]), map i in group map_groups[i], with the group's W1 columns
// `group_weights[g]` ([C_g, E*H1], the maps' channels in order; empty for other groups; its `sources` entry is
// then ignored) -- projected one image at a time inside the kernel,
// so a batch never holds every image's projections at once and each image's stay in cache while its tiles run.
at::Tensor seg_head_infer(at::TensorList sources, at::TensorList direct, at::TensorList maps,
                          at::IntArrayRef map_groups, at::TensorList group_weights, at::IntArrayRef sizes,
                          at::IntArrayRef offsets, const at::Tensor& pix_y, const at::Tensor& pix_x, int64_t out_h,
                          int64_t out_w, int64_t mode, const at::Tensor& b1, const at::Tensor& w2,
                          const at::Tensor& b2, const at::Tensor& w3, const at::Tensor& b3, int64_t tile_pixels,
                          bool packed, bool separable, const std::optional<at::Tensor>& w1d_pack,
                          const std::optional<at::Tensor>& w2_pack) {
  Head hd = make_head(sources.vec(), direct.vec(), sizes, offsets, pix_y, pix_x, out_h, out_w, mode, b1, w2, b2,
                      w3, b3, tile_pixels, false, packed, separable, w1d_pack, w2_pack, maps, map_groups,
                      group_weights);
  at::Tensor out = at::empty({hd.N, hd.C, hd.npix}, b1.options());
  if (hd.npix == 0) return out;
  if (hd.dtype == at::kFloat) forward_impl<float>(hd, out);
  else forward_impl<double>(hd, out);
  return out;
}

std::vector<at::Tensor> seg_head_backward(const at::Tensor& grad_out, at::TensorList sources,
                                          at::TensorList direct, at::IntArrayRef sizes, at::IntArrayRef offsets,
                                          const at::Tensor& pix_y, const at::Tensor& pix_x, int64_t out_h,
                                          int64_t out_w, int64_t mode, const at::Tensor& b1, const at::Tensor& w2,
                                          const at::Tensor& b2, const at::Tensor& w3, const at::Tensor& b3,
                                          int64_t tile_pixels, bool bf16_products, bool packed, bool separable,
                                          const std::optional<at::Tensor>& w1d_pack,
                                          const std::optional<at::Tensor>& w2_pack) {
  Head hd = make_head(sources.vec(), direct.vec(), sizes, offsets, pix_y, pix_x, out_h, out_w, mode, b1, w2, b2,
                      w3, b3, tile_pixels, bf16_products, packed, separable, w1d_pack, w2_pack);
  TORCH_CHECK(grad_out.sizes() == at::IntArrayRef({hd.N, hd.C, hd.npix}) && grad_out.scalar_type() == hd.dtype,
              "seg_head_backward: grad_out must be [N, C, P] in the compute dtype");
  if (hd.npix == 0) {
    std::vector<at::Tensor> zeros;
    for (size_t g = 0; g < hd.sources.size(); ++g)
      zeros.push_back(at::zeros({hd.N, hd.rows[g], hd.cols[g], hd.sources[g].size(3)}, b1.options()));
    return zeros;
  }
  if (hd.dtype == at::kFloat) return backward_impl<float>(hd, grad_out);
  return backward_impl<double>(hd, grad_out);
}

}  // namespace

// Optional trailing arguments: `separable` (the bilinear projected groups' separable gather; False: 4 taps per
// pixel from the projections, for A/B benchmarks and tests), `w1d_pack` / `w2_pack` (the packed layers' weights,
// see packed_block; given exactly when that layer runs packed).
TORCH_LIBRARY_FRAGMENT(editgan_fast, m) {
  m.def("seg_head_source_range(int src_len, int out_len, int o0, int o1, int mode) -> int[]",
        &seg_head_source_range);
  m.def("seg_head_packed_block() -> int", [] { return packed_block(); });
  m.def(
      "seg_head_forward(Tensor[] sources, Tensor[] direct_weights, int[] source_sizes, int[] source_offsets, "
      "Tensor pix_y, Tensor pix_x, int out_h, int out_w, int mode, Tensor b1, Tensor w2, Tensor b2, Tensor w3, "
      "Tensor b3, int tile_pixels=0, bool bf16_products=False, bool packed=True, bool separable=True, "
      "Tensor? w1d_pack=None, Tensor? w2_pack=None) -> Tensor");
  m.def(
      "seg_head_infer(Tensor[] sources, Tensor[] direct_weights, Tensor[] maps, int[] map_groups, "
      "Tensor[] group_weights, int[] source_sizes, int[] source_offsets, Tensor pix_y, Tensor pix_x, int out_h, "
      "int out_w, int mode, Tensor b1, Tensor w2, Tensor b2, Tensor w3, Tensor b3, int tile_pixels=0, "
      "bool packed=True, bool separable=True, Tensor? w1d_pack=None, Tensor? w2_pack=None) -> Tensor");
  m.def(
      "seg_head_backward(Tensor grad_out, Tensor[] sources, Tensor[] direct_weights, int[] source_sizes, "
      "int[] source_offsets, Tensor pix_y, Tensor pix_x, int out_h, int out_w, int mode, Tensor b1, Tensor w2, "
      "Tensor b2, Tensor w3, Tensor b3, int tile_pixels=0, bool bf16_products=False, bool packed=True, "
      "bool separable=True, Tensor? w1d_pack=None, Tensor? w2_pack=None) -> Tensor[]");
}

TORCH_LIBRARY_IMPL(editgan_fast, CPU, m) {
  m.impl("seg_head_forward", &seg_head_forward);
  m.impl("seg_head_infer", &seg_head_infer);
  m.impl("seg_head_backward", &seg_head_backward);
}
