// The process-wide ISA setting of isa.h, and the operators Python reads and forces it through.
#include "editgan/isa.h"

#include <ATen/ATen.h>
#include <torch/library.h>

#include <atomic>
#include <string>
#include <vector>

namespace editgan {

Isa best_isa() {
#if defined(__x86_64__) && defined(__GNUC__)
  static const Isa best = [] {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl"))
      return Isa::Avx512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Isa::Avx2;
    return Isa::Portable;
  }();
  return best;
#else
  return Isa::Portable;
#endif
}

namespace {
std::atomic<int> active{-1};  // -1: not forced, run best_isa()
}

Isa active_isa() {
  const int a = active.load(std::memory_order_relaxed);
  return a < 0 ? best_isa() : static_cast<Isa>(a);
}

}  // namespace editgan

namespace {

const char* const kNames[] = {"portable", "avx2", "avx512"};

// Forces `name` ("auto": the widest the CPU runs); returns the branch now active. A branch the CPU cannot
// execute is refused (its instructions would fault).
std::string set_cpu_isa(const std::string& name) {
  int level = -1;
  for (int i = 0; i < 3; ++i)
    if (name == kNames[i]) level = i;
  TORCH_CHECK(level >= 0 || name == "auto", "set_cpu_isa: unknown ISA '", name,
              "'; choose auto, avx512, avx2 or portable");
  TORCH_CHECK(level <= static_cast<int>(editgan::best_isa()), "set_cpu_isa: this CPU cannot run the ", name,
              " kernels (it supports up to ", kNames[static_cast<int>(editgan::best_isa())], ")");
  editgan::active.store(level, std::memory_order_relaxed);
  return kNames[static_cast<int>(editgan::active_isa())];
}

std::vector<std::string> cpu_isa_info() {
  return {kNames[static_cast<int>(editgan::best_isa())], kNames[static_cast<int>(editgan::active_isa())]};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(editgan_fast, m) {
  m.def("set_cpu_isa(str name) -> str", &set_cpu_isa);
  m.def("cpu_isa_info() -> str[]", &cpu_isa_info);  // [best, active]
}
