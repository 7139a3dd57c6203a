// Host-side launchers of the CUDA kernels (csrc/cuda/*.cu). Raw pointers, sizes and a stream only: no torch
// headers on either side, so the kernels compile with plain nvcc and binding.cpp owns all tensor checks.
// Every launcher returns the launch's cudaError_t (cudaSuccess when fine).
#pragma once
#include <cstdint>

#include <cuda_runtime_api.h>

namespace editgan {
namespace cuda {

// Element storage of the kernels' inputs and outputs; arithmetic is always fp32.
enum class Storage : int { F32 = 0, F16 = 1, BF16 = 2 };

// y = clamp(act(x + b[c]) * gain) over a contiguous tensor seen as [outer, channels, inner]
// (the bias runs along the middle axis). bias may be null. act: 0 linear, 1 lrelu; clamp < 0: no clamp.
cudaError_t launch_bias_act(const void* x, const void* bias, void* y, int64_t outer, int64_t channels,
                            int64_t inner, int act, float alpha, float gain, float clamp, Storage storage,
                            cudaStream_t stream);

// The derivative mask of bias_act: dx = dy * bias_act'(x + b[c]). Same layout and arguments.
cudaError_t launch_bias_act_grad(const void* dy, const void* x, const void* bias, void* dx, int64_t outer,
                                 int64_t channels, int64_t inner, int act, float alpha, float gain, float clamp,
                                 Storage storage, cudaStream_t stream);

// upfirdn2d over planes [planes, in_h, in_w] -> [planes, out_h, out_w], polyphase (no zero taps) from
// shared-memory input tiles. `filter` is the fp32 *correlation* filter [fh, fw] with the gain folded in
// (the binding flips/expands the user's filter). pad_x0/pad_y0 may be negative (crop).
cudaError_t launch_upfirdn2d(const void* x, const float* filter, void* y, int64_t planes, int in_h, int in_w,
                             int out_h, int out_w, int fh, int fw, int up, int down, int pad_x0, int pad_y0,
                             Storage storage, cudaStream_t stream);
// Bytes of dynamic shared memory launch_upfirdn2d needs for these sizes (the binding checks the limit).
size_t upfirdn2d_shared_bytes(int fh, int fw, int up, int down);

// The segmentation head's tile kernel. For each of `num_maps` maps, `proj[m]` holds the first-layer
// projections of every ensemble member at the map's own resolution, fp32, channels last:
// [batch, map_h[m], map_w[m], members * hidden1] (no bias). Output pixels are the crop (y0, x0, crop_h,
// crop_w) of an out_h x out_w frame, or, when `pixel_index` is not null, the `num_pixels` row-major indices
// into the crop it lists. Per pixel: h1 = b1 + sum_m resample(proj[m]) (bilinear align_corners=False when
// `bilinear`, else nearest), then per member relu, (w2, b2), relu, (w3, b3) with BatchNorm already folded
// into w2/b2/w3/b3, averaged over members. Weights are fp32, stacked over members, the dense ones
// transposed (k-major): b1 [E, H1], w2t [E, H1, H2], b2 [E, H2], w3t [E, H2, C], b3 [E, C].
// Output logits fp32 [batch, C, num_pixels].
constexpr int kMaxSegMaps = 32;
struct SegMaps {
  const float* proj[kMaxSegMaps];
  int h[kMaxSegMaps];
  int w[kMaxSegMaps];
  int count;
};
cudaError_t launch_seg_head(const SegMaps& maps, int batch, int members, int hidden1, int hidden2,
                            int classes, const float* b1, const float* w2t, const float* b2, const float* w3t,
                            const float* b3, int out_h, int out_w, int y0, int x0, int crop_h, int crop_w,
                            const int32_t* pixel_index, int64_t num_pixels, bool bilinear, float* logits,
                            cudaStream_t stream);
// Pixels per block and bytes of dynamic shared memory the seg-head kernel uses (0 pixels: does not fit).
int seg_head_tile_pixels(int hidden1, int hidden2, int classes);
size_t seg_head_shared_bytes(int hidden1, int hidden2, int classes);

}  // namespace cuda
}  // namespace editgan
