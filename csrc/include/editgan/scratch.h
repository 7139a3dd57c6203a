// Per-thread scratch buffers kept from call to call. A fresh multi-megabyte allocation is mapped and
// page-faulted in on every call (glibc maps large blocks and returns worker threads' freed memory to the OS):
// measured ~100K page faults, ~0.1 s, per 512 px synthesis before the kernels' work buffers came from here.
// Each (type, slot) is its own buffer; every user has its own slots (below), so buffers held at once never
// clash. A buffer only grows, and holds the largest size asked for on its thread. Contents are not initialized.
#pragma once

#include <cstdint>
#include <memory>

namespace editgan {

enum ScratchSlot : int { kWinogradProducts, kWinogradRows, kWinogradTiles, kFirRows, kFirLine };

template <typename T, ScratchSlot Slot>
T* scratch(int64_t n) {
  thread_local std::unique_ptr<T[]> buffer;
  thread_local int64_t capacity = 0;
  if (capacity < n) {
    buffer.reset();  // free the old one first
    buffer.reset(new T[n]);
    capacity = n;
  }
  return buffer.get();
}

}  // namespace editgan
