// Native checks of csrc/include/editgan/elementwise.h against independent formulas (plain C++, asserts).
// Built by CMakeLists.txt (ctest) and by tests/test_native_math.py with the system compiler.
#undef NDEBUG
#include <cassert>
#include <cmath>
#include <cstdio>
#include <vector>

#include "editgan/elementwise.h"

using namespace editgan;

static bool close(double a, double b, double tol) { return std::fabs(a - b) <= tol * (1.0 + std::fabs(b)); }

// Deterministic values in [-3, 3] that avoid the kinks at 0 and +-clamp (for finite differences).
static std::vector<float> sample_values() {
  std::vector<float> v;
  for (int i = 0; i < 601; ++i) v.push_back(-3.f + 0.01f * i + 0.00037f);
  return v;
}

static void check_bias_act() {
  const float alpha = 0.2f, gain = std::sqrt(2.f), bias = 0.25f;
  for (float x : sample_values()) {
    double s = (double)x + bias;
    double lrelu = (s > 0 ? s : alpha * s) * gain;
    assert(close(bias_act(x, bias, Act::LRelu, alpha, gain, -1.f), lrelu, 1e-6));
    assert(close(bias_act(x, bias, Act::Linear, alpha, 1.f, -1.f), s, 1e-6));
    double clamped = std::fmin(std::fmax(lrelu, -1.5), 1.5);
    assert(close(bias_act(x, bias, Act::LRelu, alpha, gain, 1.5f), clamped, 1e-6));
  }
}

// The derivative against a central difference of bias_act itself, away from the kinks.
static void check_bias_act_grad() {
  const float alpha = 0.2f, gain = 1.7f, clamp = 2.0f;
  const double h = 1e-3;
  for (float s : sample_values()) {
    for (int act = 0; act < 2; ++act) {
      for (float c : {-1.f, clamp}) {
        double y = (act ? (s > 0 ? s : alpha * s) : s) * gain;
        if (std::fabs(s) < 2 * h || (c >= 0 && std::fabs(std::fabs(y) - c) < 4 * h)) continue;
        auto f = [&](double v) { return (double)bias_act((float)v, 0.f, (Act)act, alpha, gain, c); };
        double fd = (f(s + h) - f(s - h)) / (2 * h);
        assert(close(bias_act_grad(s, (Act)act, alpha, gain, c), fd, 1e-2));
      }
    }
  }
  // Conventions at the kinks, as torch defines them: slope alpha at s == 0, zero gradient past the clamp.
  assert(bias_act_grad(0.f, Act::LRelu, alpha, 1.f, -1.f) == alpha);
  assert(bias_act_grad(5.f, Act::Linear, alpha, 1.f, 1.f) == 0.f);
}

// Linear taps against the align_corners=False rule written in double precision, and as weights that
// reproduce linear functions exactly in the interior (the defining property of linear interpolation).
static void check_linear_taps() {
  for (int in = 1; in <= 70; ++in) {
    for (int out = 1; out <= 140; ++out) {
      for (int o = 0; o < out; ++o) {
        LinearTaps t = linear_taps(o, in, out);
        double src = std::fmax((o + 0.5) * in / out - 0.5, 0.0);
        int i0 = std::min((int)std::floor(src), in - 1);
        assert(t.i0 == i0 || std::fabs(src - std::round(src)) < 1e-5);  // float vs double at integers
        assert(t.i0 >= 0 && t.i0 < in && t.i1 >= t.i0 && t.i1 < in && t.i1 <= t.i0 + 1);
        assert(close(t.w0 + t.w1, 1.0, 1e-6) && t.w0 >= -1e-6 && t.w1 >= -1e-6);
        double value = t.w0 * t.i0 + t.w1 * t.i1;  // interpolating f(i) = i
        double expect = std::fmin(src, (double)(in - 1));
        assert(std::fabs(value - expect) < 1e-4);
      }
    }
  }
}

// Nearest index against exact rational arithmetic where the float rule cannot round differently.
static void check_nearest_index() {
  for (int in = 1; in <= 70; ++in) {
    for (int out = 1; out <= 140; ++out) {
      for (int o = 0; o < out; ++o) {
        int i = nearest_index(o, in, out);
        assert(i >= 0 && i < in);
        int exact = std::min(o * in / out, in - 1);
        if ((o * in) % out != 0) assert(i == exact);
        else assert(i == exact || i == exact - 1);  // an exact integer may land just below in float
      }
    }
  }
}

static void check_floor_div() {
  for (int a = -50; a <= 50; ++a)
    for (int b = 1; b <= 7; ++b) assert(floor_div(a, b) == (int)std::floor((double)a / b));
}

// Polyphase upfirdn along one axis against the literal definition: zero insertion, padding, correlation.
static void check_polyphase() {
  for (int up = 1; up <= 4; ++up)
    for (int down = 1; down <= 3; ++down)
      for (int fh = 1; fh <= 6; ++fh)
        for (int pad0 = -3; pad0 <= 5; ++pad0)
          for (int pad1 = -3; pad1 <= 5; ++pad1)
            for (int len = 1; len <= 9; ++len) {
              int padded = len * up + pad0 + pad1;
              if (padded < fh) continue;
              int out = (padded - fh) / down + 1;
              std::vector<double> x(len), g(fh);
              for (int i = 0; i < len; ++i) x[i] = 1.0 + i * 0.37 - (i % 3);
              for (int t = 0; t < fh; ++t) g[t] = 0.5 + t * 1.3;
              for (int o = 0; o < out; ++o) {
                double direct = 0;
                for (int t = 0; t < fh; ++t) {
                  int k = o * down + t - pad0;  // index into the zero-inserted signal
                  if (k >= 0 && k < len * up && k % up == 0) direct += g[t] * x[k / up];
                }
                PolyphaseStart s = polyphase_start(o, up, down, pad0);
                assert(s.t0 >= 0 && s.t0 < up);
                double poly = 0;
                for (int t = s.t0, src = s.src0; t < fh; t += up, ++src)
                  if (src >= 0 && src < len) poly += g[t] * x[src];
                assert(std::fabs(poly - direct) < 1e-9);
              }
            }
}

int main() {
  check_bias_act();
  check_bias_act_grad();
  check_linear_taps();
  check_nearest_index();
  check_floor_div();
  check_polyphase();
  std::puts("elementwise.h: all checks passed");
  return 0;
}
