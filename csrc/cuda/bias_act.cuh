// bias_act forward and its derivative mask, elementwise with a grid-stride loop. The math is
// editgan::bias_act / bias_act_grad from elementwise.h, the code the CPU build tests.
// Kernels only (launchers in the .cu): tests/test_cuda_emulated.py also compiles them as host C++.
#pragma once
#include "editgan/elementwise.h"
#include "launchers.h"
#include "storage.cuh"
#include "device_compat.cuh"

namespace editgan {
namespace cuda {
namespace bias_act_kernels {

constexpr int kThreads = 256;

template <typename T>
__global__ void bias_act_kernel(const T* __restrict__ x, const T* __restrict__ bias, T* __restrict__ y,
                                int64_t n, int64_t channels, int64_t inner, Act act, float alpha, float gain,
                                float clamp) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    float b = bias ? load(bias, (i / inner) % channels) : 0.f;
    store(y, i, bias_act(load(x, i), b, act, alpha, gain, clamp));
  }
}

template <typename T>
__global__ void bias_act_grad_kernel(const T* __restrict__ dy, const T* __restrict__ x,
                                     const T* __restrict__ bias, T* __restrict__ dx, int64_t n, int64_t channels,
                                     int64_t inner, Act act, float alpha, float gain, float clamp) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    float s = load(x, i) + (bias ? load(bias, (i / inner) % channels) : 0.f);
    store(dx, i, load(dy, i) * bias_act_grad(s, act, alpha, gain, clamp));
  }
}

}  // namespace bias_act_kernels

}  // namespace cuda
}  // namespace editgan
