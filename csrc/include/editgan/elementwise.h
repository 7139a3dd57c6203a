// Per-element math shared by the CPU (C++) and CUDA kernels, so the CUDA code's arithmetic is the code
// tested on CPU-only machines. No torch headers here: the .cu files include this directly.
#pragma once
#include <cmath>

#if defined(__CUDACC__)
#define EG_HD __host__ __device__ __forceinline__
#else
#define EG_HD inline
#endif

namespace editgan {

enum class Act : int { Linear = 0, LRelu = 1 };

// The StyleGAN2 layer epilogue: clamp(act(v + bias) * gain). clamp < 0 means no clamp.
// Templated on the value type so the CPU kernels run the same code in float64 (gradcheck) and float32.
template <typename T>
EG_HD T bias_act(T v, T bias, Act act, double alpha, double gain, double clamp) {
  // The CPU loops over this vectorize only when built with -fno-trapping-math (setup.py): otherwise GCC keeps
  // the float selects below as branches.
  const T a = T(alpha), g = T(gain), c = T(clamp);
  v += bias;
  if (act == Act::LRelu) v = v < T(0) ? v * a : v;
  v *= g;
  if (clamp >= 0.0) v = v < -c ? -c : (v > c ? c : v);
  return v;
}

// d bias_act / dv, evaluated at the pre-activation sum s = v + bias. Matches torch: leaky_relu's slope is
// alpha for s <= 0, and clamp passes the gradient only where the unclamped value lies inside [-clamp, clamp].
template <typename T>
EG_HD T bias_act_grad(T s, Act act, double alpha, double gain, double clamp) {
  T g = (act == Act::LRelu && !(s > T(0))) ? T(alpha) * T(gain) : T(gain);
  if (clamp >= 0.0) {
    T y = s * g;
    if (y < T(-clamp) || y > T(clamp)) return T(0);
  }
  return g;
}

// Source taps of 1-D linear interpolation with align_corners=False (PyTorch's F.interpolate rule):
// out index o of out_len maps to src = (o + 0.5) * in_len / out_len - 0.5, clamped at 0;
// taps i0, i1 = min(i0 + 1, in_len - 1) with weights (1 - l1, l1).
struct LinearTaps {
  int i0, i1;
  float w0, w1;
};

EG_HD LinearTaps linear_taps(int o, int in_len, int out_len) {
  LinearTaps t;
  float scale = (float)in_len / (float)out_len;
  float src = ((float)o + 0.5f) * scale - 0.5f;
  if (src < 0.f) src = 0.f;
  int i0 = (int)src;
  if (i0 > in_len - 1) i0 = in_len - 1;
  float l1 = src - (float)i0;
  t.i0 = i0;
  t.i1 = i0 + 1 < in_len ? i0 + 1 : in_len - 1;
  t.w1 = l1;
  t.w0 = 1.f - l1;
  return t;
}

// PyTorch's "nearest" (legacy) source index: floor(o * in_len / out_len), clamped.
EG_HD int nearest_index(int o, int in_len, int out_len) {
  float scale = (float)in_len / (float)out_len;
  int i = (int)floorf((float)o * scale);
  return i < in_len - 1 ? i : in_len - 1;
}

// Floor division for a possibly negative numerator and a positive divisor (C++ '/' truncates toward zero).
EG_HD int floor_div(int a, int b) {
  int q = a / b;
  return (q * b > a) ? q - 1 : q;
}

// Polyphase upfirdn index math, along one axis. With the correlation filter g (g[t] = f[fh-1-t] for
// upfirdn2d's true convolution, g = f when flip_filter), output o reads the zero-inserted, padded signal
// at o*down + t - pad0 for t = 0..fh-1. Only positions divisible by `up` are input samples, so the taps
// that matter start at t0 (the smallest t making o*down + t - pad0 a multiple of up) and go in steps of
// `up`, reading input samples src0, src0 + 1, ... (src0 may be out of range: those samples are zero).
struct PolyphaseStart {
  int t0;
  int src0;
};

EG_HD PolyphaseStart polyphase_start(int o, int up, int down, int pad0) {
  int k = o * down - pad0;
  int r = k - floor_div(k, up) * up;  // k mod up, in [0, up)
  PolyphaseStart s;
  s.t0 = r == 0 ? 0 : up - r;
  s.src0 = floor_div(k + s.t0, up);
  return s;
}

}  // namespace editgan
