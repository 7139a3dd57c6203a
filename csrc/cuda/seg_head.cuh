// The segmentation head's tile kernel: a block evaluates the pixel-classifier ensemble for a tile of output
// pixels without ever building the upsampled feature stack. The first Linear layer commutes with the
// (linear, per-channel) resampling, so the binding projects each feature map at its own resolution first
// (a GEMM); here each pixel gathers its 4 (bilinear) or 1 (nearest) source projections per map with the
// weights from elementwise.h's linear_taps / nearest_index, then runs the rest of each member's MLP
// (BatchNorm folded into the next Linear) from shared memory and averages the members.
//
// Thread layout: for the gather, one warp per pixel with lanes over hidden channels (channels-last
// projections make each warp's reads contiguous); for the two small dense layers, each thread computes one
// output unit for kPixRegs pixels, so each weight it loads (k-major, coalesced across the warp's units, read
// through L1/L2: EditGAN's 256x128 layer does not fit in shared memory) feeds kPixRegs FMAs, while the
// activations come from shared memory as warp-wide broadcasts.
// Kernels only (launchers in the .cu): tests/test_cuda_emulated.py also compiles them as host C++.
#pragma once
#include "editgan/elementwise.h"
#include "launchers.h"
#include "device_compat.cuh"

namespace editgan {
namespace cuda {
namespace seg_head_kernels {

constexpr int kThreads = 256, kWarp = 32, kMaxTilePixels = 32, kPixRegs = 4;
constexpr size_t kMaxShared = 96 * 1024;  // opt-in dynamic shared memory; sm_80 and sm_90 allow more

struct SegLayout {
  int pixels, hidden1, hidden2, classes;
  __host__ __device__ size_t floats() const { return (size_t)pixels * (hidden1 + hidden2 + classes); }
  __host__ __device__ size_t bytes() const { return floats() * sizeof(float) + 3 * (size_t)pixels * sizeof(int); }
};

// out[p, j] (= relu(.) when relu_store, else +=) b[j] + sum_k in[p, k] * wt[k, j] for the tile's P pixels
// (P a multiple of kPixRegs). in/out live in shared memory; wt [K, J] is k-major in global memory.
__device__ __forceinline__ void dense_layer(const float* in, int K, const float* __restrict__ wt,
                                            const float* __restrict__ b, int J, int P, float* out,
                                            bool relu_store) {
  for (int i = threadIdx.x; i < (P / kPixRegs) * J; i += blockDim.x) {
    const int p0 = (i / J) * kPixRegs, j = i % J;
    float s[kPixRegs];
    for (int q = 0; q < kPixRegs; ++q) s[q] = b[j];
    for (int k = 0; k < K; ++k) {
      const float w = wt[(size_t)k * J + j];
      for (int q = 0; q < kPixRegs; ++q) s[q] += w * in[(size_t)(p0 + q) * K + k];
    }
    for (int q = 0; q < kPixRegs; ++q) {
      float& o = out[(size_t)(p0 + q) * J + j];
      if (relu_store) o = fmaxf(s[q], 0.f);
      else o += s[q];
    }
  }
}

__global__ void seg_head_kernel(SegMaps maps, int batch, int members, int H1, int H2, int C, int P,
                                const float* __restrict__ b1, const float* __restrict__ w2t,
                                const float* __restrict__ b2, const float* __restrict__ w3t,
                                const float* __restrict__ b3, int out_h, int out_w, int y0, int x0, int crop_w,
                                const int32_t* __restrict__ pixel_index, int64_t num_pixels, bool bilinear,
                                float* __restrict__ logits) {
  EG_DYNAMIC_SHARED(float, smem);
  float* h1 = smem;                  // [P, H1]
  float* h2 = h1 + (size_t)P * H1;   // [P, H2]
  float* acc = h2 + (size_t)P * H2;  // [P, C] sum over members
  int* pix_n = reinterpret_cast<int*>(acc + (size_t)P * C);  // batch index, -1: past the end
  int* pix_y = pix_n + P;
  int* pix_x = pix_y + P;

  const int64_t first = (int64_t)blockIdx.x * P, total = (int64_t)batch * num_pixels;
  for (int p = threadIdx.x; p < P; p += blockDim.x) {
    int64_t g = first + p;
    if (g < total) {
      int64_t q = g % num_pixels;
      int64_t ci = pixel_index ? pixel_index[q] : q;  // row-major index inside the crop
      pix_n[p] = (int)(g / num_pixels);
      pix_y[p] = y0 + (int)(ci / crop_w);
      pix_x[p] = x0 + (int)(ci % crop_w);
    } else {
      pix_n[p] = -1;
    }
  }
  for (int i = threadIdx.x; i < P * C; i += blockDim.x) acc[i] = 0.f;

  const int64_t K = (int64_t)members * H1;  // channels of each projected map
  for (int e = 0; e < members; ++e) {
    __syncthreads();  // pixel info is ready; the previous member no longer reads h1/h2

    // Thread t gathers pixel t / kWarp, channels lane, lane + kWarp, ...: with blockDim a multiple of the
    // warp size, a warp owns a pixel.
    for (int t = threadIdx.x; t < P * kWarp; t += blockDim.x) {
      const int p = t / kWarp, lane = t % kWarp;
      if (pix_n[p] < 0) continue;
      float* hrow = h1 + (size_t)p * H1;
      for (int c = lane; c < H1; c += kWarp) hrow[c] = b1[(size_t)e * H1 + c];
      for (int m = 0; m < maps.count; ++m) {
        const int mh = maps.h[m], mw = maps.w[m];
        LinearTaps ty, tx;
        if (bilinear) {
          ty = linear_taps(pix_y[p], mh, out_h);
          tx = linear_taps(pix_x[p], mw, out_w);
        } else {
          ty.i0 = ty.i1 = nearest_index(pix_y[p], mh, out_h);
          tx.i0 = tx.i1 = nearest_index(pix_x[p], mw, out_w);
          ty.w0 = tx.w0 = 1.f;
          ty.w1 = tx.w1 = 0.f;
        }
        const float* base = maps.proj[m] + (int64_t)pix_n[p] * mh * mw * K + (int64_t)e * H1;
        const float* r00 = base + ((int64_t)ty.i0 * mw + tx.i0) * K;
        const float* r01 = base + ((int64_t)ty.i0 * mw + tx.i1) * K;
        const float* r10 = base + ((int64_t)ty.i1 * mw + tx.i0) * K;
        const float* r11 = base + ((int64_t)ty.i1 * mw + tx.i1) * K;
        if (ty.w1 == 0.f && tx.w1 == 0.f) {  // nearest, or a map already at the output size: one tap
          for (int c = lane; c < H1; c += kWarp) hrow[c] += ty.w0 * tx.w0 * r00[c];
        } else {
          for (int c = lane; c < H1; c += kWarp)
            hrow[c] += ty.w0 * (tx.w0 * r00[c] + tx.w1 * r01[c]) + ty.w1 * (tx.w0 * r10[c] + tx.w1 * r11[c]);
        }
      }
      for (int c = lane; c < H1; c += kWarp) hrow[c] = fmaxf(hrow[c], 0.f);
    }
    __syncthreads();

    dense_layer(h1, H1, w2t + (size_t)e * H1 * H2, b2 + (size_t)e * H2, H2, P, h2, /*relu_store=*/true);
    __syncthreads();
    dense_layer(h2, H2, w3t + (size_t)e * H2 * C, b3 + (size_t)e * C, C, P, acc, /*relu_store=*/false);
  }
  __syncthreads();

  const float inv = 1.f / (float)members;
  for (int i = threadIdx.x; i < P * C; i += blockDim.x) {
    int c = i / P, p = i % P;  // pixels fastest: consecutive threads write consecutive addresses
    if (pix_n[p] < 0) continue;
    int64_t q = (first + p) % num_pixels;
    logits[((int64_t)pix_n[p] * C + c) * num_pixels + q] = acc[(size_t)p * C + c] * inv;
  }
}

// Pixels per block: the most (up to kMaxTilePixels, a multiple of kPixRegs) whose activations fit in
// kMaxShared; 0 when even kPixRegs pixels do not fit.
inline int tile_pixels(int hidden1, int hidden2, int classes) {
  for (int p = kMaxTilePixels; p >= kPixRegs; p /= 2)
    if (SegLayout{p, hidden1, hidden2, classes}.bytes() <= kMaxShared) return p;
  return 0;
}

}  // namespace seg_head_kernels

}  // namespace cuda
}  // namespace editgan
