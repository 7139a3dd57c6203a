// Separable FIR filtering of NCHW planes with zero padding (upfirdn2d with down = 1), two ops:
// - fir_separable (up = 1): out[y][x] = sum_i sum_j g[i] g[j] in[y + i - pad0][x + j - pad0], out size
//   in + pad0 + pad1 - taps + 1. Its adjoint is itself with the taps reversed and pads (taps-1-pad0,
//   taps-1-pad1): the backward. Used for the blur after the up=2 transposed convolution, where a depthwise ATen
//   convolution is ~10x slower; the layer's epilogue (epilogue.h: demodulation, noise, bias, activation)
//   optionally runs on each output row as it is produced, so an up=2 layer needs no separate epilogue pass.
// - fir_upsample (up >= 1): the same on the input with up - 1 zeros inserted after each sample, out size
//   in * up + pad0 + pad1 - taps + 1, polyphase: output o takes taps t0, t0 + up, ... of input samples src0,
//   src0 + 1, ... (editgan::polyphase_start, shared with the CUDA upfirdn2d), never a product with an inserted
//   zero. Its adjoint (Python's backward) is fir_separable with the taps reversed, sampled every up-th output.
//   Used for ToRGB's skip upsampling: 3 channels, where ATen's depthwise transposed convolution spent ~90-140 us
//   a call on overhead (4 calls per synthesis of the bundled model).
// Both also run the upfirdn2d op for separable filters without downsampling (ops/_cpu_layers.py).
// g holds the taps already flipped and scaled (the caller decides convolution vs correlation and the gain).
// bf16 input (the bf16 mode's transposed convolution run natively in bf16) is widened to float32 as each row is
// copied in; the taps, the arithmetic and the output are float32: the documented bf16 -> fp32 boundary of the
// layer (the epilogue and everything after it work in float32, the layer stores its result in bf16).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "editgan/elementwise.h"
#include "editgan/grain.h"
#include "editgan/isa.h"
#include "editgan/scratch.h"
#include "epilogue.h"
#include "output_pool.h"

#include <algorithm>
#include <vector>

namespace {

template <typename Tin, typename T>
EG_ALWAYS_INLINE void fir_plane_body(const Tin* in, T* out, T* rows, T* line, int64_t h, int64_t w, int64_t oh,
                                     int64_t ow, const T* g, int64_t taps, int64_t pad0, int64_t up,
                                     const editgan::PolyphaseStart* col_starts,
                                     const editgan::PolyphaseStart* row_starts,
                                     const editgan::PlaneEpilogue<T>* epi, const editgan::EpilogueParams& ep) {
  // Horizontal pass into `rows` ([h, ow]). up = 1: through a zero-padded copy of each row (`line`, w + pads
  // long) so the inner loops carry no bounds checks and vectorize. up > 1: each output column's taps and first
  // input sample from col_starts.
  for (int64_t y = 0; y < h; ++y) {
    T* dst = rows + y * ow;
    if (up == 1) {
      for (int64_t x = 0; x < w; ++x) line[pad0 + x] = static_cast<T>(in[y * w + x]);
      for (int64_t x = 0; x < ow; ++x) dst[x] = 0;
      for (int64_t j = 0; j < taps; ++j) {
        const T gj = g[j];
        const T* src = line + j;
        for (int64_t x = 0; x < ow; ++x) dst[x] += gj * src[x];
      }
      continue;
    }
    const Tin* row = in + y * w;
    for (int64_t x = 0; x < ow; ++x) {
      T acc = 0;
      int64_t i = col_starts[x].src0;
      for (int64_t j = col_starts[x].t0; j < taps; j += up, ++i)
        if (i >= 0 && i < w) acc += g[j] * static_cast<T>(row[i]);
      dst[x] = acc;
    }
  }
  // Vertical pass into `out`: output row y sums taps t0, t0 + up, ... of rows src0, src0 + 1, ...
  for (int64_t y = 0; y < oh; ++y) {
    T* dst = out + y * ow;
    for (int64_t x = 0; x < ow; ++x) dst[x] = 0;
    int64_t sy = row_starts[y].src0;
    for (int64_t i = row_starts[y].t0; i < taps; i += up, ++sy) {
      if (sy < 0 || sy >= h) continue;
      const T gi = g[i];
      const T* src = rows + sy * ow;
      for (int64_t x = 0; x < ow; ++x) dst[x] += gi * src[x];
    }
    if (epi) editgan::apply_row(*epi, ep, dst, dst, y * ow, ow);
  }
}
#define EG_FIR_TEMPLATE template <typename Tin, typename T>
EG_ISA_VARIANTS(EG_FIR_TEMPLATE, void, fir_plane,
                (const Tin* in, T* out, T* rows, T* line, int64_t h, int64_t w, int64_t oh, int64_t ow, const T* g,
                 int64_t taps, int64_t pad0, int64_t up, const editgan::PolyphaseStart* col_starts,
                 const editgan::PolyphaseStart* row_starts, const editgan::PlaneEpilogue<T>* epi,
                 const editgan::EpilogueParams& ep),
                (in, out, rows, line, h, w, oh, ow, g, taps, pad0, up, col_starts, row_starts, epi, ep))
#undef EG_FIR_TEMPLATE

at::Tensor fir(const char* op, const at::Tensor& x, const at::Tensor& taps, int64_t up, int64_t pad0,
              int64_t pad1, const c10::optional<at::Tensor>& d, const c10::optional<at::Tensor>& noise,
              const c10::optional<at::Tensor>& bias, int64_t act, double alpha, double gain, double clamp) {
  TORCH_CHECK(x.dim() == 4 && x.device().is_cpu(), op, ": x must be a CPU NCHW tensor");
  TORCH_CHECK(up >= 1, op, ": up must be >= 1, got ", up);
  const bool bf16_in = x.scalar_type() == at::kBFloat16;
  const auto dtype = bf16_in ? at::kFloat : x.scalar_type();  // compute and output dtype
  TORCH_CHECK(taps.dim() == 1 && taps.scalar_type() == dtype,
              op, ": taps must be 1-D of x's dtype (float32 for bfloat16 x)");
  TORCH_CHECK(pad0 >= 0 && pad1 >= 0, op, ": pads must be >= 0");
  auto xc = x.contiguous();
  auto g = taps.contiguous();
  const int64_t n = x.size(0) * x.size(1), h = x.size(2), w = x.size(3), t = g.size(0);
  const int64_t oh = h * up + pad0 + pad1 - t + 1, ow = w * up + pad0 + pad1 - t + 1;
  TORCH_CHECK(oh > 0 && ow > 0, op, ": empty output");
  // Each output row's and column's first tap and input sample (up = 1: tap 0 of sample o - pad0).
  std::vector<editgan::PolyphaseStart> row_starts(oh), col_starts(ow);
  for (int64_t o = 0; o < oh; ++o) row_starts[o] = editgan::polyphase_start((int)o, (int)up, 1, (int)pad0);
  for (int64_t o = 0; o < ow; ++o) col_starts[o] = editgan::polyphase_start((int)o, (int)up, 1, (int)pad0);
  auto out = editgan::pooled_empty({x.size(0), x.size(1), oh, ow}, x.options().dtype(dtype));
  const editgan::EpilogueArgs epilogue(out.sizes(), out.scalar_type(), d, noise, bias, act, alpha, gain, clamp);
  const bool fused = !epilogue.identity();
  AT_DISPATCH_FLOATING_TYPES(dtype, "fir_separable", [&] {
    auto run = [&](auto* in) {  // in: x's data, scalar_t or (for bf16 x) c10::BFloat16
      at::parallel_for(0, n, editgan::grain_for(h * w), [&](int64_t begin, int64_t end) {
        scalar_t* rows = editgan::scratch<scalar_t, editgan::kFirRows>(h * ow);
        scalar_t* line = editgan::scratch<scalar_t, editgan::kFirLine>(w + pad0 + pad1);
        std::fill(line, line + w + pad0 + pad1, scalar_t(0));  // the pads stay zero
        for (int64_t k = begin; k < end; ++k) {
          const auto pl = epilogue.plane<scalar_t>(k);
          fir_plane(in + k * h * w, out.data_ptr<scalar_t>() + k * oh * ow, rows, line, h, w, oh, ow,
                    g.data_ptr<scalar_t>(), t, pad0, up, col_starts.data(), row_starts.data(),
                    fused ? &pl : nullptr, epilogue.params());
        }
      });
    };
    if (bf16_in) run(xc.data_ptr<c10::BFloat16>());
    else run(xc.data_ptr<scalar_t>());
  });
  return out;
}

at::Tensor fir_separable(const at::Tensor& x, const at::Tensor& taps, int64_t pad0, int64_t pad1,
                         const c10::optional<at::Tensor>& d, const c10::optional<at::Tensor>& noise,
                         const c10::optional<at::Tensor>& bias, int64_t act, double alpha, double gain, double clamp) {
  return fir("fir_separable", x, taps, 1, pad0, pad1, d, noise, bias, act, alpha, gain, clamp);
}

at::Tensor fir_upsample(const at::Tensor& x, const at::Tensor& taps, int64_t up, int64_t pad0, int64_t pad1) {
  return fir("fir_upsample", x, taps, up, pad0, pad1, c10::nullopt, c10::nullopt, c10::nullopt, 0, 0.2, 1.0, -1.0);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(editgan_fast, m) {
  m.def("fir_separable(Tensor x, Tensor taps, int pad0, int pad1, Tensor? d=None, Tensor? noise=None, "
        "Tensor? bias=None, int act=0, float alpha=0.2, float gain=1., float clamp=-1.) -> Tensor");
  m.def("fir_upsample(Tensor x, Tensor taps, int up, int pad0, int pad1) -> Tensor");
}

TORCH_LIBRARY_IMPL(editgan_fast, CPU, m) {
  m.impl("fir_separable", &fir_separable);
  m.impl("fir_upsample", &fir_upsample);
}
