// The StyleGAN2 layer epilogue as a building block of the CPU kernels:
//
//   out[n,c,p] = bias_act(y[n,c,p] * d[n,c] + noise[n|0,p], bias[c]) + residual[n,c,p]
//
// EpilogueArgs checks and holds the optional tensors once per call; plane(k) gives plane k's (k = n * C + c)
// constants, and apply_row() runs the epilogue over one stretch of a plane. Producers (the FIR and Winograd
// kernels) call apply_row on each output row while it is still in L1, so the epilogue costs no extra pass
// over memory. Per-element math: csrc/include/editgan/elementwise.h (shared with CUDA).
#pragma once

#include <ATen/ATen.h>

#include "editgan/elementwise.h"

namespace editgan {

struct EpilogueParams {
  Act act;
  double alpha, gain, clamp;  // double: float64 inputs must not see float-rounded constants
};

template <typename T>
struct PlaneEpilogue {  // one (n, c) plane's constants
  T d;
  const T* noise;  // the plane's noise, nullptr: none
  T bias;
};

namespace detail {
// One combination of noise / activation / clamp, known at compile time so the loop has no branches and
// vectorizes (the runtime checks inside bias_act fold away).
template <typename T, bool kNoise, Act kAct, bool kClamp>
__attribute__((always_inline)) inline void apply_row_as(const PlaneEpilogue<T>& pl, const EpilogueParams& p, const T* y, T* out,
                         const T* noise, int64_t len) {
  // Locals, not reads through pl / p: stores to out could alias those, which would force a reload per element
  // and keep the loop scalar.
  const T d = pl.d, bias = pl.bias;
  const double alpha = p.alpha, gain = p.gain, clamp = kClamp ? p.clamp : -1.0;
  for (int64_t i = 0; i < len; ++i)
    out[i] = bias_act<T>(y[i] * d + (kNoise ? noise[i] : T(0)), bias, kAct, alpha, gain, clamp);
}
}  // namespace detail

// out[i] = epilogue(y[i]) (+ residual[i]) for i < len, starting at offset `at` of the plane (noise index);
// out may alias y. Always inlined: it then compiles for the caller's instruction set (editgan/isa.h).
template <typename T>
__attribute__((always_inline)) inline void apply_row(const PlaneEpilogue<T>& pl, const EpilogueParams& p, const T* y, T* out, int64_t at,
                      int64_t len, const T* residual = nullptr) {
  const T* noise = pl.noise ? pl.noise + at : nullptr;
  const bool clamp = p.clamp >= 0;
#define EG_APPLY_ROW(kNoise, kAct, kClamp) detail::apply_row_as<T, kNoise, kAct, kClamp>(pl, p, y, out, noise, len)
  if (p.act == Act::LRelu) {
    if (noise) { if (clamp) EG_APPLY_ROW(true, Act::LRelu, true); else EG_APPLY_ROW(true, Act::LRelu, false); }
    else { if (clamp) EG_APPLY_ROW(false, Act::LRelu, true); else EG_APPLY_ROW(false, Act::LRelu, false); }
  } else {
    if (noise) { if (clamp) EG_APPLY_ROW(true, Act::Linear, true); else EG_APPLY_ROW(true, Act::Linear, false); }
    else { if (clamp) EG_APPLY_ROW(false, Act::Linear, true); else EG_APPLY_ROW(false, Act::Linear, false); }
  }
#undef EG_APPLY_ROW
  if (residual)
    for (int64_t i = 0; i < len; ++i) out[i] += residual[i];
}

// The optional epilogue tensors of a [N, C, H, W] output, checked against its sizes and dtype.
class EpilogueArgs {
 public:
  EpilogueArgs(at::IntArrayRef shape, at::ScalarType dtype, const c10::optional<at::Tensor>& d,
               const c10::optional<at::Tensor>& noise, const c10::optional<at::Tensor>& bias, int64_t act,
               double alpha, double gain, double clamp)
      : n_(shape[0]), c_(shape[1]), hw_(shape[2] * shape[3]), d_(d), noise_(noise), bias_(bias) {
    TORCH_CHECK(act == 0 || act == 1, "epilogue: act must be 0 (linear) or 1 (lrelu)");
    params_ = EpilogueParams{static_cast<Act>(act), alpha, gain, clamp};
    if (d) TORCH_CHECK(d->sizes() == at::IntArrayRef({n_, c_}) && d->is_contiguous() && d->scalar_type() == dtype,
                       "epilogue: d must be [N, C] = [", n_, ", ", c_, "] of the output's dtype");
    if (noise) TORCH_CHECK(noise->dim() == 4 && (noise->size(0) == 1 || noise->size(0) == n_) && noise->size(1) == 1 &&
                           noise->size(2) == shape[2] && noise->size(3) == shape[3] && noise->is_contiguous() &&
                           noise->scalar_type() == dtype,
                           "epilogue: noise must be [1|N, 1, H, W] of the output's size and dtype");
    if (bias) TORCH_CHECK(bias->numel() == c_ && bias->is_contiguous() && bias->scalar_type() == dtype,
                          "epilogue: bias must have C = ", c_, " entries of the output's dtype");
  }

  const EpilogueParams& params() const { return params_; }

  // Nothing to do: no d, noise or bias, linear, gain 1, no clamp (producers then skip apply_row).
  bool identity() const {
    return !d_ && !noise_ && !bias_ && params_.act == Act::Linear && params_.gain == 1.0 && params_.clamp < 0;
  }

  template <typename T>
  PlaneEpilogue<T> plane(int64_t k) const {
    const int64_t n = k / c_;
    return PlaneEpilogue<T>{d_ ? d_->data_ptr<T>()[k] : T(1),
                            noise_ ? noise_->data_ptr<T>() + (noise_->size(0) == 1 ? 0 : n) * hw_ : nullptr,
                            bias_ ? bias_->data_ptr<T>()[k % c_] : T(0)};
  }

 private:
  int64_t n_, c_, hw_;
  c10::optional<at::Tensor> d_, noise_, bias_;
  EpilogueParams params_;
};

}  // namespace editgan
