// Separable FIR filtering of NCHW planes with zero padding (upfirdn2d with up = down = 1):
//   out[y][x] = sum_i sum_j g[i] g[j] in[y + i - pad0][x + j - pad0],  out size = in + pad0 + pad1 - taps + 1.
// g holds the taps already flipped and scaled (the caller decides convolution vs correlation and the gain), so
// the adjoint is this same kernel with the taps reversed and pads (taps-1-pad0, taps-1-pad1): the backward.
// Used for the blur after the up=2 transposed convolution, where a depthwise ATen convolution is ~10x slower;
// the layer's epilogue (epilogue.h: demodulation, noise, bias, activation) optionally runs on each output row
// as it is produced, so an up=2 layer needs no separate epilogue pass.
// bf16 input (the bf16 mode's transposed convolution run natively in bf16) is widened to float32 as each row is
// copied in; the taps, the arithmetic and the output are float32: the documented bf16 -> fp32 boundary of the
// layer (the epilogue and everything after it work in float32, the layer stores its result in bf16).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "editgan/grain.h"
#include "editgan/isa.h"
#include "editgan/scratch.h"
#include "epilogue.h"
#include "output_pool.h"

#include <algorithm>

namespace {

template <typename Tin, typename T>
EG_ALWAYS_INLINE void fir_plane_body(const Tin* in, T* out, T* rows, T* line, int64_t h, int64_t w, int64_t oh,
                                     int64_t ow, const T* g, int64_t taps, int64_t pad0,
                                     const editgan::PlaneEpilogue<T>* epi, const editgan::EpilogueParams& ep) {
  // Horizontal pass into `rows` ([h, ow]) through a zero-padded copy of each row (`line`, w + pads long) so the
  // inner loops carry no bounds checks and vectorize; then the vertical pass into `out`.
  for (int64_t y = 0; y < h; ++y) {
    for (int64_t x = 0; x < w; ++x) line[pad0 + x] = static_cast<T>(in[y * w + x]);
    T* dst = rows + y * ow;
    for (int64_t x = 0; x < ow; ++x) dst[x] = 0;
    for (int64_t j = 0; j < taps; ++j) {
      const T gj = g[j];
      const T* src = line + j;
      for (int64_t x = 0; x < ow; ++x) dst[x] += gj * src[x];
    }
  }
  for (int64_t y = 0; y < oh; ++y) {
    T* dst = out + y * ow;
    for (int64_t x = 0; x < ow; ++x) dst[x] = 0;
    for (int64_t i = 0; i < taps; ++i) {
      const int64_t sy = y + i - pad0;
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
                 int64_t taps, int64_t pad0, const editgan::PlaneEpilogue<T>* epi, const editgan::EpilogueParams& ep),
                (in, out, rows, line, h, w, oh, ow, g, taps, pad0, epi, ep))
#undef EG_FIR_TEMPLATE

at::Tensor fir_separable(const at::Tensor& x, const at::Tensor& taps, int64_t pad0, int64_t pad1,
                         const c10::optional<at::Tensor>& d, const c10::optional<at::Tensor>& noise,
                         const c10::optional<at::Tensor>& bias, int64_t act, double alpha, double gain, double clamp) {
  TORCH_CHECK(x.dim() == 4 && x.device().is_cpu(), "fir_separable: x must be a CPU NCHW tensor");
  const bool bf16_in = x.scalar_type() == at::kBFloat16;
  const auto dtype = bf16_in ? at::kFloat : x.scalar_type();  // compute and output dtype
  TORCH_CHECK(taps.dim() == 1 && taps.scalar_type() == dtype,
              "fir_separable: taps must be 1-D of x's dtype (float32 for bfloat16 x)");
  TORCH_CHECK(pad0 >= 0 && pad1 >= 0, "fir_separable: pads must be >= 0");
  auto xc = x.contiguous();
  auto g = taps.contiguous();
  const int64_t n = x.size(0) * x.size(1), h = x.size(2), w = x.size(3), t = g.size(0);
  const int64_t oh = h + pad0 + pad1 - t + 1, ow = w + pad0 + pad1 - t + 1;
  TORCH_CHECK(oh > 0 && ow > 0, "fir_separable: empty output");
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
                    g.data_ptr<scalar_t>(), t, pad0, fused ? &pl : nullptr, epilogue.params());
        }
      });
    };
    if (bf16_in) run(xc.data_ptr<c10::BFloat16>());
    else run(xc.data_ptr<scalar_t>());
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(editgan_fast, m) {
  m.def("fir_separable(Tensor x, Tensor taps, int pad0, int pad1, Tensor? d=None, Tensor? noise=None, "
        "Tensor? bias=None, int act=0, float alpha=0.2, float gain=1., float clamp=-1.) -> Tensor");
}

TORCH_LIBRARY_IMPL(editgan_fast, CPU, m) { m.impl("fir_separable", &fir_separable); }
