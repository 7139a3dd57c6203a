// The StyleGAN2 layer epilogue in one pass over the conv output, forward and backward.
//
//   out[n,c,p] = bias_act(y[n,c,p] * d[n,c] + noise[n|0,p], bias[c]) + residual[n,c,p]
//
// d (demodulation), noise, bias and residual (ToRGB's upsampled skip) are optional. The backward returns
// grad_y = g * d and grad_d[n,c] = sum_p g * y with g = grad_out * bias_act'(pre-activation), recomputing the
// pre-activation from y instead of storing it. Per-element math: csrc/include/editgan/elementwise.h (shared
// with CUDA). The inner loops are compiled for AVX-512, AVX2 and baseline x86-64 and picked at load time.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "editgan/elementwise.h"
#include "editgan/grain.h"

namespace {

using editgan::Act;

struct Params {
  Act act;
  double alpha, gain, clamp;  // double: float64 inputs must not see float-rounded constants
};

template <typename T>
struct Plane {  // one (n, c) plane's inputs
  const T* y;
  T d;
  const T* noise;  // nullptr: none
  T bias;
  const T* residual;  // nullptr: none
};

template <typename T>
__attribute__((target_clones("avx512f", "avx2", "default")))
void forward_plane(const Plane<T> pl, T* out, int64_t hw, const Params p) {
  for (int64_t i = 0; i < hw; ++i) {
    T v = editgan::bias_act<T>(pl.y[i] * pl.d + (pl.noise ? pl.noise[i] : T(0)), pl.bias, p.act, p.alpha, p.gain, p.clamp);
    out[i] = pl.residual ? v + pl.residual[i] : v;
  }
}

template <typename T>
__attribute__((target_clones("avx512f", "avx2", "default")))
T backward_plane(const Plane<T> pl, const T* grad_out, T* grad_y, int64_t hw, const Params p) {
  T grad_d = T(0);
  for (int64_t i = 0; i < hw; ++i) {
    T s = pl.y[i] * pl.d + (pl.noise ? pl.noise[i] : T(0)) + pl.bias;
    T g = grad_out[i] * editgan::bias_act_grad<T>(s, p.act, p.alpha, p.gain, p.clamp);
    grad_y[i] = g * pl.d;
    grad_d += g * pl.y[i];
  }
  return grad_d;
}

void check(const at::Tensor& y, const c10::optional<at::Tensor>& d, const c10::optional<at::Tensor>& noise,
           const c10::optional<at::Tensor>& bias, const c10::optional<at::Tensor>& residual) {
  TORCH_CHECK(y.dim() == 4 && y.device().is_cpu() && y.is_contiguous(), "epilogue: y must be a contiguous CPU NCHW tensor");
  const auto n = y.size(0), c = y.size(1);
  if (d) TORCH_CHECK(d->sizes() == at::IntArrayRef({n, c}) && d->is_contiguous() && d->dtype() == y.dtype(), "epilogue: d must be [N, C] of y's dtype");
  if (noise) TORCH_CHECK(noise->dim() == 4 && (noise->size(0) == 1 || noise->size(0) == n) && noise->size(1) == 1 &&
                         noise->size(2) == y.size(2) && noise->size(3) == y.size(3) && noise->is_contiguous() && noise->dtype() == y.dtype(),
                         "epilogue: noise must be [1|N, 1, H, W] of y's dtype");
  if (bias) TORCH_CHECK(bias->numel() == c && bias->dtype() == y.dtype(), "epilogue: bias must have C entries of y's dtype");
  if (residual) TORCH_CHECK(residual->sizes() == y.sizes() && residual->is_contiguous() && residual->dtype() == y.dtype(), "epilogue: residual must match y");
}

template <typename T>
Plane<T> plane(const at::Tensor& y, const c10::optional<at::Tensor>& d, const c10::optional<at::Tensor>& noise,
               const c10::optional<at::Tensor>& bias, const c10::optional<at::Tensor>& residual, int64_t k) {
  const int64_t c = y.size(1), hw = y.size(2) * y.size(3), n = k / c;
  Plane<T> pl;
  pl.y = y.data_ptr<T>() + k * hw;
  pl.d = d ? d->data_ptr<T>()[k] : T(1);
  pl.noise = noise ? noise->data_ptr<T>() + (noise->size(0) == 1 ? 0 : n) * hw : nullptr;
  pl.bias = bias ? bias->data_ptr<T>()[k % c] : T(0);
  pl.residual = residual ? residual->data_ptr<T>() + k * hw : nullptr;
  return pl;
}

Params params(int64_t act, double alpha, double gain, double clamp) {
  TORCH_CHECK(act == 0 || act == 1, "epilogue: act must be 0 (linear) or 1 (lrelu)");
  return Params{static_cast<Act>(act), alpha, gain, clamp};
}

at::Tensor epilogue_forward(const at::Tensor& y, const c10::optional<at::Tensor>& d, const c10::optional<at::Tensor>& noise,
                            const c10::optional<at::Tensor>& bias, const c10::optional<at::Tensor>& residual,
                            int64_t act, double alpha, double gain, double clamp) {
  check(y, d, noise, bias, residual);
  const Params p = params(act, alpha, gain, clamp);
  auto out = at::empty_like(y);
  const int64_t planes = y.size(0) * y.size(1), hw = y.size(2) * y.size(3);
  AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "epilogue_forward", [&] {
    at::parallel_for(0, planes, editgan::grain_for(hw), [&](int64_t begin, int64_t end) {
      for (int64_t k = begin; k < end; ++k)
        forward_plane<scalar_t>(plane<scalar_t>(y, d, noise, bias, residual, k), out.data_ptr<scalar_t>() + k * hw, hw, p);
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> epilogue_backward(const at::Tensor& grad_out, const at::Tensor& y,
                                                     const c10::optional<at::Tensor>& d, const c10::optional<at::Tensor>& noise,
                                                     const c10::optional<at::Tensor>& bias, int64_t act, double alpha,
                                                     double gain, double clamp) {
  check(y, d, noise, bias, c10::nullopt);
  TORCH_CHECK(grad_out.sizes() == y.sizes() && grad_out.is_contiguous() && grad_out.dtype() == y.dtype(), "epilogue: grad_out must match y");
  const Params p = params(act, alpha, gain, clamp);
  auto grad_y = at::empty_like(y);
  auto grad_d = at::empty({y.size(0), y.size(1)}, y.options());
  const int64_t planes = y.size(0) * y.size(1), hw = y.size(2) * y.size(3);
  AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "epilogue_backward", [&] {
    at::parallel_for(0, planes, editgan::grain_for(hw), [&](int64_t begin, int64_t end) {
      for (int64_t k = begin; k < end; ++k)
        grad_d.data_ptr<scalar_t>()[k] = backward_plane<scalar_t>(
            plane<scalar_t>(y, d, noise, bias, c10::nullopt, k), grad_out.data_ptr<scalar_t>() + k * hw,
            grad_y.data_ptr<scalar_t>() + k * hw, hw, p);
    });
  });
  return {grad_y, grad_d};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(editgan_fast, m) {
  m.def("epilogue_forward(Tensor y, Tensor? d, Tensor? noise, Tensor? bias, Tensor? residual, int act, float alpha, float gain, float clamp) -> Tensor");
  m.def("epilogue_backward(Tensor grad_out, Tensor y, Tensor? d, Tensor? noise, Tensor? bias, int act, float alpha, float gain, float clamp) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(editgan_fast, CPU, m) {
  m.impl("epilogue_forward", &epilogue_forward);
  m.impl("epilogue_backward", &epilogue_backward);
}
