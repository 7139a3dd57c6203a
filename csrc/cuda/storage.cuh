// fp32 <-> storage conversions for the templated kernels (device side only).
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "launchers.h"

namespace editgan {
namespace cuda {

__device__ __forceinline__ float load(const float* p, int64_t i) { return p[i]; }
__device__ __forceinline__ float load(const __half* p, int64_t i) { return __half2float(p[i]); }
__device__ __forceinline__ float load(const __nv_bfloat16* p, int64_t i) { return __bfloat162float(p[i]); }

__device__ __forceinline__ void store(float* p, int64_t i, float v) { p[i] = v; }
__device__ __forceinline__ void store(__half* p, int64_t i, float v) { p[i] = __float2half_rn(v); }
__device__ __forceinline__ void store(__nv_bfloat16* p, int64_t i, float v) { p[i] = __float2bfloat16_rn(v); }

// Calls fn(T{}) with T the element type of `storage`.
template <typename Fn>
cudaError_t dispatch_storage(Storage storage, Fn&& fn) {
  switch (storage) {
    case Storage::F32: return fn(float{});
    case Storage::F16: return fn(__half{});
    case Storage::BF16: return fn(__nv_bfloat16{});
  }
  return cudaErrorInvalidValue;
}

inline unsigned int grid_for(int64_t n, int threads) {
  int64_t blocks = (n + threads - 1) / threads;
  // A grid-stride loop covers the rest: enough blocks to fill an H100 many times over.
  return (unsigned int)(blocks < 65536 ? (blocks > 0 ? blocks : 1) : 65536);
}

}  // namespace cuda
}  // namespace editgan
