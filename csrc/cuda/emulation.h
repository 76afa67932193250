// Host emulation of the CUDA built-ins used by the SIMT and direct kernels,
// so the tests can run those kernels' real code on the CPU
// (tests/emulation/emulated_kernels.cpp, built only by the tests with
// -DATROUS_CUDA_EMULATION). One thread block runs at a time, each CUDA thread
// as a std::thread; __syncthreads is a std::barrier and __shared__ variables
// are function statics, shared by the block's threads. The tensor-core
// kernels are not emulated.
#pragma once

#include <atomic>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <thread>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static
#define __align__(n) alignas(n)

using std::fma;

struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

using cudaStream_t = struct CUstream_st*;

namespace atrous {
namespace emulation {

inline thread_local dim3 thread_index, block_index;
inline dim3 block_dim, grid_dim;
inline std::barrier<>* block_barrier = nullptr;
inline std::atomic<int> or_slots[2];
inline thread_local unsigned or_calls = 0;

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
            kernel(args...);
          });
        for (auto& th : pool) th.join();
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

#define threadIdx (::atrous::emulation::thread_index)
#define blockIdx (::atrous::emulation::block_index)
#define blockDim (::atrous::emulation::block_dim)
#define gridDim (::atrous::emulation::grid_dim)
#define __syncthreads() ::atrous::emulation::syncthreads()
#define __syncthreads_or(v) ::atrous::emulation::syncthreads_or(v)
