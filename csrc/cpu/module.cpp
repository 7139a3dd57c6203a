// The Python module of the native CPU extension. Kernels register themselves as torch operators in their
// own files (TORCH_LIBRARY_FRAGMENT(editgan_fast, m)), reached from Python as torch.ops.editgan_fast.*;
// this file only makes the shared library importable as editgan_fast._C.
#include <torch/extension.h>

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "editgan-fast native CPU kernels (operators live under torch.ops.editgan_fast)";
}
