// upfirdn2d, polyphase: each block owns a kTileH x kTileW tile of output pixels, stages the input samples
// that tile reads (and the filter) in shared memory once per plane, and every output then visits only the
// filter taps that land on real input samples (t0, t0 + up, ...), never the inserted zeros. The index math
// is editgan::polyphase_start from elementwise.h, tested against the literal definition on the CPU.
// Kernels only (launchers in the .cu): tests/test_cuda_emulated.py also compiles them as host C++.
#pragma once
#include "editgan/elementwise.h"
#include "launchers.h"
#include "storage.cuh"
#include "device_compat.cuh"

namespace editgan {
namespace cuda {
namespace upfirdn2d_kernels {

constexpr int kTileH = 32, kTileW = 32, kThreads = 256;

// Input samples one output tile can touch along an axis (an upper bound: polyphase_start's src0 advances
// by at most ceil((tile - 1) * down / up) across the tile, and each output reads (f - 1) / up + 1 samples).
__host__ __device__ inline int tile_input(int tile, int f, int up, int down) {
  return ((tile - 1) * down) / up + 1 + (f - 1) / up + 1;
}

// Dynamic shared memory of one block: the filter and the input tile, fp32.
inline size_t shared_bytes(int fh, int fw, int up, int down) {
  return sizeof(float) * ((size_t)fh * fw + (size_t)tile_input(kTileH, fh, up, down) * tile_input(kTileW, fw, up, down));
}

template <typename T>
__global__ void upfirdn2d_kernel(const T* __restrict__ x, const float* __restrict__ filter, T* __restrict__ y,
                                 int64_t planes, int in_h, int in_w, int out_h, int out_w, int fh, int fw,
                                 int up, int down, int pad_x0, int pad_y0) {
  EG_DYNAMIC_SHARED(float, smem);
  const int tin_h = tile_input(kTileH, fh, up, down), tin_w = tile_input(kTileW, fw, up, down);
  float* g = smem;             // [fh, fw] correlation filter
  float* tile = smem + fh * fw;  // [tin_h, tin_w] input samples, zero outside the image
  for (int i = threadIdx.x; i < fh * fw; i += blockDim.x) g[i] = filter[i];

  const int ox0 = blockIdx.x * kTileW, oy0 = blockIdx.y * kTileH;
  const int sy0 = polyphase_start(oy0, up, down, pad_y0).src0;
  const int sx0 = polyphase_start(ox0, up, down, pad_x0).src0;
  for (int64_t plane = blockIdx.z; plane < planes; plane += gridDim.z) {
    __syncthreads();  // the filter is staged, and nobody still reads the previous plane's tile
    const T* xp = x + plane * in_h * in_w;
    for (int i = threadIdx.x; i < tin_h * tin_w; i += blockDim.x) {
      int sy = sy0 + i / tin_w, sx = sx0 + i % tin_w;
      tile[i] = (sy >= 0 && sy < in_h && sx >= 0 && sx < in_w) ? load(xp, (int64_t)sy * in_w + sx) : 0.f;
    }
    __syncthreads();
    T* yp = y + plane * out_h * out_w;
    for (int i = threadIdx.x; i < kTileH * kTileW; i += blockDim.x) {
      int oy = oy0 + i / kTileW, ox = ox0 + i % kTileW;
      if (oy >= out_h || ox >= out_w) continue;
      PolyphaseStart py = polyphase_start(oy, up, down, pad_y0);
      PolyphaseStart px = polyphase_start(ox, up, down, pad_x0);
      float acc = 0.f;
      for (int ty = py.t0, r = py.src0 - sy0; ty < fh; ty += up, ++r) {
        const float* row = tile + r * tin_w;
        for (int tx = px.t0, c = px.src0 - sx0; tx < fw; tx += up, ++c) acc += g[ty * fw + tx] * row[c];
      }
      store(yp, (int64_t)oy * out_w + ox, acc);
    }
  }
}

}  // namespace upfirdn2d_kernels

}  // namespace cuda
}  // namespace editgan
