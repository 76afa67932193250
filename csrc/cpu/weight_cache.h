// Packed weights kept between calls (issue 14 §2).
//
// Every CPU conv call used to repack its weight into GEMM panels (1.7 ms for
// an ASPP branch's 18.9 MB weight on session 9's build machine, 2-6 ms on
// session 7's), and a model calls the same weights every time. So a packing is
// kept, in a process-wide cache bounded in bytes, and served again while the
// weight has not changed.
//
// What "not changed" means, checked on every call:
//   * the same tensor: its TensorImpl and its StorageImpl are still alive
//     (weak references) and are the ones packed, at the same data pointer,
//     sizes, strides and dtype; the same packing (format and groups);
//   * autograd's version counter is the one packed: every in-place op through
//     torch bumps it (an optimizer step, copy_ in load_state_dict, x[i] = v);
//   * and a 64-bit fingerprint of the weight's bytes is the one packed. Writes
//     that bypass the version counter (p.data.mul_(...), which has a counter of
//     its own, a numpy view, a C++ data pointer) change the bytes, so they are
//     seen too. Reading the weight costs less than packing it (which reads
//     it and writes the panels), see bench/NOTES.md.
// Not cached (packed afresh, as before): inference tensors (they have no
// version counter), weights that are not dense in memory, packings larger than
// the limit, and everything while the limit is 0.
//
// The limit: ATROUS_CPU_WEIGHT_CACHE_MB (default 256), or
// set_weight_cache_limit(bytes) at run time. Least recently used packings go
// first; packings whose weight died go at the next insertion.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/FunctionRef.h>

#include <cstdint>

namespace atrous {
namespace cpu {

// How a weight is packed (one entry per weight and packing).
enum class WeightPacking : int32_t {
  kPanels = 0,                // forward GEMM panels (acc dtype)
  kPanelsTransposed = 1,      // grad_input GEMM panels
  kBf16Pairs = 2,             // forward bfloat16 dot-product panels
  kBf16PairsTransposed = 3,   // grad_input bfloat16 dot-product panels
  kDepthwise = 4,             // [tap][channel] (acc dtype)
};

// The packing of `weight` (as `packing` with `groups` and packed element type
// `packed_dtype`): the cached one if the weight has not changed since, or
// pack() (whose result is then cached when it may be). pack() must depend on
// nothing but the weight and these keys.
at::Tensor cached_weight_packing(const at::Tensor& weight, WeightPacking packing, int64_t groups,
                                 c10::ScalarType packed_dtype, c10::function_ref<at::Tensor()> pack);

// Bytes and packings held, the limit, hits and misses since the start.
struct WeightCacheStats {
  int64_t bytes, entries, limit, hits, misses;
};
WeightCacheStats weight_cache_stats();
// Sets the limit (bytes >= 0; 0 turns the cache off) and frees what is held above it.
void set_weight_cache_limit(int64_t bytes);
// Frees every packing the cache holds, and the workspace pool's free buffers
// (where the larger packings return when they are dropped).
void clear_weight_cache();

}  // namespace cpu
}  // namespace atrous
