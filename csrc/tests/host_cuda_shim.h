// Lets the CUDA kernel headers (csrc/cuda/*.cuh) compile as host C++ and run serially on the CPU: one
// "thread" per block (blockDim.x == 1), blocks one after another. The kernels stride every per-block loop by
// blockDim.x and separate its phases with __syncthreads(), so a single thread running each phase to the end
// computes exactly what the block computes. It checks indexing and math, not races or performance.
#pragma once
#include <cmath>
#include <cstdint>

#include <cuda_bf16.h>  // the CUDA headers first: they define the execution-space keywords for host compilers
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#undef __global__
#undef __device__
#undef __host__
#undef __forceinline__
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline

struct EgHostDim3 {
  unsigned int x = 0, y = 0, z = 0;
};
inline EgHostDim3 threadIdx, blockIdx, blockDim, gridDim;
inline void __syncthreads() {}

// Dynamic shared memory of the emulated block (the kernels use at most 96 KiB).
alignas(16) inline float eg_host_shared[1 << 16];
#define EG_DYNAMIC_SHARED(type, name) type* name = reinterpret_cast<type*>(eg_host_shared)
