// Large outputs of the cpu kernels come from a pool of recycled blocks instead of fresh allocations.
//
// glibc maps every block of more than a few MB anew and unmaps it on free, so each layer output of a 512 px
// synthesis (up to 67 MB) was page-faulted in and zeroed by the kernel on first write: ~100K faults, ~0.1 s,
// per synthesis. A freed output's block goes back to the pool (the tensor's deleter) and the next output of
// the same byte size reuses it; the layer sizes of a generator recur every call, so after the first call
// almost nothing is mapped anew. The pool holds at most kMaxHeldBytes of idle blocks (the rest is freed) and
// keeps them for the life of the process. Thread-safe: deleters may run on any thread.
#pragma once

#include <ATen/ATen.h>

namespace editgan {

// at::empty(sizes, options) for a CPU tensor; blocks of at least 1 MiB come from the pool.
at::Tensor pooled_empty(at::IntArrayRef sizes, const at::TensorOptions& options);

}  // namespace editgan
