// Winograd-style convolutions: per output tile, out = A^T [ U[xi] . V[xi] ]_xi A with V = B^T d B (d: the
// tile's input window) and U = G g G^T (the kernel transformed once per frozen weight, by the caller).
// The alpha x alpha products for all tiles are alpha^2 matrix products [K, C] x [C, tiles] at matmul rate.
//
// One kernel serves every transform set the caller passes (ops/_cpu_layers.py defines them):
// - F(2x2, 3x3), the 3x3 "same" convolution (up = 1): alpha 4, 4x4 windows, 2x2 outputs: 4 products per
//   output pixel instead of 9;
// - the stride-2 transposed 3x3 convolution (up = 2) split into its four phases, each by F(2, 2) or directly
//   per axis: alpha 5, 3x3 windows, 4x4 outputs: 25 products per 4 input pixels instead of 36, and no
//   scattered accumulation.
// Tile (ty, tx) reads input rows ty * step - 1 .. ty * step - 1 + window - 1 (step = out_tile / up, zeros
// outside the image) and writes output rows ty * out_tile .. + out_tile - 1 (cropped to out_h x out_w).
// Tiles go in chunks of whole tile rows so the transformed input V [alpha^2, C, tiles] and the products
// M [alpha^2, K, tiles] stay in cache; both transforms stream along tiles in NCHW order. The transforms only
// add and subtract (coefficients 0, +-1 here), so the rounding error stays within a few ulps of direct
// convolution's.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "editgan/grain.h"

#include <algorithm>
#include <vector>

namespace {

struct Spec {
  int64_t alpha, window, out_tile, step;
  std::vector<double> bt;  // [alpha, window]
  std::vector<double> at;  // [out_tile, alpha]
};

struct Chunk {  // tile rows [ty0, ty1) of one image; tile index t = (ty - ty0) * tw + tx
  int64_t ty0, ty1;
};

// V for every tile of a chunk, input channel c: row combinations B^T d along the whole padded row first, then
// the column combinations per tile. Writes v[(xi * C + c) * tiles + t].
template <typename T>
__attribute__((target_clones("avx512f", "avx2", "default")))
void input_transform_channel(const Spec& sp, const T* plane, int64_t h, int64_t w, int64_t tw, const Chunk& ch,
                             int64_t c, int64_t channels, int64_t tiles, T* v, T* buf) {
  const int64_t a = sp.alpha, win = sp.window, step = sp.step;
  const int64_t pw = (tw - 1) * step + win;  // padded row: input x = -1 .. pw - 2
  T* d = buf;              // [win, pw]: the window's input rows
  T* r = buf + win * pw;   // [alpha, pw]: B^T d
  for (int64_t ty = ch.ty0; ty < ch.ty1; ++ty) {
    for (int64_t i = 0; i < win; ++i) {
      const int64_t y = ty * step - 1 + i;
      T* di = d + i * pw;
      std::fill(di, di + pw, T(0));
      if (y >= 0 && y < h) std::copy(plane + y * w, plane + y * w + std::min(w, pw - 1), di + 1);
    }
    for (int64_t p = 0; p < a; ++p) {
      T* rp = r + p * pw;
      std::fill(rp, rp + pw, T(0));
      for (int64_t i = 0; i < win; ++i) {
        const T b = T(sp.bt[p * win + i]);
        if (b == T(0)) continue;
        const T* di = d + i * pw;
        for (int64_t x = 0; x < pw; ++x) rp[x] += b * di[x];
      }
    }
    const int64_t t0 = (ty - ch.ty0) * tw;
    for (int64_t p = 0; p < a; ++p) {
      const T* rp = r + p * pw;
      for (int64_t q = 0; q < a; ++q) {
        T* vq = v + ((p * a + q) * channels + c) * tiles + t0;
        std::fill(vq, vq + tw, T(0));
        for (int64_t j = 0; j < win; ++j) {
          const T b = T(sp.bt[q * win + j]);
          if (b == T(0)) continue;
          const T* src = rp + j;
          for (int64_t tx = 0; tx < tw; ++tx) vq[tx] += b * src[tx * step];
        }
      }
    }
  }
}

// A^T M A for every tile of a chunk, output channel k (m[(xi * K + k) * tiles + t]) into the NCHW output plane:
// the row combinations first (streaming over tiles), then the columns into whole output rows.
template <typename T>
__attribute__((target_clones("avx512f", "avx2", "default")))
void output_transform_channel(const Spec& sp, const T* m, int64_t k, int64_t kernels, int64_t tiles, int64_t tw,
                              const Chunk& ch, T* plane, int64_t h, int64_t w, T* buf) {
  const int64_t a = sp.alpha, ot = sp.out_tile;
  T* s = buf;                // [ot, alpha, tw]: (A^T M)[p][q] per tile
  T* o = buf + ot * a * tw;  // one output row, ot * tw wide
  for (int64_t ty = ch.ty0; ty < ch.ty1; ++ty) {
    const int64_t t0 = (ty - ch.ty0) * tw;
    for (int64_t p = 0; p < ot; ++p) {
      for (int64_t q = 0; q < a; ++q) {
        T* spq = s + (p * a + q) * tw;
        std::fill(spq, spq + tw, T(0));
        for (int64_t i = 0; i < a; ++i) {
          const T coef = T(sp.at[p * a + i]);
          if (coef == T(0)) continue;
          const T* mi = m + ((i * a + q) * kernels + k) * tiles + t0;
          for (int64_t tx = 0; tx < tw; ++tx) spq[tx] += coef * mi[tx];
        }
      }
    }
    for (int64_t p = 0; p < ot; ++p) {
      const int64_t y = ty * ot + p;
      if (y >= h) break;
      std::fill(o, o + ot * tw, T(0));
      for (int64_t q = 0; q < ot; ++q) {
        for (int64_t j = 0; j < a; ++j) {
          const T coef = T(sp.at[q * a + j]);
          if (coef == T(0)) continue;
          const T* spj = s + (p * a + j) * tw;
          for (int64_t tx = 0; tx < tw; ++tx) o[tx * ot + q] += coef * spj[tx];
        }
      }
      std::copy(o, o + w, plane + y * w);
    }
  }
}

at::Tensor winograd_conv(const at::Tensor& x, const at::Tensor& u, at::ArrayRef<double> bt, int64_t window,
                         at::ArrayRef<double> at_, int64_t out_tile, int64_t up, int64_t out_h, int64_t out_w) {
  TORCH_CHECK(x.dim() == 4 && x.device().is_cpu(), "winograd_conv: x must be a CPU NCHW tensor, got ", x.sizes());
  TORCH_CHECK(window > 0 && out_tile > 0 && up > 0 && out_tile % up == 0 && bt.size() % window == 0,
              "winograd_conv: inconsistent transform sizes");
  const int64_t alpha = static_cast<int64_t>(bt.size()) / window;
  TORCH_CHECK(static_cast<int64_t>(at_.size()) == out_tile * alpha, "winograd_conv: A^T must be [out_tile, alpha]");
  TORCH_CHECK(u.dim() == 3 && u.size(0) == alpha * alpha && u.size(2) == x.size(1) && u.dtype() == x.dtype(),
              "winograd_conv: u must be the [", alpha * alpha, ", K, C] weight transform of x's dtype and channels, "
              "got ", u.sizes(), " for x ", x.sizes());
  TORCH_CHECK(out_h >= 0 && out_w >= 0, "winograd_conv: negative output size");
  const Spec sp{alpha, window, out_tile, out_tile / up, std::vector<double>(bt.begin(), bt.end()),
                std::vector<double>(at_.begin(), at_.end())};
  auto xc = x.contiguous();
  auto uc = u.contiguous();
  const int64_t n = x.size(0), c = x.size(1), h = x.size(2), w = x.size(3), k = u.size(1), xi = alpha * alpha;
  auto y = at::empty({n, k, out_h, out_w}, x.options());
  if (y.numel() == 0) return y;
  const int64_t th = (out_h + out_tile - 1) / out_tile, tw = (out_w + out_tile - 1) / out_tile;
  // ~128K tiles x channels per chunk: large enough for the products to run at matmul rate.
  const int64_t per_row = tw * std::max(c, k);
  const int64_t rows_per_chunk = std::max<int64_t>(1, (131072 + per_row - 1) / per_row);
  const int64_t max_tiles = std::min(th, rows_per_chunk) * tw;
  auto v = at::empty({xi * c * max_tiles}, x.options());
  auto m = at::empty({xi * k * max_tiles}, x.options());
  const int64_t pw = (tw - 1) * sp.step + window;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "winograd_conv", [&] {
    scalar_t* vp = v.data_ptr<scalar_t>();
    scalar_t* mp = m.data_ptr<scalar_t>();
    for (int64_t img = 0; img < n; ++img) {
      for (int64_t ty0 = 0; ty0 < th; ty0 += rows_per_chunk) {
        const Chunk ch{ty0, std::min(th, ty0 + rows_per_chunk)};
        const int64_t tiles = (ch.ty1 - ch.ty0) * tw;
        const int64_t grain = editgan::grain_for(tiles * xi);
        at::parallel_for(0, c, grain, [&](int64_t begin, int64_t end) {
          std::vector<scalar_t> buf((window + alpha) * pw);
          for (int64_t ci = begin; ci < end; ++ci)
            input_transform_channel<scalar_t>(sp, xc.data_ptr<scalar_t>() + (img * c + ci) * h * w, h, w, tw, ch,
                                              ci, c, tiles, vp, buf.data());
        });
        // A smaller (last) chunk uses a dense prefix of the buffers.
        auto mdense = at::from_blob(mp, {xi, k, tiles}, x.options());
        at::bmm_out(mdense, uc, at::from_blob(vp, {xi, c, tiles}, x.options()));
        at::parallel_for(0, k, grain, [&](int64_t begin, int64_t end) {
          std::vector<scalar_t> buf(out_tile * alpha * tw + out_tile * tw);
          for (int64_t ki = begin; ki < end; ++ki)
            output_transform_channel<scalar_t>(sp, mp, ki, k, tiles, tw, ch,
                                               y.data_ptr<scalar_t>() + (img * k + ki) * out_h * out_w, out_h, out_w,
                                               buf.data());
        });
      }
    }
  });
  return y;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(editgan_fast, m) {
  m.def("winograd_conv(Tensor x, Tensor u, float[] bt, int window, float[] at, int out_tile, int up, int out_h, "
        "int out_w) -> Tensor");
}

TORCH_LIBRARY_IMPL(editgan_fast, CPU, m) { m.impl("winograd_conv", &winograd_conv); }
