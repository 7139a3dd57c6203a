// Launchers of the kernels in seg_head.cuh.
#include "seg_head.cuh"

namespace editgan {
namespace cuda {
using namespace seg_head_kernels;

int seg_head_tile_pixels(int hidden1, int hidden2, int classes) { return tile_pixels(hidden1, hidden2, classes); }

size_t seg_head_shared_bytes(int hidden1, int hidden2, int classes) {
  return SegLayout{tile_pixels(hidden1, hidden2, classes), hidden1, hidden2, classes}.bytes();
}

cudaError_t launch_seg_head(const SegMaps& maps, int batch, int members, int hidden1, int hidden2,
                            int classes, const float* b1, const float* w2t, const float* b2, const float* w3t,
                            const float* b3, int out_h, int out_w, int y0, int x0, int crop_h, int crop_w,
                            const int32_t* pixel_index, int64_t num_pixels, bool bilinear, float* logits,
                            cudaStream_t stream) {
  (void)crop_h;  // pixels are given as indices into the crop; its height only bounds them (checked by the binding)
  int P = tile_pixels(hidden1, hidden2, classes);
  if (P == 0 || maps.count < 1 || maps.count > kMaxSegMaps) return cudaErrorInvalidValue;
  int64_t total = (int64_t)batch * num_pixels;
  if (total == 0) return cudaSuccess;
  size_t smem = SegLayout{P, hidden1, hidden2, classes}.bytes();
  cudaError_t err = cudaFuncSetAttribute(seg_head_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
  if (err != cudaSuccess) return err;
  unsigned int blocks = (unsigned int)((total + P - 1) / P);
  seg_head_kernel<<<blocks, kThreads, smem, stream>>>(maps, batch, members, hidden1, hidden2, classes, P, b1, w2t,
                                                      b2, w3t, b3, out_h, out_w, y0, x0, crop_w, pixel_index,
                                                      num_pixels, bilinear, logits);
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace editgan
