// The CUDA kernels of csrc/cuda/*.cuh compiled as host C++ (see host_cuda_shim.h) behind a C ABI, so
// tests/test_cuda_emulated.py can run them on CPU tensors through ctypes and compare them with the reference
// operators. The grid walks mirror the launchers in csrc/cuda/*.cu (fp32 storage).
#include "host_cuda_shim.h"

#include "../cuda/bias_act.cuh"
#include "../cuda/seg_head.cuh"
#include "../cuda/upfirdn2d.cuh"

using namespace editgan;
using namespace editgan::cuda;

namespace {

template <typename Kernel>
void run_grid(unsigned int gx, unsigned int gy, unsigned int gz, Kernel&& kernel) {
  gridDim = {gx, gy, gz};
  blockDim = {1, 1, 1};
  threadIdx = {0, 0, 0};
  for (unsigned int z = 0; z < gz; ++z)
    for (unsigned int y = 0; y < gy; ++y)
      for (unsigned int x = 0; x < gx; ++x) {
        blockIdx = {x, y, z};
        kernel();
      }
}

}  // namespace

extern "C" {

void emu_bias_act(const float* x, const float* bias, float* y, int64_t outer, int64_t channels, int64_t inner,
                  int act, float alpha, float gain, float clamp) {
  int64_t n = outer * channels * inner;
  run_grid(3, 1, 1, [&] {  // a few blocks, so the grid-stride loop is exercised
    bias_act_kernels::bias_act_kernel<float>(x, bias, y, n, channels, inner, (Act)act, alpha, gain, clamp);
  });
}

void emu_bias_act_grad(const float* dy, const float* x, const float* bias, float* dx, int64_t outer,
                       int64_t channels, int64_t inner, int act, float alpha, float gain, float clamp) {
  int64_t n = outer * channels * inner;
  run_grid(3, 1, 1, [&] {
    bias_act_kernels::bias_act_grad_kernel<float>(dy, x, bias, dx, n, channels, inner, (Act)act, alpha, gain,
                                                  clamp);
  });
}

int emu_upfirdn2d(const float* x, const float* filter, float* y, int64_t planes, int in_h, int in_w, int out_h,
                  int out_w, int fh, int fw, int up, int down, int pad_x0, int pad_y0) {
  using namespace upfirdn2d_kernels;
  if (shared_bytes(fh, fw, up, down) > sizeof(eg_host_shared)) return 1;
  // gridDim.z smaller than the plane count, so the kernel's plane loop runs more than once per block.
  unsigned int gz = (unsigned int)(planes < 2 ? planes : 2);
  run_grid((out_w + kTileW - 1) / kTileW, (out_h + kTileH - 1) / kTileH, gz, [&] {
    upfirdn2d_kernel<float>(x, filter, y, planes, in_h, in_w, out_h, out_w, fh, fw, up, down, pad_x0, pad_y0);
  });
  return 0;
}

int emu_seg_head(const float* const* proj, const int* map_h, const int* map_w, int count, int batch, int members,
                 int hidden1, int hidden2, int classes, const float* b1, const float* w2t, const float* b2,
                 const float* w3t, const float* b3, int out_h, int out_w, int y0, int x0, int crop_w,
                 const int32_t* pixel_index, int64_t num_pixels, int bilinear, float* logits) {
  using namespace seg_head_kernels;
  if (count < 1 || count > kMaxSegMaps) return 1;
  SegMaps maps{};
  maps.count = count;
  for (int m = 0; m < count; ++m) {
    maps.proj[m] = proj[m];
    maps.h[m] = map_h[m];
    maps.w[m] = map_w[m];
  }
  int P = tile_pixels(hidden1, hidden2, classes);
  if (P == 0 || SegLayout{P, hidden1, hidden2, classes}.bytes() > sizeof(eg_host_shared)) return 2;
  int64_t total = (int64_t)batch * num_pixels;
  run_grid((unsigned int)((total + P - 1) / P), 1, 1, [&] {
    seg_head_kernel(maps, batch, members, hidden1, hidden2, classes, P, b1, w2t, b2, w3t, b3, out_h, out_w, y0, x0,
                    crop_w, pixel_index, num_pixels, bilinear != 0, logits);
  });
  return 0;
}

}  // extern "C"
