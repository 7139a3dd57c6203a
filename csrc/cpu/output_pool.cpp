// The output pool (output_pool.h).
#include "output_pool.h"

#include <cstdlib>
#include <mutex>
#include <unordered_map>

namespace editgan {
namespace {

constexpr size_t kMinBytes = size_t(1) << 20;
constexpr size_t kMaxHeldBytes = size_t(768) << 20;  // idle blocks; a 512 px synthesis cycles through ~400 MB
constexpr size_t kAlignment = 64;

struct Pool {
  std::mutex mutex;
  std::unordered_multimap<size_t, void*> idle;  // block size in bytes -> block
  size_t held = 0;
};

// Never destroyed: tensors may still be freed (and call release) while the process exits.
Pool& pool() {
  static Pool* p = new Pool;
  return *p;
}

void release(void* block, size_t bytes) {
  Pool& p = pool();
  {
    std::lock_guard<std::mutex> lock(p.mutex);
    if (p.held + bytes <= kMaxHeldBytes) {
      p.idle.emplace(bytes, block);
      p.held += bytes;
      return;
    }
  }
  std::free(block);
}

void* acquire(size_t bytes) {
  Pool& p = pool();
  {
    std::lock_guard<std::mutex> lock(p.mutex);
    auto it = p.idle.find(bytes);
    if (it != p.idle.end()) {
      void* block = it->second;
      p.idle.erase(it);
      p.held -= bytes;
      return block;
    }
  }
  void* block = std::aligned_alloc(kAlignment, bytes);  // bytes: a multiple of kAlignment (pooled_empty)
  TORCH_CHECK(block != nullptr, "editgan_fast: out of memory allocating ", bytes, " bytes");
  return block;
}

}  // namespace

at::Tensor pooled_empty(at::IntArrayRef sizes, const at::TensorOptions& options) {
  TORCH_CHECK(options.device().is_cpu(), "pooled_empty: CPU tensors only");
  const size_t bytes = static_cast<size_t>(c10::multiply_integers(sizes)) * options.dtype().itemsize();
  if (bytes < kMinBytes) return at::empty(sizes, options);
  const size_t rounded = (bytes + kAlignment - 1) / kAlignment * kAlignment;
  void* block = acquire(rounded);
  return at::from_blob(block, sizes, [rounded](void* b) { release(b, rounded); }, options);
}

}  // namespace editgan
