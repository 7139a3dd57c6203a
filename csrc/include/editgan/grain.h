// Grain size for at::parallel_for over items of `work_per_item` elements each: small problems stay on one
// thread, where waking the pool (and, on a loaded machine, waiting for a descheduled worker) costs more than
// the work itself.
#pragma once

#include <algorithm>
#include <cstdint>

namespace editgan {

inline int64_t grain_for(int64_t work_per_item) {
  constexpr int64_t kMinWorkPerTask = 32768;
  return std::max<int64_t>(1, kMinWorkPerTask / std::max<int64_t>(1, work_per_item));
}

}  // namespace editgan
