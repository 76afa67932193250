// Host emulation of the CUDA built-ins the kernels use, so the tests can run
// the kernels' real code on the CPU (tests/emulation/emulated_kernels.cpp,
// built only by the tests with -DATROUS_CUDA_EMULATION). One thread block
// runs at a time, each CUDA thread as a std::thread; __syncthreads is a
// std::barrier and __shared__ variables are function statics, shared by the
// block's threads.
//
// WMMA is emulated functionally: every thread of a warp holds the whole
// 16x16 fragment and computes the whole product (the real hardware spreads
// it over the warp's lanes in an unspecified layout, which the kernels never
// rely on: they only load, multiply, round to TF32 element-wise and store).
// __syncwarp is a block-wide barrier, valid because every warp of these
// kernels reaches the same __syncwarp calls. half and bfloat16 are c10's host
// types, with round-to-nearest-even conversions like __float2half_rn.
//
// cp.async (the kernels' cp_async_16 / cp_async_commit / cp_async_wait<N>) is
// emulated as late as the hardware may make it: each copy waits in its
// thread's queue and lands in shared memory only when a cp_async_wait retires
// its group. A kernel that reads a stage before waiting for it therefore reads
// stale data here, and a kernel that exits with copies never waited for fails
// its launch.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>

#include <atomic>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <deque>
#include <thread>
#include <type_traits>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))

using std::fma;

struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

using cudaStream_t = struct CUstream_st*;

struct alignas(16) float4 {
  float x, y, z, w;
};
struct alignas(16) double2 {
  double x, y;
};
struct alignas(16) uint4 {
  unsigned x, y, z, w;
};
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return uint4{x, y, z, w}; }

using __half = c10::Half;
using __nv_bfloat16 = c10::BFloat16;
inline float __half2float(__half v) { return static_cast<float>(v); }
inline float __bfloat162float(__nv_bfloat16 v) { return static_cast<float>(v); }
inline __half __float2half_rn(float v) { return __half(v); }
inline __nv_bfloat16 __float2bfloat16_rn(float v) { return __nv_bfloat16(v); }

namespace atrous {
namespace emulation {

inline thread_local dim3 thread_index, block_index;
inline dim3 block_dim, grid_dim;
inline std::barrier<>* block_barrier = nullptr;
inline std::atomic<int> or_slots[2];
inline thread_local unsigned or_calls = 0;

// The first misuse a thread of the running block reports (kernel threads
// cannot throw across std::thread); launch() turns it into an error.
inline std::atomic<const char*> kernel_error{nullptr};
inline void report_kernel_error(const char* what) {
  const char* none = nullptr;
  kernel_error.compare_exchange_strong(none, what);
}

// ---- cp.async: 16-byte global -> shared copies, deferred to their wait.
// One queued copy: 16 bytes to dst, the first src_bytes of them from src, the
// rest zeros (the src-size form of cp.async.cg.shared.global).
struct AsyncCopy {
  void* dst;
  const void* src;
  int src_bytes;
};
// Copies issued since the last commit, and the committed groups, oldest first.
inline thread_local std::vector<AsyncCopy> uncommitted_copies;
inline thread_local std::deque<std::vector<AsyncCopy>> committed_groups;

inline void reset_async_copies() {
  uncommitted_copies.clear();
  committed_groups.clear();
}
// Whether no copy is still queued (an empty group left in flight is harmless).
inline bool async_copies_drained() {
  if (!uncommitted_copies.empty()) return false;
  for (const std::vector<AsyncCopy>& group : committed_groups)
    if (!group.empty()) return false;
  return true;
}

inline void cp_async_16(void* dst, const void* src, int src_bytes) {
  // The hardware faults on a misaligned cp.async of 16 bytes.
  const auto misaligned = [](const void* ptr) {
    return reinterpret_cast<std::uintptr_t>(ptr) % 16 != 0;
  };
  if (misaligned(dst) || misaligned(src))
    report_kernel_error("issued a cp.async with a source or destination not 16-byte aligned");
  if (src_bytes < 0 || src_bytes > 16)
    report_kernel_error("issued a cp.async with src_bytes outside 0..16");
  uncommitted_copies.push_back(AsyncCopy{dst, src, src_bytes});
}

inline void cp_async_commit() {
  committed_groups.push_back(std::move(uncommitted_copies));
  uncommitted_copies.clear();
}

// cp.async.wait_group N: every committed group but the newest N is complete
// when it returns; this is where their bytes arrive. Uncommitted copies stay
// pending, as on the hardware.
template <int N>
void cp_async_wait() {
  static_assert(N >= 0, "cp.async.wait_group takes a count >= 0");
  while (committed_groups.size() > static_cast<std::size_t>(N)) {
    for (const AsyncCopy& copy : committed_groups.front()) {
      unsigned char bytes[16] = {};
      if (copy.src_bytes > 0)
        std::memcpy(bytes, copy.src, static_cast<std::size_t>(copy.src_bytes));
      std::memcpy(copy.dst, bytes, 16);
    }
    committed_groups.pop_front();
  }
}

// Runs kernel(args...) over the whole grid, one block at a time.
template <typename... Params, typename... Args>
void launch(void (*kernel)(Params...), dim3 grid, dim3 block, const Args&... args) {
  grid_dim = grid;
  block_dim = block;
  const unsigned threads = block.x * block.y * block.z;
  for (unsigned bz = 0; bz < grid.z; ++bz)
    for (unsigned by = 0; by < grid.y; ++by)
      for (unsigned bx = 0; bx < grid.x; ++bx) {
        std::barrier<> barrier(threads);
        block_barrier = &barrier;
        or_slots[0] = 0;
        or_slots[1] = 0;
        std::vector<std::thread> pool;
        pool.reserve(threads);
        for (unsigned t = 0; t < threads; ++t)
          pool.emplace_back([&, t] {
            thread_index = dim3(t % block.x, (t / block.x) % block.y, t / (block.x * block.y));
            block_index = dim3(bx, by, bz);
            or_calls = 0;
            reset_async_copies();
            kernel(args...);
            if (!async_copies_drained())
              report_kernel_error("exited with cp.async copies never waited for");
          });
        for (auto& th : pool) th.join();
        const char* error = kernel_error.exchange(nullptr);
        TORCH_CHECK(error == nullptr, "emulated CUDA kernel, block (", bx, ", ", by, ", ", bz,
                    "): a thread ", error);
      }
}

inline void syncthreads() { block_barrier->arrive_and_wait(); }

// Alternating slots: call i uses slot i % 2, which thread 0 clears after
// every thread has read it; call i + 1's slot was cleared before any thread
// could pass call i's barriers.
inline int syncthreads_or(int value) {
  const unsigned slot = or_calls++ % 2;
  if (value) or_slots[slot].fetch_or(1);
  block_barrier->arrive_and_wait();
  const int result = or_slots[slot].load();
  block_barrier->arrive_and_wait();
  if (thread_index.x == 0 && thread_index.y == 0 && thread_index.z == 0) or_slots[slot] = 0;
  return result;
}

}  // namespace emulation
}  // namespace atrous

namespace nvcuda {
namespace wmma {

struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
namespace precision {
struct tf32 {};
}  // namespace precision
enum layout_t { mem_row_major, mem_col_major };

// Every thread holds the whole tile: rows x cols values, row-major in x[].
template <typename Use, int M, int N, int K, typename T, typename Layout = void>
struct fragment {
  static constexpr int rows = std::is_same_v<Use, matrix_b> ? K : M;
  static constexpr int cols = std::is_same_v<Use, matrix_a> ? K : N;
  static constexpr int num_elements = rows * cols;
  float x[num_elements];
};

template <typename Use, int M, int N, int K, typename T, typename Layout>
void fill_fragment(fragment<Use, M, N, K, T, Layout>& f, float value) {
  for (float& v : f.x) v = value;
}

// Element (r, c) of a row_major operand is at p[r * ldm + c], of a
// col_major one at p[c * ldm + r].
template <typename Use, int M, int N, int K, typename T, typename Layout, typename E>
void load_matrix_sync(fragment<Use, M, N, K, T, Layout>& f, const E* p, unsigned ldm) {
  using F = fragment<Use, M, N, K, T, Layout>;
  for (int r = 0; r < F::rows; ++r)
    for (int c = 0; c < F::cols; ++c)
      f.x[r * F::cols + c] = static_cast<float>(
          std::is_same_v<Layout, col_major> ? p[c * ldm + r] : p[r * ldm + c]);
}

template <int M, int N, int K, typename TA, typename LA, typename TB, typename LB>
void mma_sync(fragment<accumulator, M, N, K, float>& d, const fragment<matrix_a, M, N, K, TA, LA>& a,
              const fragment<matrix_b, M, N, K, TB, LB>& b,
              const fragment<accumulator, M, N, K, float>& c) {
  float out[M * N];
  for (int i = 0; i < M; ++i)
    for (int j = 0; j < N; ++j) {
      float sum = c.x[i * N + j];
      for (int k = 0; k < K; ++k) sum += a.x[i * K + k] * b.x[k * N + j];
      out[i * N + j] = sum;
    }
  std::memcpy(d.x, out, sizeof(out));
}

template <int M, int N, int K>
void store_matrix_sync(float* p, const fragment<accumulator, M, N, K, float>& f, unsigned ldm,
                       layout_t layout) {
  for (int r = 0; r < M; ++r)
    for (int c = 0; c < N; ++c)
      (layout == mem_row_major ? p[r * ldm + c] : p[c * ldm + r]) = f.x[r * N + c];
}

// cvt.rna.tf32.f32: keep 10 mantissa bits, rounding to nearest, ties away from zero.
inline float __float_to_tf32(float v) {
  if (!std::isfinite(v)) return v;
  uint32_t bits;
  std::memcpy(&bits, &v, 4);
  bits = (bits + 0x1000u) & 0xffffe000u;
  std::memcpy(&v, &bits, 4);
  return v;
}

}  // namespace wmma
}  // namespace nvcuda

#define threadIdx (::atrous::emulation::thread_index)
#define blockIdx (::atrous::emulation::block_index)
#define blockDim (::atrous::emulation::block_dim)
#define gridDim (::atrous::emulation::grid_dim)
#define __syncthreads() ::atrous::emulation::syncthreads()
#define __syncthreads_or(v) ::atrous::emulation::syncthreads_or(v)
#define __syncwarp() ::atrous::emulation::syncthreads()
