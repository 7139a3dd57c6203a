// Launchers of the kernels in bias_act.cuh.
#include "bias_act.cuh"

namespace editgan {
namespace cuda {
using namespace bias_act_kernels;

cudaError_t launch_bias_act(const void* x, const void* bias, void* y, int64_t outer, int64_t channels,
                            int64_t inner, int act, float alpha, float gain, float clamp, Storage storage,
                            cudaStream_t stream) {
  int64_t n = outer * channels * inner;
  if (n == 0) return cudaSuccess;
  return dispatch_storage(storage, [&](auto tag) {
    using T = decltype(tag);
    bias_act_kernel<T><<<grid_for(n, kThreads), kThreads, 0, stream>>>(
        static_cast<const T*>(x), static_cast<const T*>(bias), static_cast<T*>(y), n, channels, inner,
        static_cast<Act>(act), alpha, gain, clamp);
    return cudaGetLastError();
  });
}

cudaError_t launch_bias_act_grad(const void* dy, const void* x, const void* bias, void* dx, int64_t outer,
                                 int64_t channels, int64_t inner, int act, float alpha, float gain, float clamp,
                                 Storage storage, cudaStream_t stream) {
  int64_t n = outer * channels * inner;
  if (n == 0) return cudaSuccess;
  return dispatch_storage(storage, [&](auto tag) {
    using T = decltype(tag);
    bias_act_grad_kernel<T><<<grid_for(n, kThreads), kThreads, 0, stream>>>(
        static_cast<const T*>(dy), static_cast<const T*>(x), static_cast<const T*>(bias), static_cast<T*>(dx),
        n, channels, inner, static_cast<Act>(act), alpha, gain, clamp);
    return cudaGetLastError();
  });
}

}  // namespace cuda
}  // namespace editgan
