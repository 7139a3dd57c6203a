// Launchers of the kernels in upfirdn2d.cuh.
#include "upfirdn2d.cuh"

namespace editgan {
namespace cuda {
using namespace upfirdn2d_kernels;

size_t upfirdn2d_shared_bytes(int fh, int fw, int up, int down) { return shared_bytes(fh, fw, up, down); }

cudaError_t launch_upfirdn2d(const void* x, const float* filter, void* y, int64_t planes, int in_h, int in_w,
                             int out_h, int out_w, int fh, int fw, int up, int down, int pad_x0, int pad_y0,
                             Storage storage, cudaStream_t stream) {
  if (planes == 0 || out_h <= 0 || out_w <= 0) return cudaSuccess;
  dim3 grid((out_w + kTileW - 1) / kTileW, (out_h + kTileH - 1) / kTileH,
            (unsigned int)(planes < 65535 ? planes : 65535));
  size_t smem = upfirdn2d_shared_bytes(fh, fw, up, down);
  return dispatch_storage(storage, [&](auto tag) {
    using T = decltype(tag);
    upfirdn2d_kernel<T><<<grid, kThreads, smem, stream>>>(static_cast<const T*>(x), filter, static_cast<T*>(y),
                                                          planes, in_h, in_w, out_h, out_w, fh, fw, up, down,
                                                          pad_x0, pad_y0);
    return cudaGetLastError();
  });
}

}  // namespace cuda
}  // namespace editgan
