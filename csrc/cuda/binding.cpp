// Torch binding of the CUDA kernels: checks tensors, picks the stream, calls the launchers of launchers.h,
// and registers the operators as torch.ops.editgan_fast_cuda.*. Compiled only in CUDA builds (setup.py);
// the Python side (editgan_fast/ops/_cuda_backend.py) adds autograd and the reference signatures.
#include <Python.h>

#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <optional>
#include <vector>

#include "launchers.h"

namespace editgan {
namespace cuda {
namespace {

Storage storage_of(const at::Tensor& t, const char* name) {
  switch (t.scalar_type()) {
    case at::kFloat: return Storage::F32;
    case at::kHalf: return Storage::F16;
    case at::kBFloat16: return Storage::BF16;
    default: TORCH_CHECK(false, name, " must be float32, float16 or bfloat16, got ", t.scalar_type());
  }
}

void check_cuda(const at::Tensor& t, const char* name, const at::Tensor& like) {
  TORCH_CHECK(t.is_cuda(), name, " must be a CUDA tensor, got one on ", t.device());
  TORCH_CHECK(t.device() == like.device(), name, " is on ", t.device(), " but the input is on ", like.device());
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
}

void check_launch(cudaError_t err, const char* what) {
  TORCH_CHECK(err == cudaSuccess, what, " kernel launch failed: ", cudaGetErrorString(err));
}

// Checks the bias and the activation of bias_act(_grad) and gives the [outer, channels, inner] view of x for a
// bias along `dim` (channels = 1 without a bias).
void bias_act_layout(const at::Tensor& x, const std::optional<at::Tensor>& b, int64_t dim, int64_t act,
                     int64_t& outer, int64_t& channels, int64_t& inner) {
  if (b.has_value()) check_cuda(*b, "bias", x);
  TORCH_CHECK(act == 0 || act == 1, "act must be 0 (linear) or 1 (lrelu), got ", act);
  if (!b.has_value()) {
    outer = 1, channels = 1, inner = x.numel();
    return;
  }
  TORCH_CHECK(dim >= 0 && dim < x.dim(), "bias dim ", dim, " is out of range for a ", x.dim(), "-d input");
  TORCH_CHECK(b->dim() == 1 && b->size(0) == x.size(dim), "bias has shape ", b->sizes(), " but x has ",
              x.size(dim), " entries along dim ", dim);
  TORCH_CHECK(b->scalar_type() == x.scalar_type(), "bias dtype ", b->scalar_type(), " differs from x's ",
              x.scalar_type());
  outer = 1, inner = 1, channels = x.size(dim);
  for (int64_t i = 0; i < dim; ++i) outer *= x.size(i);
  for (int64_t i = dim + 1; i < x.dim(); ++i) inner *= x.size(i);
}

at::Tensor bias_act(const at::Tensor& x, const std::optional<at::Tensor>& b, int64_t dim, int64_t act,
                    double alpha, double gain, double clamp) {
  check_cuda(x, "x", x);
  int64_t outer, channels, inner;
  bias_act_layout(x, b, dim, act, outer, channels, inner);
  c10::cuda::CUDAGuard guard(x.device());
  at::Tensor y = at::empty_like(x);
  check_launch(launch_bias_act(x.data_ptr(), b.has_value() ? b->data_ptr() : nullptr, y.data_ptr(), outer,
                               channels, inner, (int)act, (float)alpha, (float)gain, (float)clamp,
                               storage_of(x, "x"), c10::cuda::getCurrentCUDAStream()),
               "bias_act");
  return y;
}

at::Tensor bias_act_grad(const at::Tensor& dy, const at::Tensor& x, const std::optional<at::Tensor>& b,
                         int64_t dim, int64_t act, double alpha, double gain, double clamp) {
  check_cuda(x, "x", x);
  check_cuda(dy, "grad", x);
  TORCH_CHECK(dy.sizes() == x.sizes() && dy.scalar_type() == x.scalar_type(), "grad ", dy.sizes(), " ",
              dy.scalar_type(), " does not match x ", x.sizes(), " ", x.scalar_type());
  int64_t outer, channels, inner;
  bias_act_layout(x, b, dim, act, outer, channels, inner);
  c10::cuda::CUDAGuard guard(x.device());
  at::Tensor dx = at::empty_like(x);
  check_launch(launch_bias_act_grad(dy.data_ptr(), x.data_ptr(), b.has_value() ? b->data_ptr() : nullptr,
                                    dx.data_ptr(), outer, channels, inner, (int)act, (float)alpha, (float)gain,
                                    (float)clamp, storage_of(x, "x"), c10::cuda::getCurrentCUDAStream()),
               "bias_act_grad");
  return dx;
}

// `g` is the fp32 correlation filter [fh, fw] with the gain folded in (see _cuda_backend.py).
at::Tensor upfirdn2d(const at::Tensor& x, const at::Tensor& g, int64_t up, int64_t down, int64_t px0,
                     int64_t px1, int64_t py0, int64_t py1) {
  check_cuda(x, "x", x);
  check_cuda(g, "filter", x);
  TORCH_CHECK(x.dim() == 4, "x must be [N, C, H, W], got ", x.sizes());
  TORCH_CHECK(g.dim() == 2 && g.scalar_type() == at::kFloat, "filter must be a 2-D float32 tensor, got ",
              g.sizes(), " ", g.scalar_type());
  TORCH_CHECK(up >= 1 && down >= 1, "up and down must be >= 1, got ", up, ", ", down);
  const int fh = (int)g.size(0), fw = (int)g.size(1);
  const int64_t in_h = x.size(2), in_w = x.size(3);
  const int64_t out_h = (in_h * up + py0 + py1 - fh) / down + 1, out_w = (in_w * up + px0 + px1 - fw) / down + 1;
  TORCH_CHECK(out_h >= 1 && out_w >= 1, "upfirdn2d output would be empty for input ", x.sizes());
  size_t smem = upfirdn2d_shared_bytes(fh, fw, (int)up, (int)down);
  TORCH_CHECK(smem <= 48 * 1024, "upfirdn2d filter ", fh, "x", fw, " with up=", up, " down=", down,
              " needs ", smem, " bytes of shared memory per tile (limit 49152)");
  c10::cuda::CUDAGuard guard(x.device());
  at::Tensor y = at::empty({x.size(0), x.size(1), out_h, out_w}, x.options());
  check_launch(launch_upfirdn2d(x.data_ptr(), g.data_ptr<float>(), y.data_ptr(), x.size(0) * x.size(1),
                                (int)in_h, (int)in_w, (int)out_h, (int)out_w, fh, fw, (int)up, (int)down, (int)px0,
                                (int)py0, storage_of(x, "x"), c10::cuda::getCurrentCUDAStream()),
               "upfirdn2d");
  return y;
}

// proj[m]: [N, h_m, w_m, E*H1] fp32 first-layer projections; weights stacked over members, dense ones
// transposed (launchers.h).
at::Tensor seg_head(const std::vector<at::Tensor>& proj, const at::Tensor& b1, const at::Tensor& w2t,
                    const at::Tensor& b2, const at::Tensor& w3t, const at::Tensor& b3, int64_t out_h,
                    int64_t out_w, int64_t y0, int64_t x0, int64_t crop_h, int64_t crop_w,
                    const std::optional<at::Tensor>& pixel_index, int64_t num_pixels, bool bilinear) {
  TORCH_CHECK(!proj.empty() && (int64_t)proj.size() <= kMaxSegMaps, "seg_head takes 1 to ", kMaxSegMaps,
              " feature maps, got ", proj.size());
  const at::Tensor& first = proj[0];
  TORCH_CHECK(b1.dim() == 2 && w2t.dim() == 3 && b2.dim() == 2 && w3t.dim() == 3 && b3.dim() == 2,
              "seg_head weights must be b1 [E,H1], w2t [E,H1,H2], b2 [E,H2], w3t [E,H2,C], b3 [E,C]");
  const int64_t E = b1.size(0), H1 = b1.size(1), H2 = w2t.size(2), C = w3t.size(2);
  TORCH_CHECK(w2t.size(0) == E && w2t.size(1) == H1 && b2.size(0) == E && b2.size(1) == H2 && w3t.size(0) == E &&
                  w3t.size(1) == H2 && b3.size(0) == E && b3.size(1) == C,
              "seg_head weight shapes disagree: b1 ", b1.sizes(), " w2t ", w2t.sizes(), " b2 ", b2.sizes(), " w3t ",
              w3t.sizes(), " b3 ", b3.sizes());
  const char* names[] = {"b1", "w2t", "b2", "w3t", "b3"};
  const at::Tensor* weights[] = {&b1, &w2t, &b2, &w3t, &b3};
  for (int i = 0; i < 5; ++i) {
    check_cuda(*weights[i], names[i], first);
    TORCH_CHECK(weights[i]->scalar_type() == at::kFloat, names[i], " must be float32");
  }
  SegMaps maps{};
  maps.count = (int)proj.size();
  const int64_t batch = first.size(0);
  for (size_t m = 0; m < proj.size(); ++m) {
    check_cuda(proj[m], "projected feature map", first);
    TORCH_CHECK(proj[m].scalar_type() == at::kFloat && proj[m].dim() == 4 && proj[m].size(0) == batch &&
                    proj[m].size(3) == E * H1,
                "projected map ", m, " must be float32 [N=", batch, ", h, w, ", E * H1, "], got ",
                proj[m].sizes(), " ", proj[m].scalar_type());
    maps.proj[m] = proj[m].data_ptr<float>();
    maps.h[m] = (int)proj[m].size(1);
    maps.w[m] = (int)proj[m].size(2);
  }
  TORCH_CHECK(0 <= y0 && y0 + crop_h <= out_h && 0 <= x0 && x0 + crop_w <= out_w && crop_h > 0 && crop_w > 0,
              "crop (", y0, ", ", x0, ", ", crop_h, "x", crop_w, ") does not fit in ", out_h, "x", out_w);
  const int32_t* index = nullptr;
  if (pixel_index.has_value()) {
    check_cuda(*pixel_index, "pixel_index", first);
    TORCH_CHECK(pixel_index->scalar_type() == at::kInt && pixel_index->dim() == 1 &&
                    pixel_index->size(0) == num_pixels,
                "pixel_index must be int32 [", num_pixels, "], got ", pixel_index->sizes(), " ",
                pixel_index->scalar_type());
    index = pixel_index->data_ptr<int32_t>();
  } else {
    TORCH_CHECK(num_pixels == crop_h * crop_w, "without pixel_index, num_pixels must be the crop's ",
                crop_h * crop_w, ", got ", num_pixels);
  }
  TORCH_CHECK(seg_head_tile_pixels((int)H1, (int)H2, (int)C) > 0, "seg_head hidden sizes H1=", H1, " H2=", H2,
              " C=", C, " do not fit in shared memory");
  c10::cuda::CUDAGuard guard(first.device());
  at::Tensor logits = at::empty({batch, C, num_pixels}, first.options());
  check_launch(launch_seg_head(maps, (int)batch, (int)E, (int)H1, (int)H2, (int)C, b1.data_ptr<float>(),
                               w2t.data_ptr<float>(), b2.data_ptr<float>(), w3t.data_ptr<float>(),
                               b3.data_ptr<float>(), (int)out_h, (int)out_w, (int)y0, (int)x0, (int)crop_h,
                               (int)crop_w, index, num_pixels, bilinear, logits.data_ptr<float>(),
                               c10::cuda::getCurrentCUDAStream()),
               "seg_head");
  return logits;
}

}  // namespace
}  // namespace cuda
}  // namespace editgan

TORCH_LIBRARY_FRAGMENT(editgan_fast_cuda, m) {
  m.def("bias_act(Tensor x, Tensor? b, int dim, int act, float alpha, float gain, float clamp) -> Tensor");
  m.def("bias_act_grad(Tensor dy, Tensor x, Tensor? b, int dim, int act, float alpha, float gain, "
        "float clamp) -> Tensor");
  m.def("upfirdn2d(Tensor x, Tensor g, int up, int down, int px0, int px1, int py0, int py1) -> Tensor");
  m.def("seg_head(Tensor[] proj, Tensor b1, Tensor w2t, Tensor b2, Tensor w3t, Tensor b3, int out_h, int out_w, "
        "int y0, int x0, int crop_h, int crop_w, Tensor? pixel_index, int num_pixels, bool bilinear) -> Tensor");
}

TORCH_LIBRARY_IMPL(editgan_fast_cuda, CUDA, m) {
  m.impl("bias_act", &editgan::cuda::bias_act);
  m.impl("bias_act_grad", &editgan::cuda::bias_act_grad);
  m.impl("upfirdn2d", &editgan::cuda::upfirdn2d);
  m.impl("seg_head", &editgan::cuda::seg_head);
}

// A bare Python module, so `import editgan_fast._cuda` loads the library and runs the registrations above
// (no pybind11: the operators are reached through torch.ops).
PyMODINIT_FUNC PyInit__cuda(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_cuda",
                               "editgan-fast CUDA kernels (operators live under torch.ops.editgan_fast_cuda)",
                               -1, nullptr};
  return PyModule_Create(&module);
}
