// Workspaces of the CPU kernels (the NHWC copies of NCHW operands, the bf16
// pair rows, grad_weight's partial sums), kept for reuse between calls.
//
// glibc serves every allocation above its mmap threshold (at most 32 MiB)
// with fresh pages, which the kernel zeroes on first touch: 0.3-0.5 ms per MB
// on the build machine, so ASPP OS8's 35 MB input copy cost 17 ms of faults
// on every call (bench/NOTES.md). A workspace of at least
// kMinCachedWorkspaceBytes is therefore taken from a small process-wide pool
// and handed back to it when its tensor dies, as long as the pool then holds
// no more than its limit (ATROUS_CPU_WORKSPACE_CACHE_MB, default 256 MB; 0
// turns the pool off). Outputs and gradients are never pooled: they belong to
// the caller.
//
// With ATROUS_POISON=1 (the test suite) every workspace is filled with NaN
// bytes when it is handed out, so a kernel that reads workspace it never
// wrote fails its test whether the buffer is fresh or reused.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/MemoryFormat.h>
#include <c10/core/ScalarType.h>
#include <c10/util/ArrayRef.h>

#include <cstdint>

namespace atrous {
namespace cpu {

constexpr int64_t kMinCachedWorkspaceBytes = int64_t(1) << 20;

// An uninitialized CPU tensor of the given sizes, dtype and memory format
// (Contiguous or ChannelsLast), from the pool when it is large enough.
at::Tensor workspace_empty(c10::IntArrayRef sizes, c10::ScalarType dtype,
                           c10::MemoryFormat format = c10::MemoryFormat::Contiguous);

// A cache limit in bytes from the environment variable `name` (whole
// megabytes >= 0), or default_mb when it is unset or empty; a malformed value
// is an error that names the variable.
int64_t limit_from_environment(const char* name, int64_t default_mb);

// Bytes the pool holds for reuse now, and its limit.
int64_t workspace_cache_bytes();
int64_t workspace_cache_limit();
// Sets the limit (bytes >= 0; 0 turns the pool off) and frees what is held
// above it. The limit starts from ATROUS_CPU_WORKSPACE_CACHE_MB.
void set_workspace_cache_limit(int64_t bytes);
// Frees every buffer the pool holds (buffers in use return to it later).
void empty_workspace_cache();

}  // namespace cpu
}  // namespace atrous
