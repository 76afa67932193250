#include "weight_cache.h"

#include <ATen/Parallel.h>
#include <c10/core/TensorImpl.h>
#include <c10/util/Exception.h>
#include <c10/util/intrusive_ptr.h>

#include <cstring>
#include <list>
#include <mutex>
#include <vector>

#include "workspace.h"

namespace atrous {
namespace cpu {
namespace {

constexpr int64_t kDefaultLimitMb = 256;

// A 64-bit fingerprint of n bytes. Each chunk of kFingerprintChunk bytes is
// hashed on its own (in parallel: reading a weight that has left the caches
// is bound by memory bandwidth, about 13 GB/s for one core here) in 8
// independent lanes, so the multiplies overlap: each word is xored into its
// lane, multiplied by an odd constant (a bijection that carries low bits up)
// and rotated (carrying high bits down), so a change of any bit of any word
// changes its lane. Lanes, chunks and the length are folded the same way, in
// a fixed order: the result does not depend on the thread count. It only has
// to tell a weight from its own earlier contents, not resist an adversary.
constexpr int64_t kFingerprintChunk = int64_t(256) << 10;

inline uint64_t mix(uint64_t h, uint64_t w) {
  h = (h ^ w) * 0x9E3779B97F4A7C15ull;
  return (h << 29) | (h >> 35);
}

uint64_t fingerprint_chunk(const char* bytes, int64_t n) {
  constexpr int kLanes = 8;
  uint64_t lane[kLanes];
  for (int i = 0; i < kLanes; ++i) lane[i] = static_cast<uint64_t>(i + 1) * 0xD6E8FEB86659FD93ull;
  const int64_t words = n / 8, full = words - words % kLanes;
  for (int64_t w = 0; w < full; w += kLanes) {
    uint64_t v[kLanes];
    std::memcpy(v, bytes + w * 8, sizeof(v));
    for (int i = 0; i < kLanes; ++i) lane[i] = mix(lane[i], v[i]);
  }
  uint64_t h = static_cast<uint64_t>(n);
  for (int i = 0; i < kLanes; ++i) h = mix(h, lane[i]);
  for (int64_t b = full * 8; b < n; b += 8) {  // the last words and bytes, zero-padded
    uint64_t v = 0;
    std::memcpy(&v, bytes + b, static_cast<size_t>(std::min<int64_t>(8, n - b)));
    h = mix(h, v);
  }
  return h;
}

uint64_t fingerprint(const void* data, int64_t n) {
  const char* bytes = static_cast<const char*>(data);
  const int64_t chunks = (n + kFingerprintChunk - 1) / kFingerprintChunk;
  std::vector<uint64_t> prints(static_cast<size_t>(chunks));
  at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c)
      prints[c] = fingerprint_chunk(bytes + c * kFingerprintChunk, std::min(kFingerprintChunk, n - c * kFingerprintChunk));
  });
  uint64_t h = static_cast<uint64_t>(n);
  for (uint64_t p : prints) h = mix(h, p);
  return h;
}

struct Entry {
  // The weight, as it was packed.
  c10::weak_intrusive_ptr<c10::TensorImpl, c10::UndefinedTensorImpl> impl;
  c10::weak_intrusive_ptr<c10::StorageImpl> storage;
  const c10::TensorImpl* impl_id;
  const void* data;
  std::vector<int64_t> sizes, strides;
  c10::ScalarType dtype;
  uint32_t version;
  uint64_t fingerprint;
  // The packing.
  WeightPacking packing;
  int64_t groups;
  c10::ScalarType packed_dtype;
  at::Tensor packed;
  int64_t bytes;

  bool expired() const { return impl.expired() || storage.expired(); }
};

struct Cache {
  std::mutex mutex;
  std::list<Entry> entries;  // most recently used first
  int64_t held = 0, limit = limit_from_environment("ATROUS_CPU_WEIGHT_CACHE_MB", kDefaultLimitMb);
  int64_t hits = 0, misses = 0;

  // Under the lock: drops entries whose weight died, then the least recently
  // used ones until at most `keep` bytes are held. The dropped packings are
  // returned, to be freed outside the lock.
  std::vector<at::Tensor> evict(int64_t keep) {
    std::vector<at::Tensor> dropped;
    for (auto it = entries.begin(); it != entries.end();) {
      if (it->expired()) {
        held -= it->bytes;
        dropped.push_back(std::move(it->packed));
        it = entries.erase(it);
      } else {
        ++it;
      }
    }
    while (held > keep && !entries.empty()) {
      held -= entries.back().bytes;
      dropped.push_back(std::move(entries.back().packed));
      entries.pop_back();
    }
    return dropped;
  }
};

// Never destroyed: packings may be asked for during static destruction.
Cache& cache() {
  static Cache* instance = new Cache;
  return *instance;
}

bool same_tensor(const Entry& e, const at::Tensor& w) {
  return e.impl_id == w.unsafeGetTensorImpl() && e.data == w.data_ptr() && e.dtype == w.scalar_type() &&
         c10::IntArrayRef(e.sizes) == w.sizes() && c10::IntArrayRef(e.strides) == w.strides() && !e.expired() &&
         e.storage._unsafe_get_target() == w.storage().unsafeGetStorageImpl();
}

}  // namespace

at::Tensor cached_weight_packing(const at::Tensor& weight, WeightPacking packing, int64_t groups,
                                 c10::ScalarType packed_dtype, c10::function_ref<at::Tensor()> pack) {
  Cache& c = cache();
  {
    std::lock_guard<std::mutex> lock(c.mutex);
    if (c.limit == 0) return pack();
  }
  if (weight.is_inference() || !weight.has_storage() || !weight.is_non_overlapping_and_dense() ||
      weight.numel() == 0)
    return pack();
  const uint32_t version = weight.unsafeGetTensorImpl()->version_counter().current_version();
  const uint64_t print = fingerprint(weight.data_ptr(), weight.numel() * weight.element_size());
  {
    std::lock_guard<std::mutex> lock(c.mutex);
    for (auto it = c.entries.begin(); it != c.entries.end(); ++it) {
      if (it->packing != packing || it->groups != groups || it->packed_dtype != packed_dtype ||
          !same_tensor(*it, weight))
        continue;
      if (it->version == version && it->fingerprint == print) {
        ++c.hits;
        c.entries.splice(c.entries.begin(), c.entries, it);
        return it->packed;
      }
      // The weight changed: this packing is stale.
      c.held -= it->bytes;
      c.entries.erase(it);
      break;
    }
    ++c.misses;
  }
  at::Tensor packed = pack();
  const int64_t bytes = static_cast<int64_t>(packed.nbytes());
  std::vector<at::Tensor> dropped;
  {
    std::lock_guard<std::mutex> lock(c.mutex);
    if (bytes <= c.limit) {
      dropped = c.evict(c.limit - bytes);
      c.entries.push_front(Entry{c10::weak_intrusive_ptr<c10::TensorImpl, c10::UndefinedTensorImpl>(
                                     weight.getIntrusivePtr()),
                                 weight.storage().getWeakStorageImpl(),
                                 weight.unsafeGetTensorImpl(),
                                 weight.data_ptr(),
                                 weight.sizes().vec(),
                                 weight.strides().vec(),
                                 weight.scalar_type(),
                                 version,
                                 print,
                                 packing,
                                 groups,
                                 packed_dtype,
                                 packed,
                                 bytes});
      c.held += bytes;
    }
  }
  return packed;  // `dropped` is freed here, outside the lock
}

WeightCacheStats weight_cache_stats() {
  Cache& c = cache();
  std::lock_guard<std::mutex> lock(c.mutex);
  return {c.held, static_cast<int64_t>(c.entries.size()), c.limit, c.hits, c.misses};
}

void set_weight_cache_limit(int64_t bytes) {
  TORCH_CHECK(bytes >= 0, "set_cpu_weight_cache_limit: expected bytes >= 0, got ", bytes);
  Cache& c = cache();
  std::vector<at::Tensor> dropped;
  std::lock_guard<std::mutex> lock(c.mutex);
  c.limit = bytes;
  dropped = c.evict(bytes);
}

void clear_weight_cache() {
  Cache& c = cache();
  {
    std::vector<at::Tensor> dropped;
    std::lock_guard<std::mutex> lock(c.mutex);
    dropped = c.evict(0);
  }
  // Packings of 1 MiB and more came from the workspace pool and went back to
  // it just now: hand those to the system too, so that clearing frees memory.
  empty_workspace_cache();
}

}  // namespace cpu
}  // namespace atrous
