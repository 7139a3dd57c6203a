// Winograd-style convolutions: per output tile, out = A^T [ U[xi] . V[xi] ]_xi A with V = B^T d B (d: the
// tile's input window, each input channel optionally scaled: the style) and U = G g G^T (the kernel
// transformed once per frozen weight, by the caller). The alpha x alpha products for all tiles are alpha^2
// matrix products [K, C] x [C, tiles] at matmul rate.
//
// One kernel serves every transform set the caller passes (ops/_cpu_layers.py defines them):
// - F(4x4, 3x3), the 3x3 "same" convolution (up = 1): alpha 6, 6x6 windows, 4x4 outputs: 2.25 products per
//   output pixel instead of 9;
// - the stride-2 transposed 3x3 convolution (up = 2) split into its four phases, each by F(2, 2) or directly
//   per axis: alpha 5, 3x3 windows, 4x4 outputs: 25 products per 4 input pixels instead of 36, and no
//   scattered accumulation.
// Tile (ty, tx) reads input rows ty * step - 1 .. ty * step - 1 + window - 1 (step = out_tile / up, zeros
// outside the image) and writes output rows ty * out_tile .. + out_tile - 1 (cropped to out_h x out_w),
// optionally through the layer's epilogue (epilogue.h) row by row.
// Tiles go in chunks of whole tile rows (~128K tiles x channels: the products stay at matmul rate), a chunk
// spanning images when they are small; each channel's transform works on a contiguous per-thread copy of its
// chunk rows, so the memory traffic is long sequential streams. Rounding: the transposed set only adds and
// subtracts (within a few ulps of direct convolution); F(4x4, 3x3)'s coefficients reach 8 (~3e-6 relative in
// float32).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "editgan/grain.h"
#include "editgan/isa.h"
#include "editgan/scratch.h"
#include "epilogue.h"
#include "output_pool.h"

#include <algorithm>
#include <utility>
#include <vector>

namespace {

struct Spec {
  int64_t alpha, window, out_tile, step;
  int64_t phase_len;       // per tile row: samples per input phase, tile tx reads phase j % step at tx + j / step
  std::vector<double> bt;  // [alpha, window]
  std::vector<double> at;  // [out_tile, alpha]
};

struct Chunk {  // tile rows [ty0, ty1) of one image; tile index t = (ty - ty0) * tw + tx
  int64_t ty0, ty1;
};

// V for every tile of a chunk, input channel c (scaled by `scale`: the style, folded in here for free).
// Each window row is split into its `step` phases first (d[i][m][t] = x[t * step + m - 1]), so the row
// combinations B^T d and the column combinations per tile are all unit-stride loops over tiles.
// Writes v[xi * tiles + t] (a per-thread buffer: see winograd_conv).
template <typename T>
EG_ALWAYS_INLINE void input_transform_channel_body(const Spec& sp, const T* plane, T scale, int64_t h, int64_t w,
                                                   int64_t tw, const Chunk& ch, int64_t tiles, T* v, T* buf) {
  const int64_t a = sp.alpha, win = sp.window, st = sp.step, np = sp.phase_len, row = st * np;
  T* d = buf;              // [win][step][np]: the window's input rows, by phase
  T* r = buf + win * row;  // [alpha][step][np]: B^T d
  for (int64_t ty = ch.ty0; ty < ch.ty1; ++ty) {
    for (int64_t i = 0; i < win; ++i) {
      const int64_t y = ty * st - 1 + i;
      T* di = d + i * row;
      std::fill(di, di + row, T(0));
      if (y < 0 || y >= h) continue;
      const T* src = plane + y * w;
      for (int64_t m = 0; m < st; ++m) {  // phase m, sample t: x = t * step + m - 1
        T* dm = di + m * np;
        const int64_t t_end = std::min(np, (w + st - m) / st);  // x < w
        for (int64_t t = m == 0 ? 1 : 0; t < t_end; ++t) dm[t] = scale * src[t * st + m - 1];
      }
    }
    for (int64_t p = 0; p < a; ++p) {
      T* rp = r + p * row;
      std::fill(rp, rp + row, T(0));
      for (int64_t i = 0; i < win; ++i) {
        const T b = T(sp.bt[p * win + i]);
        if (b == T(0)) continue;
        const T* di = d + i * row;
        for (int64_t e = 0; e < row; ++e) rp[e] += b * di[e];
      }
    }
    const int64_t t0 = (ty - ch.ty0) * tw;
    for (int64_t p = 0; p < a; ++p) {
      const T* rp = r + p * row;
      for (int64_t q = 0; q < a; ++q) {
        T* vq = v + (p * a + q) * tiles + t0;
        std::fill(vq, vq + tw, T(0));
        for (int64_t j = 0; j < win; ++j) {
          const T b = T(sp.bt[q * win + j]);
          if (b == T(0)) continue;
          const T* src = rp + (j % st) * np + j / st;
          for (int64_t tx = 0; tx < tw; ++tx) vq[tx] += b * src[tx];
        }
      }
    }
  }
}
EG_ISA_VARIANTS(template <typename T>, void, input_transform_channel,
                (const Spec& sp, const T* plane, T scale, int64_t h, int64_t w, int64_t tw, const Chunk& ch,
                 int64_t tiles, T* v, T* buf),
                (sp, plane, scale, h, w, tw, ch, tiles, v, buf))

// A^T M A for every tile of a chunk, output channel k (m[(xi * K + k) * tiles + t]) into the NCHW output plane:
// the row combinations, then the column combinations into one contiguous array per output phase q (both
// unit-stride over tiles), then one interleaving copy per output row.
template <typename T>
EG_ALWAYS_INLINE void output_transform_channel_body(const Spec& sp, const T* m, int64_t tiles, int64_t tw,
                                                    const Chunk& ch, T* plane, int64_t h, int64_t w, T* buf,
                                                    const editgan::PlaneEpilogue<T>* epi,
                                                    const editgan::EpilogueParams& ep) {
  const int64_t a = sp.alpha, ot = sp.out_tile;
  T* s = buf;                // [ot][alpha][tw]: (A^T M)[p][q] per tile
  T* o = buf + ot * a * tw;  // [ot][tw]: one output row by phase
  for (int64_t ty = ch.ty0; ty < ch.ty1; ++ty) {
    const int64_t t0 = (ty - ch.ty0) * tw;
    for (int64_t p = 0; p < ot; ++p) {
      for (int64_t q = 0; q < a; ++q) {
        T* spq = s + (p * a + q) * tw;
        std::fill(spq, spq + tw, T(0));
        for (int64_t i = 0; i < a; ++i) {
          const T coef = T(sp.at[p * a + i]);
          if (coef == T(0)) continue;
          const T* mi = m + (i * a + q) * tiles + t0;
          for (int64_t tx = 0; tx < tw; ++tx) spq[tx] += coef * mi[tx];
        }
      }
    }
    for (int64_t p = 0; p < ot; ++p) {
      const int64_t y = ty * ot + p;
      if (y >= h) break;
      for (int64_t q = 0; q < ot; ++q) {
        T* oq = o + q * tw;
        std::fill(oq, oq + tw, T(0));
        for (int64_t j = 0; j < a; ++j) {
          const T coef = T(sp.at[q * a + j]);
          if (coef == T(0)) continue;
          const T* spj = s + (p * a + j) * tw;
          for (int64_t tx = 0; tx < tw; ++tx) oq[tx] += coef * spj[tx];
        }
      }
      T* dst = plane + y * w;
      for (int64_t q = 0; q < ot; ++q) {
        const T* oq = o + q * tw;
        const int64_t tx_end = std::min(tw, (w - q + ot - 1) / ot);  // x = tx * ot + q < w
        for (int64_t tx = 0; tx < tx_end; ++tx) dst[tx * ot + q] = oq[tx];
      }
      if (epi) editgan::apply_row(*epi, ep, dst, dst, y * w, w);
    }
  }
}
EG_ISA_VARIANTS(template <typename T>, void, output_transform_channel,
                (const Spec& sp, const T* m, int64_t tiles, int64_t tw, const Chunk& ch, T* plane, int64_t h,
                 int64_t w, T* buf, const editgan::PlaneEpilogue<T>* epi, const editgan::EpilogueParams& ep),
                (sp, m, tiles, tw, ch, plane, h, w, buf, epi, ep))

at::Tensor winograd_conv(const at::Tensor& x, const at::Tensor& u, const c10::optional<at::Tensor>& scale,
                         at::ArrayRef<double> bt, int64_t window, at::ArrayRef<double> at_, int64_t out_tile,
                         int64_t up, int64_t out_h, int64_t out_w, const c10::optional<at::Tensor>& d,
                         const c10::optional<at::Tensor>& noise, const c10::optional<at::Tensor>& bias, int64_t act,
                         double lrelu_alpha, double gain, double clamp) {
  TORCH_CHECK(x.dim() == 4 && x.device().is_cpu(), "winograd_conv: x must be a CPU NCHW tensor, got ", x.sizes());
  TORCH_CHECK(window > 0 && out_tile > 0 && up > 0 && out_tile % up == 0 && bt.size() % window == 0,
              "winograd_conv: inconsistent transform sizes");
  const int64_t alpha = static_cast<int64_t>(bt.size()) / window;
  TORCH_CHECK(static_cast<int64_t>(at_.size()) == out_tile * alpha, "winograd_conv: A^T must be [out_tile, alpha]");
  TORCH_CHECK(u.dim() == 3 && u.size(0) == alpha * alpha && u.size(2) == x.size(1) && u.dtype() == x.dtype(),
              "winograd_conv: u must be the [", alpha * alpha, ", K, C] weight transform of x's dtype and channels, "
              "got ", u.sizes(), " for x ", x.sizes());
  TORCH_CHECK(out_h >= 0 && out_w >= 0, "winograd_conv: negative output size");
  if (scale)
    TORCH_CHECK(scale->sizes() == at::IntArrayRef({x.size(0), x.size(1)}) && scale->dtype() == x.dtype(),
                "winograd_conv: scale must be [N, C] = ", x.sizes().slice(0, 2), " of x's dtype, got ",
                scale->sizes());
  const int64_t step = out_tile / up, tw = (out_w + out_tile - 1) / out_tile;
  const Spec sp{alpha, window, out_tile, step, tw + (window - 1) / step, std::vector<double>(bt.begin(), bt.end()),
                std::vector<double>(at_.begin(), at_.end())};
  auto xc = x.contiguous();
  auto sc = scale ? scale->contiguous() : at::ones({x.size(0), x.size(1)}, x.options());
  auto uc = u.contiguous();
  const int64_t n = x.size(0), c = x.size(1), h = x.size(2), w = x.size(3), k = u.size(1), xi = alpha * alpha;
  auto y = editgan::pooled_empty({n, k, out_h, out_w}, x.options());
  const editgan::EpilogueArgs epilogue(y.sizes(), y.scalar_type(), d, noise, bias, act, lrelu_alpha, gain, clamp);
  const bool fused = !epilogue.identity();
  if (y.numel() == 0) return y;
  const int64_t th = (out_h + out_tile - 1) / out_tile, rows = n * th;  // tile rows of all images, image-major
  // ~128K tiles x channels per chunk: large enough for the products to run at matmul rate. A chunk spans
  // images when they are small (a batch of 16 px maps: 16 tiles each, one chunk for all of them, not 16
  // products of 16 columns each).
  const int64_t per_row = tw * std::max(c, k);
  const int64_t rows_per_chunk = std::max<int64_t>(1, (131072 + per_row - 1) / per_row);
  const int64_t max_tiles = std::min(rows, rows_per_chunk) * tw;
  const int64_t v_size = (xi * c * max_tiles + 15) / 16 * 16, m_size = xi * k * max_tiles;  // M 64-byte aligned
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "winograd_conv", [&] {
    scalar_t* vp = editgan::scratch<scalar_t, editgan::kWinogradProducts>(v_size + m_size);
    scalar_t* mp = vp + v_size;
    for (int64_t r0 = 0; r0 < rows; r0 += rows_per_chunk) {
      const int64_t r1 = std::min(rows, r0 + rows_per_chunk), tiles = (r1 - r0) * tw;
      // The chunk's part of each image it touches: (image, its tile rows, first tile within the chunk).
      std::vector<std::pair<int64_t, Chunk>> parts;
      for (int64_t img = r0 / th; img * th < r1; ++img)
        parts.push_back({img, Chunk{std::max(r0, img * th) - img * th, std::min(r1, (img + 1) * th) - img * th}});
      const auto first_tile = [&](int64_t img, const Chunk& ch) { return (img * th + ch.ty0 - r0) * tw; };
      const int64_t grain = editgan::grain_for(tiles * xi);
      at::parallel_for(0, c, grain, [&](int64_t begin, int64_t end) {
        scalar_t* buf = editgan::scratch<scalar_t, editgan::kWinogradRows>((window + alpha) * step * sp.phase_len);
        scalar_t* local = editgan::scratch<scalar_t, editgan::kWinogradTiles>(xi * tiles);
        for (int64_t ci = begin; ci < end; ++ci) {
          for (const auto& [img, ch] : parts)
            input_transform_channel<scalar_t>(sp, xc.data_ptr<scalar_t>() + (img * c + ci) * h * w,
                                              sc.data_ptr<scalar_t>()[img * c + ci], h, w, tw, ch, tiles,
                                              local + first_tile(img, ch), buf);
          for (int64_t e = 0; e < xi; ++e)
            std::copy_n(local + e * tiles, tiles, vp + (e * c + ci) * tiles);
        }
      });
      // A smaller (last) chunk uses a dense prefix of the buffers.
      auto mdense = at::from_blob(mp, {xi, k, tiles}, x.options());
      at::bmm_out(mdense, uc, at::from_blob(vp, {xi, c, tiles}, x.options()));
      at::parallel_for(0, k, grain, [&](int64_t begin, int64_t end) {
        scalar_t* buf = editgan::scratch<scalar_t, editgan::kWinogradRows>(out_tile * alpha * tw + out_tile * tw);
        scalar_t* local = editgan::scratch<scalar_t, editgan::kWinogradTiles>(xi * tiles);
        for (int64_t ki = begin; ki < end; ++ki) {
          for (int64_t e = 0; e < xi; ++e)
            std::copy_n(mp + (e * k + ki) * tiles, tiles, local + e * tiles);
          for (const auto& [img, ch] : parts) {
            const auto pl = epilogue.plane<scalar_t>(img * k + ki);
            output_transform_channel<scalar_t>(sp, local + first_tile(img, ch), tiles, tw, ch,
                                               y.data_ptr<scalar_t>() + (img * k + ki) * out_h * out_w, out_h,
                                               out_w, buf, fused ? &pl : nullptr, epilogue.params());
          }
        }
      });
    }
  });
  return y;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(editgan_fast, m) {
  m.def("winograd_conv(Tensor x, Tensor u, Tensor? scale, float[] bt, int window, float[] at, int out_tile, int up, int out_h, "
        "int out_w, Tensor? d=None, Tensor? noise=None, Tensor? bias=None, int act=0, float alpha=0.2, float gain=1., "
        "float clamp=-1.) -> Tensor");
}

TORCH_LIBRARY_IMPL(editgan_fast, CPU, m) { m.impl("winograd_conv", &winograd_conv); }
