// The StyleGAN2 layer epilogue in one pass over the conv output, forward and backward.
//
//   out[n,c,p] = bias_act(y[n,c,p] * d[n,c] + noise[n|0,p], bias[c]) + residual[n,c,p]
//
// d (demodulation), noise, bias and residual (ToRGB's upsampled skip) are optional. The backward returns
// grad_y = g * d and grad_d[n,c] = sum_p g * y with g = grad_out * bias_act'(pre-activation), recomputing the
// pre-activation from y instead of storing it. The forward row function and the argument checks are shared with
// the kernels that fuse the epilogue into their own output pass (epilogue.h). The inner loops are compiled for
// AVX-512, AVX2 and baseline x86-64; editgan/isa.h picks one at run time (forceable from Python).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "editgan/grain.h"
#include "editgan/isa.h"
#include "epilogue.h"
#include "output_pool.h"

namespace {

using editgan::EpilogueArgs;
using editgan::EpilogueParams;
using editgan::PlaneEpilogue;

template <typename T>
EG_ALWAYS_INLINE void forward_plane_body(const PlaneEpilogue<T> pl, const EpilogueParams p, const T* y, T* out,
                                         int64_t hw, const T* residual) {
  editgan::apply_row(pl, p, y, out, 0, hw, residual);
}
EG_ISA_VARIANTS(template <typename T>, void, forward_plane,
                (const PlaneEpilogue<T> pl, const EpilogueParams p, const T* y, T* out, int64_t hw, const T* residual),
                (pl, p, y, out, hw, residual))

template <typename T>
EG_ALWAYS_INLINE T backward_plane_body(const PlaneEpilogue<T> pl, const EpilogueParams p, const T* y,
                                       const T* grad_out, T* grad_y, int64_t hw) {
  T grad_d = T(0);
  for (int64_t i = 0; i < hw; ++i) {
    T s = y[i] * pl.d + (pl.noise ? pl.noise[i] : T(0)) + pl.bias;
    T g = grad_out[i] * editgan::bias_act_grad<T>(s, p.act, p.alpha, p.gain, p.clamp);
    grad_y[i] = g * pl.d;
    grad_d += g * y[i];
  }
  return grad_d;
}
EG_ISA_VARIANTS(template <typename T>, T, backward_plane,
                (const PlaneEpilogue<T> pl, const EpilogueParams p, const T* y, const T* grad_out, T* grad_y,
                 int64_t hw),
                (pl, p, y, grad_out, grad_y, hw))

void check_y(const at::Tensor& y) {
  TORCH_CHECK(y.dim() == 4 && y.device().is_cpu() && y.is_contiguous(), "epilogue: y must be a contiguous CPU NCHW tensor");
}

at::Tensor epilogue_forward(const at::Tensor& y, const c10::optional<at::Tensor>& d, const c10::optional<at::Tensor>& noise,
                            const c10::optional<at::Tensor>& bias, const c10::optional<at::Tensor>& residual,
                            int64_t act, double alpha, double gain, double clamp) {
  check_y(y);
  const EpilogueArgs args(y.sizes(), y.scalar_type(), d, noise, bias, act, alpha, gain, clamp);
  if (residual) TORCH_CHECK(residual->sizes() == y.sizes() && residual->is_contiguous() && residual->dtype() == y.dtype(), "epilogue: residual must match y");
  auto out = editgan::pooled_empty(y.sizes(), y.options());
  const int64_t planes = y.size(0) * y.size(1), hw = y.size(2) * y.size(3);
  AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "epilogue_forward", [&] {
    at::parallel_for(0, planes, editgan::grain_for(hw), [&](int64_t begin, int64_t end) {
      for (int64_t k = begin; k < end; ++k)
        forward_plane<scalar_t>(args.plane<scalar_t>(k), args.params(), y.data_ptr<scalar_t>() + k * hw,
                                out.data_ptr<scalar_t>() + k * hw, hw,
                                residual ? residual->data_ptr<scalar_t>() + k * hw : nullptr);
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> epilogue_backward(const at::Tensor& grad_out, const at::Tensor& y,
                                                     const c10::optional<at::Tensor>& d, const c10::optional<at::Tensor>& noise,
                                                     const c10::optional<at::Tensor>& bias, int64_t act, double alpha,
                                                     double gain, double clamp) {
  check_y(y);
  const EpilogueArgs args(y.sizes(), y.scalar_type(), d, noise, bias, act, alpha, gain, clamp);
  TORCH_CHECK(grad_out.sizes() == y.sizes() && grad_out.is_contiguous() && grad_out.dtype() == y.dtype(), "epilogue: grad_out must match y");
  auto grad_y = editgan::pooled_empty(y.sizes(), y.options());
  auto grad_d = at::empty({y.size(0), y.size(1)}, y.options());
  const int64_t planes = y.size(0) * y.size(1), hw = y.size(2) * y.size(3);
  AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "epilogue_backward", [&] {
    at::parallel_for(0, planes, editgan::grain_for(hw), [&](int64_t begin, int64_t end) {
      for (int64_t k = begin; k < end; ++k)
        grad_d.data_ptr<scalar_t>()[k] = backward_plane<scalar_t>(
            args.plane<scalar_t>(k), args.params(), y.data_ptr<scalar_t>() + k * hw,
            grad_out.data_ptr<scalar_t>() + k * hw, grad_y.data_ptr<scalar_t>() + k * hw, hw);
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
