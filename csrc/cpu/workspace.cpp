#include "workspace.h"

#include <ATen/ops/from_blob.h>
#include <ATen/ops/empty.h>
#include <c10/core/impl/alloc_cpu.h>
#include <c10/util/Exception.h>
#include <c10/util/strides.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <vector>

#include "../atrous_conv.h"

namespace atrous {
namespace cpu {
namespace {

constexpr int64_t kDefaultLimitMb = 256;

// The free buffers, in the order they were handed back (oldest first). A
// request takes the smallest one that holds it, if that one is at most twice
// the request (a larger one would sit mostly idle); a buffer handed back
// evicts the oldest ones when the pool would exceed its limit. The pool holds
// at most limit / kMinCachedWorkspaceBytes buffers, so a linear scan is fine.
struct Pool {
  struct Buffer {
    int64_t capacity;
    void* ptr;
  };
  std::mutex mutex;
  std::vector<Buffer> free;
  int64_t held = 0;
  int64_t limit = limit_from_environment("ATROUS_CPU_WORKSPACE_CACHE_MB", kDefaultLimitMb);

  void* take(int64_t bytes, int64_t& capacity) {
    {
      std::lock_guard<std::mutex> lock(mutex);
      auto best = free.end();
      for (auto it = free.begin(); it != free.end(); ++it)
        if (it->capacity >= bytes && it->capacity <= 2 * bytes &&
            (best == free.end() || it->capacity < best->capacity))
          best = it;
      if (best != free.end()) {
        capacity = best->capacity;
        void* ptr = best->ptr;
        held -= capacity;
        free.erase(best);
        return ptr;
      }
    }
    capacity = bytes;
    return c10::alloc_cpu(static_cast<size_t>(bytes));
  }

  void give_back(void* ptr, int64_t capacity) {
    std::vector<void*> evicted;
    {
      std::lock_guard<std::mutex> lock(mutex);
      if (capacity <= limit) {
        evicted = evict_oldest(limit - capacity);
        free.push_back({capacity, ptr});
        held += capacity;
        ptr = nullptr;
      }
    }
    for (void* p : evicted) c10::free_cpu(p);
    if (ptr != nullptr) c10::free_cpu(ptr);
  }

  // Frees held buffers, oldest first, until at most `keep` bytes are held.
  void trim(int64_t keep) {
    std::vector<void*> evicted;
    {
      std::lock_guard<std::mutex> lock(mutex);
      evicted = evict_oldest(keep);
    }
    for (void* p : evicted) c10::free_cpu(p);
  }

 private:
  // Under the lock: removes the oldest buffers until at most `keep` bytes are
  // held and returns them, to be freed outside the lock.
  std::vector<void*> evict_oldest(int64_t keep) {
    size_t count = 0;
    std::vector<void*> evicted;
    while (held > keep && count < free.size()) {
      held -= free[count].capacity;
      evicted.push_back(free[count].ptr);
      ++count;
    }
    free.erase(free.begin(), free.begin() + static_cast<std::ptrdiff_t>(count));
    return evicted;
  }
};

// Never destroyed: tensors that die during static destruction still hand
// their buffers back to it.
Pool& pool() {
  static Pool* instance = new Pool;
  return *instance;
}

}  // namespace

int64_t limit_from_environment(const char* name, int64_t default_mb) {
  const char* env = std::getenv(name);
  if (env == nullptr || env[0] == '\0') return default_mb << 20;
  char* end = nullptr;
  const long long mb = std::strtoll(env, &end, 10);
  TORCH_CHECK(end != env && *end == '\0' && mb >= 0, "atrous: expected ", name,
              " to be a whole number of megabytes >= 0, got '", env, "'");
  return static_cast<int64_t>(mb) << 20;
}

at::Tensor workspace_empty(c10::IntArrayRef sizes, c10::ScalarType dtype, c10::MemoryFormat format) {
  const auto options = at::TensorOptions().dtype(dtype).device(at::kCPU);
  int64_t numel = 1;
  for (int64_t s : sizes) numel *= s;
  const int64_t bytes = numel * static_cast<int64_t>(c10::elementSize(dtype));
  at::Tensor t;
  if (bytes < kMinCachedWorkspaceBytes || workspace_cache_limit() == 0) {
    t = at::empty(sizes, options.memory_format(format));
  } else {
    TORCH_INTERNAL_ASSERT(format == c10::MemoryFormat::Contiguous ||
                          (format == c10::MemoryFormat::ChannelsLast && sizes.size() == 4));
    const c10::DimVector strides = format == c10::MemoryFormat::ChannelsLast
                                       ? c10::DimVector(c10::get_channels_last_strides_2d(sizes))
                                       : c10::contiguous_strides(sizes);
    int64_t capacity = 0;
    void* ptr = pool().take(bytes, capacity);
    t = at::from_blob(ptr, sizes, strides,
                      [capacity](void* p) { pool().give_back(p, capacity); }, options);
  }
  if (poison_outputs_requested() && bytes > 0) std::memset(t.data_ptr(), 0xFF, static_cast<size_t>(bytes));
  return t;
}

int64_t workspace_cache_bytes() {
  std::lock_guard<std::mutex> lock(pool().mutex);
  return pool().held;
}

int64_t workspace_cache_limit() {
  std::lock_guard<std::mutex> lock(pool().mutex);
  return pool().limit;
}

void set_workspace_cache_limit(int64_t bytes) {
  TORCH_CHECK(bytes >= 0, "set_cpu_workspace_cache_limit: expected bytes >= 0, got ", bytes);
  {
    std::lock_guard<std::mutex> lock(pool().mutex);
    pool().limit = bytes;
  }
  pool().trim(bytes);
}

void empty_workspace_cache() { pool().trim(0); }

}  // namespace cpu
}  // namespace atrous
