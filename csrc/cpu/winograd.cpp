// 3x3 "same" convolution (stride 1, padding 1, cross-correlation like conv2d) by Winograd F(2x2, 3x3):
//
//   y_tile = A^T [ U[xi] . V[xi] ]_xi A,   V = B^T d B (d: a 4x4 input tile, stride 2),   U = G g G^T
//
// 16 matrix products [K, C] x [C, tiles] (one per tile position xi) replace the 9 products per output pixel of
// the direct convolution with 4: 2.25x fewer multiplications, at matmul rate. The weight transform U [16, K, C]
// is computed once per frozen weight by the caller (winograd_weight below, in Python: ops/_cpu_layers.py).
// Tiles are processed in chunks of whole tile rows so the transformed input and the products stay in cache;
// the transformed input is [16, C, tiles] and the products [16, K, tiles] = U [16, K, C] x V, so the transforms
// stream along tiles in NCHW order.
// F(2x2, 3x3) only adds and subtracts inputs (and products): its rounding error is within a few ulps of the
// direct convolution's.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

namespace {

struct Chunk {  // tile rows [ty0, ty1) of image n; tile index t = (ty - ty0) * tw + tx
  int64_t n, ty0, ty1;
};

// B^T d B for every tile of a chunk, channel c: the four row combinations B^T d along x first, then the column
// combinations per tile. Writes v[(xi * C + c) * tiles + t]: tiles contiguous, so both passes stream.
template <typename T>
__attribute__((target_clones("avx512f", "avx2", "default")))
void input_transform_channel(const T* plane, int64_t h, int64_t w, int64_t tw, const Chunk& ch, int64_t c,
                             int64_t channels, int64_t tiles, T* v, T* rows) {
  const int64_t pw = 2 * tw + 2;  // padded row: x = -1 .. 2*tw
  T* r[4] = {rows, rows + pw, rows + 2 * pw, rows + 3 * pw};
  T* d[4] = {rows + 4 * pw, rows + 5 * pw, rows + 6 * pw, rows + 7 * pw};
  for (int64_t ty = ch.ty0; ty < ch.ty1; ++ty) {
    for (int i = 0; i < 4; ++i) {  // the tile's input rows y = 2ty - 1 + i, zero outside the image
      const int64_t y = 2 * ty - 1 + i;
      std::fill(d[i], d[i] + pw, T(0));
      if (y >= 0 && y < h) std::copy(plane + y * w, plane + (y + 1) * w, d[i] + 1);
    }
    for (int64_t x = 0; x < pw; ++x) {  // B^T d
      r[0][x] = d[0][x] - d[2][x];
      r[1][x] = d[1][x] + d[2][x];
      r[2][x] = d[2][x] - d[1][x];
      r[3][x] = d[1][x] - d[3][x];
    }
    const int64_t t0 = (ty - ch.ty0) * tw;
    for (int i = 0; i < 4; ++i) {  // (B^T d) B
      const T* q = r[i];
      T* v0 = v + ((i * 4 + 0) * channels + c) * tiles + t0;
      T* v1 = v + ((i * 4 + 1) * channels + c) * tiles + t0;
      T* v2 = v + ((i * 4 + 2) * channels + c) * tiles + t0;
      T* v3 = v + ((i * 4 + 3) * channels + c) * tiles + t0;
      for (int64_t tx = 0; tx < tw; ++tx) {
        v0[tx] = q[2 * tx] - q[2 * tx + 2];
        v1[tx] = q[2 * tx + 1] + q[2 * tx + 2];
        v2[tx] = q[2 * tx + 2] - q[2 * tx + 1];
        v3[tx] = q[2 * tx + 1] - q[2 * tx + 3];
      }
    }
  }
}

// A^T M A for every tile of a chunk, output channel k (m[(xi * K + k) * tiles + t]), written into the NCHW
// output plane, cropped to h x w: the column combinations A^T first (streaming over tiles), then the rows.
template <typename T>
__attribute__((target_clones("avx512f", "avx2", "default")))
void output_transform_channel(const T* m, int64_t k, int64_t kernels, int64_t tiles, int64_t tw, const Chunk& ch,
                              T* plane, int64_t h, int64_t w, T* rows) {
  T* s[8];  // s[i * 4 + j][tx] = (A^T M)[i][j] of tile tx
  for (int j = 0; j < 8; ++j) s[j] = rows + j * tw;
  T* o[2] = {rows + 8 * tw, rows + 10 * tw};  // the two output rows of a tile row, 2*tw wide
  for (int64_t ty = ch.ty0; ty < ch.ty1; ++ty) {
    const int64_t t0 = (ty - ch.ty0) * tw;
    const T* a[16];
    for (int xi = 0; xi < 16; ++xi) a[xi] = m + (xi * kernels + k) * tiles + t0;
    for (int j = 0; j < 4; ++j) {  // A^T: rows 0 + 1 + 2 and 1 - 2 - 3 of each 4x4 block
      for (int64_t tx = 0; tx < tw; ++tx) {
        s[j][tx] = a[j][tx] + a[4 + j][tx] + a[8 + j][tx];
        s[4 + j][tx] = a[4 + j][tx] - a[8 + j][tx] - a[12 + j][tx];
      }
    }
    for (int i = 0; i < 2; ++i) {  // (A^T M) A
      const T *s0 = s[4 * i], *s1 = s[4 * i + 1], *s2 = s[4 * i + 2], *s3 = s[4 * i + 3];
      for (int64_t tx = 0; tx < tw; ++tx) {
        o[i][2 * tx] = s0[tx] + s1[tx] + s2[tx];
        o[i][2 * tx + 1] = s1[tx] - s2[tx] - s3[tx];
      }
      const int64_t y = 2 * ty + i;
      if (y < h) std::copy(o[i], o[i] + w, plane + y * w);
    }
  }
}

at::Tensor winograd_conv3x3(const at::Tensor& x, const at::Tensor& u) {
  TORCH_CHECK(x.dim() == 4 && x.device().is_cpu(), "winograd_conv3x3: x must be a CPU NCHW tensor, got ", x.sizes());
  TORCH_CHECK(u.dim() == 3 && u.size(0) == 16 && u.size(2) == x.size(1) && u.dtype() == x.dtype(),
              "winograd_conv3x3: u must be the [16, K, C] weight transform of x's dtype and channels, got ",
              u.sizes(), " for x ", x.sizes());
  auto xc = x.contiguous();
  auto uc = u.contiguous();
  const int64_t n = x.size(0), c = x.size(1), h = x.size(2), w = x.size(3), k = u.size(1);
  const int64_t th = (h + 1) / 2, tw = (w + 1) / 2;
  auto y = at::empty({n, k, h, w}, x.options());
  if (y.numel() == 0) return y;
  // ~32K tiles x channels per chunk: V and M stay within the L2 + L3 working set and the products are still
  // large enough to run at matmul rate.
  const int64_t rows_per_chunk = std::max<int64_t>(1, (131072 + tw * std::max(c, k) - 1) / (tw * std::max(c, k)));
  const int64_t max_tiles = std::min(th, rows_per_chunk) * tw;
  auto v = at::empty({16, c, max_tiles}, x.options());
  auto m = at::empty({16, k, max_tiles}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "winograd_conv3x3", [&] {
    for (int64_t img = 0; img < n; ++img) {
      for (int64_t ty0 = 0; ty0 < th; ty0 += rows_per_chunk) {
        const Chunk ch{img, ty0, std::min(th, ty0 + rows_per_chunk)};
        const int64_t tiles = (ch.ty1 - ch.ty0) * tw;
        // The buffers are sized for the largest chunk; a smaller (last) chunk uses a dense [16, tiles, .] prefix.
        scalar_t* vp = v.data_ptr<scalar_t>();
        scalar_t* mp = m.data_ptr<scalar_t>();
        at::parallel_for(0, c, 1, [&](int64_t begin, int64_t end) {
          std::vector<scalar_t> rows(8 * (2 * tw + 2));
          for (int64_t ci = begin; ci < end; ++ci)
            input_transform_channel<scalar_t>(xc.data_ptr<scalar_t>() + (img * c + ci) * h * w, h, w, tw, ch, ci, c,
                                              tiles, vp, rows.data());
        });
        auto vdense = at::from_blob(vp, {16, c, tiles}, x.options());
        auto mdense = at::from_blob(mp, {16, k, tiles}, x.options());
        at::bmm_out(mdense, uc, vdense);
        at::parallel_for(0, k, 1, [&](int64_t begin, int64_t end) {
          std::vector<scalar_t> rows(12 * tw);
          for (int64_t ki = begin; ki < end; ++ki)
            output_transform_channel<scalar_t>(mp, ki, k, tiles, tw, ch, y.data_ptr<scalar_t>() + (img * k + ki) * h * w,
                                               h, w, rows.data());
        });
      }
    }
  });
  return y;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(editgan_fast, m) {
  m.def("winograd_conv3x3(Tensor x, Tensor u) -> Tensor");
}

TORCH_LIBRARY_IMPL(editgan_fast, CPU, m) { m.impl("winograd_conv3x3", &winograd_conv3x3); }
