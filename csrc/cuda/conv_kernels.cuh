// CUDA kernels of the atrous ops, templated on the element type. Each dtype
// is instantiated in its own conv_<dtype>.cu so ninja builds them in parallel.
//
//   implicit GEMM (forward, grad_input)  SIMT FMA for float/double,
//                                        tensor cores (WMMA) for half/bfloat16
//   grad_weight                          same two flavours, split over fixed
//                                        pixel ranges + an ordered reduction
//   depthwise forward / grad_input / grad_weight, grad_bias: direct kernels
//
// Every index goes through atrous_index.h, the header the CPU kernels and
// the CPU tests use. Offsets are 64-bit throughout. No floating-point
// atomics: every sum runs in a fixed order, so results are bitwise
// reproducible run after run.
//
// With ATROUS_CUDA_EMULATION defined (tests only, see emulation.h) all of it
// compiles as host code and runs on the CPU.
#pragma once

#if defined(ATROUS_CUDA_EMULATION)
#include "emulation.h"
#else
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <mma.h>

#include <c10/cuda/CUDAException.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#endif

#include <c10/util/Exception.h>

#include <cstdint>

#include "../atrous_index.h"
#include "launch_args.h"

namespace atrous {
namespace cuda {
namespace {

// ------------------------------------------------------------ element types --

// c10 types on the host side map to CUDA's own types in the kernels (the same
// bits), and every element type maps to the type it accumulates in.
template <typename T>
struct DeviceType {
  using type = T;
};
#if !defined(ATROUS_CUDA_EMULATION)  // the emulation's __half is c10::Half itself
template <>
struct DeviceType<c10::Half> {
  using type = __half;
};
template <>
struct DeviceType<c10::BFloat16> {
  using type = __nv_bfloat16;
};
#endif

template <typename T>
struct AccType {
  using type = float;
};
template <>
struct AccType<double> {
  using type = double;
};

__device__ __forceinline__ float to_acc(float v) { return v; }
__device__ __forceinline__ double to_acc(double v) { return v; }
__device__ __forceinline__ float to_acc(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_acc(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__device__ __forceinline__ T from_acc(float v);
template <>
__device__ __forceinline__ float from_acc<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half from_acc<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}
template <typename T>
__device__ __forceinline__ T from_acc(double v) {
  return v;
}

template <typename T>
__device__ __forceinline__ T zero_value() {
  return from_acc<T>(typename AccType<T>::type(0));
}

inline int64_t ceil_div_host(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Every launch goes through this: on the current stream, checked right away.
#if defined(ATROUS_CUDA_EMULATION)
#define ATROUS_LAUNCH(kernel, grid, block, stream, ...) \
  ::atrous::emulation::launch(kernel, grid, block, __VA_ARGS__)
#else
#define ATROUS_LAUNCH(kernel, grid, block, stream, ...) \
  do {                                                  \
    kernel<<<grid, block, 0, stream>>>(__VA_ARGS__);    \
    C10_CUDA_KERNEL_LAUNCH_CHECK();                     \
  } while (0)
#endif

inline dim3 grid3(int64_t x, int64_t y, int64_t z) {
  return dim3(static_cast<unsigned>(x), static_cast<unsigned>(y), static_cast<unsigned>(z));
}

inline void check_grid(int64_t x, int64_t y, int64_t z, const char* what) {
  TORCH_CHECK(x > 0 && x < (int64_t(1) << 31) && y > 0 && y <= 65535 && z > 0 && z <= 65535,
              "atrous_conv (CUDA): the ", what, " grid (", x, ", ", y, ", ", z,
              ") exceeds CUDA's limits (2^31-1, 65535, 65535); expected fewer groups or a "
              "smaller problem");
}

// ------------------------------------------------------ implicit GEMM rows --

// The A row of GEMM row m for one tap: the element offset of the NHWC pixel
// (channel 0 of the group) that row m reads through tap (kh, kw), or -1 when
// that pixel is padding.
//   forward:    m = (n, oh, ow) reads input (ih, iw) = eq. (1) of atrous_index.h
//   grad_input: m = (n, ih, iw) reads grad_output (oh, ow) = inverse of eq. (1)
template <bool kGradInput>
__device__ __forceinline__ int64_t gather_row_offset(const ConvParams& p, int64_t n, int64_t y,
                                                     int64_t x, int64_t kh, int64_t kw,
                                                     int64_t group) {
  if (kGradInput) {
    const int64_t oh = output_index_for_input(y, p.out_height, kh, p.stride_h, p.pad_top,
                                              p.dilation_h);
    const int64_t ow = output_index_for_input(x, p.out_width, kw, p.stride_w, p.pad_left,
                                              p.dilation_w);
    if (oh < 0 || ow < 0) return -1;
    return ((n * p.out_height + oh) * p.out_width + ow) * p.out_channels +
           group * p.out_channels_per_group();
  }
  const int64_t ih = input_index(y, kh, p.stride_h, p.pad_top, p.dilation_h);
  const int64_t iw = input_index(x, kw, p.stride_w, p.pad_left, p.dilation_w);
  if (ih < 0 || ih >= p.in_height || iw < 0 || iw >= p.in_width) return -1;
  return ((n * p.in_height + ih) * p.in_width + iw) * p.in_channels +
         group * p.in_channels_per_group();
}

template <bool kGradInput>
struct GemmShape {
  int64_t M, cols, depth;
  __device__ __host__ explicit GemmShape(const ConvParams& p) {
    M = kGradInput ? p.batch * p.in_height * p.in_width : p.batch * p.out_height * p.out_width;
    cols = kGradInput ? p.in_channels_per_group() : p.out_channels_per_group();
    depth = kGradInput ? p.out_channels_per_group() : p.in_channels_per_group();
  }
};

// Writes one GEMM result element to the (strided) output or grad_input.
template <bool kGradInput, typename T, typename acc_t>
__device__ __forceinline__ void store_result(const ImplicitGemmArgs& args,
                                             const GemmShape<kGradInput>& shape, const Pixel& px,
                                             int64_t col, int64_t group, acc_t value) {
  const int64_t channel = group * shape.cols + col;
  if (!kGradInput && args.bias != nullptr)
    value += to_acc(static_cast<const T*>(args.bias)[channel]);
  const Strides4& s = args.out_strides;
  static_cast<T*>(args.out)[px.n * s.n + channel * s.c + px.y * s.h + px.x * s.w] =
      from_acc<T>(value);
}

// The pixels of a tile's rows, in the tap-class order of args.order
// (pixel_at in atrous_index.h); n = -1 marks rows past the end.
template <int BM>
__device__ __forceinline__ void load_tile_pixels(const ImplicitGemmArgs& args, int64_t M,
                                                 int64_t m0, Pixel* row_pixel) {
  for (int r = threadIdx.x; r < BM; r += blockDim.x) {
    const int64_t m = m0 + r;
    row_pixel[r] = m < M ? pixel_at(args.order, m) : Pixel{-1, 0, 0};
  }
  __syncthreads();
}

// Fills row_offset[r] with the A-row offset each tile row reads through tap
// (kh, kw) (-1 for padding) and tells the whole block whether any row reads
// inside the image; the block skips the tap when none does. A barrier.
template <bool kGradInput, int BM>
__device__ __forceinline__ bool load_tap_row_offsets(const ConvParams& p, const Pixel* row_pixel,
                                                     int64_t kh, int64_t kw, int64_t group,
                                                     int64_t* row_offset) {
  int any_valid = 0;
  for (int r = threadIdx.x; r < BM; r += blockDim.x) {
    const Pixel px = row_pixel[r];
    const int64_t off =
        px.n >= 0 ? gather_row_offset<kGradInput>(p, px.n, px.y, px.x, kh, kw, group) : -1;
    row_offset[r] = off;
    any_valid |= off >= 0;
  }
  return __syncthreads_or(any_valid) != 0;
}

// ---------------------------------------------- implicit GEMM, SIMT (fp32/64) --

// Thread (ty, tx) of the 16 x 16 grid owns rows simt_index(ty, i) and columns
// simt_index(tx, j): groups of 4 consecutive values, 64 apart, so each group
// is one 16-byte (float) or two 16-byte (double) shared-memory loads, and a
// warp's 16 tx read 256 contiguous bytes of a B row.
__device__ __forceinline__ int simt_index(int t, int i) { return (i / 4) * 64 + t * 4 + (i % 4); }

// Four consecutive shared-memory values, 16-byte aligned.
__device__ __forceinline__ void load4(const float* p, float* out) {
  const float4 v = *reinterpret_cast<const float4*>(p);
  out[0] = v.x;
  out[1] = v.y;
  out[2] = v.z;
  out[3] = v.w;
}
__device__ __forceinline__ void load4(const double* p, double* out) {
  const double2 lo = *reinterpret_cast<const double2*>(p);
  const double2 hi = *reinterpret_cast<const double2*>(p + 2);
  out[0] = lo.x;
  out[1] = lo.y;
  out[2] = hi.x;
  out[3] = hi.y;
}

// A BM x BN tile of C per block of 256 threads in a 16 x 16 grid (two blocks
// per SM: at most 128 registers, which ptxas otherwise undercuts with spills);
// thread (ty, tx) owns rows simt_index(ty, i) and columns simt_index(tx, j),
// so shared-memory reads are 16-byte vectors, conflict-free for B and
// broadcasts for A. The K loop runs over
// taps, and a tap none of whose BM rows reads inside the image is skipped by
// the whole block (the padding skip: rows are in tap-class order, so tiles
// rarely straddle classes); within a tap, over BK channels at a time.
template <typename T, int BM, int BN, int BK, bool kGradInput>
__global__ void __launch_bounds__(256, 2)
    implicit_gemm_simt_kernel(const ImplicitGemmArgs args) {
  using acc_t = typename AccType<T>::type;
  constexpr int TM = BM / 16, TN = BN / 16;
  const ConvParams& p = args.conv;
  const GemmShape<kGradInput> shape(p);
  const T* a = static_cast<const T*>(args.a);
  const T* b = static_cast<const T*>(args.b);
  // Block x enumerates (group, M tile); y the N tile.
  const int64_t tiles_m = (shape.M + BM - 1) / BM;
  const int64_t group = blockIdx.x / tiles_m;
  const int64_t m0 = (blockIdx.x % tiles_m) * BM, n0 = int64_t(blockIdx.y) * BN;
  const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;

  static_assert(BM % 64 == 0 && BN % 64 == 0, "thread tiles are groups of 4 rows, 64 apart");
  __shared__ __align__(16) acc_t As[BK][BM + 4];
  __shared__ __align__(16) acc_t Bs[BK][BN + 4];
  __shared__ int64_t row_offset[BM];
  __shared__ Pixel row_pixel[BM];
  load_tile_pixels<BM>(args, shape.M, m0, row_pixel);

  acc_t acc[TM][TN];
#pragma unroll
  for (int i = 0; i < TM; ++i)
#pragma unroll
    for (int j = 0; j < TN; ++j) acc[i][j] = acc_t(0);

  for (int64_t kh = 0; kh < p.kernel_height; ++kh) {
    for (int64_t kw = 0; kw < p.kernel_width; ++kw) {
      const int64_t tap = kh * p.kernel_width + kw;
      if (!load_tap_row_offsets<kGradInput, BM>(p, row_pixel, kh, kw, group, row_offset))
        continue;  // the whole tile reads padding
      const T* b_tap = b + (group * p.taps() + tap) * shape.depth * args.b_cols;
      for (int64_t c0 = 0; c0 < shape.depth; c0 += BK) {
        for (int e = tid; e < BM * BK; e += blockDim.x) {
          const int r = e / BK, kk = e % BK;
          const int64_t off = row_offset[r], c = c0 + kk;
          As[kk][r] = (off >= 0 && c < shape.depth) ? to_acc(a[off + c]) : acc_t(0);
        }
        for (int e = tid; e < BK * BN; e += blockDim.x) {
          const int kk = e / BN, nn = e % BN;
          const int64_t k = c0 + kk, col = n0 + nn;
          Bs[kk][nn] = (k < shape.depth && col < args.b_cols) ? to_acc(b_tap[k * args.b_cols + col])
                                                               : acc_t(0);
        }
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < BK; ++kk) {
          acc_t a_frag[TM], b_frag[TN];
#pragma unroll
          for (int i = 0; i < TM; i += 4) load4(&As[kk][simt_index(ty, i)], &a_frag[i]);
#pragma unroll
          for (int j = 0; j < TN; j += 4) load4(&Bs[kk][simt_index(tx, j)], &b_frag[j]);
#pragma unroll
          for (int i = 0; i < TM; ++i)
#pragma unroll
            for (int j = 0; j < TN; ++j) acc[i][j] = fma(a_frag[i], b_frag[j], acc[i][j]);
        }
        __syncthreads();
      }
    }
  }
#pragma unroll
  for (int i = 0; i < TM; ++i)
#pragma unroll
    for (int j = 0; j < TN; ++j) {
      const int r = simt_index(ty, i);
      const int64_t col = n0 + simt_index(tx, j);
      if (row_pixel[r].n >= 0 && col < shape.cols)
        store_result<kGradInput, T>(args, shape, row_pixel[r], col, group, acc[i][j]);
    }
}

// ------------------------------------- implicit GEMM, tensor cores (fp16/bf16) --

// 128 x 128 tile per block; 8 warps in a 4 x 2 grid, each owning a 32 x 64
// slab of C as 2 x 4 WMMA 16x16 fragments with fp32 accumulators. A K step
// stages 64 bytes of K per A row: BK = 32 for half/bfloat16, 16 for float
// (tc_block_k), so that two stages of A and B fit the 48 KB of static shared
// memory for every type. A is staged row-major (BM x BK), B row-major
// (BK x BN); rows are padded by 16 bytes so fragment loads do not all hit the
// same banks. Global loads move 16-byte chunks (8 half/bfloat16 or 4 float
// values), by cp.async where the source is 16-byte aligned.
//
// float runs here only as TF32 (10-bit mantissa products, fp32 sums), when
// torch.backends.cuda.matmul.allow_tf32 asks for it; exact fp32 takes the
// SIMT kernel. A smaller BK for float does not change what is summed in which
// order: the WMMA steps still walk K eight values at a time, in order.
namespace wmma = nvcuda::wmma;
constexpr int kTcBM = 128, kTcBN = 128;
constexpr int kTcThreads = 256, kTcWarps = kTcThreads / 32;

template <typename T>
constexpr int tc_block_k() {
  return 64 / static_cast<int>(sizeof(T));
}

template <typename T>
struct TensorCoreTraits;
template <>
struct TensorCoreTraits<__half> {
  using fragment_t = __half;
  static constexpr int kK = 16;  // K of one WMMA step
};
template <>
struct TensorCoreTraits<__nv_bfloat16> {
  using fragment_t = __nv_bfloat16;
  static constexpr int kK = 16;
};
template <>
struct TensorCoreTraits<float> {
  using fragment_t = wmma::precision::tf32;
  static constexpr int kK = 8;
};

template <typename T>
constexpr int chunk_elems() {
  return 16 / static_cast<int>(sizeof(T));
}

// Rounds a loaded TF32 fragment's float values to TF32, as WMMA requires.
template <typename Fragment>
__device__ __forceinline__ void round_to_tf32(Fragment& f) {
#pragma unroll
  for (int t = 0; t < f.num_elements; ++t) f.x[t] = wmma::__float_to_tf32(f.x[t]);
}

template <typename T, typename Fragment>
__device__ __forceinline__ void prepare_fragment(Fragment& f) {
  if constexpr (sizeof(T) == 4) round_to_tf32(f);
}

// cp.async (sm_80+): copies 16 bytes from global to shared memory without
// passing through registers; the first src_bytes (0..16) come from src, the
// rest are zeros. Copies are grouped by cp_async_commit; cp_async_wait<N>
// returns once at most the N newest groups of this thread are in flight, and
// only then may this thread read the bytes (other threads: after a barrier).
// The emulation (emulation.h) defers each copy to the wait that retires it.
#if defined(ATROUS_CUDA_EMULATION)
using ::atrous::emulation::cp_async_16;
using ::atrous::emulation::cp_async_commit;
using ::atrous::emulation::cp_async_wait;
#else
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
#error "atrous_cuda's tensor-core kernels use cp.async and bfloat16 WMMA: compute capability >= 8.0"
#endif
__device__ __forceinline__ void cp_async_16(void* dst, const void* src, int src_bytes) {
  const unsigned dst_shared = static_cast<unsigned>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst_shared), "l"(src),
               "r"(src_bytes)
               : "memory");
}
__device__ __forceinline__ void cp_async_commit() {
  asm volatile("cp.async.commit_group;\n" ::: "memory");
}
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}
#endif

// Starts loading one 16-byte chunk of shared memory: by cp.async when the
// source is 16-byte aligned (vector_ok) and holds a whole chunk, else element
// by element with plain loads and stores (zeros past `limit`, the number of
// valid elements from `src`). Either way the chunk is complete for this
// thread after its next cp_async_wait.
template <typename T>
__device__ __forceinline__ void copy_chunk_async(T* dst, const T* src, int64_t limit,
                                                 bool vector_ok) {
  constexpr int kChunk = chunk_elems<T>();
  if (vector_ok && limit >= kChunk) {
    cp_async_16(dst, src, 16);
  } else {
#pragma unroll
    for (int i = 0; i < kChunk; ++i) dst[i] = i < limit ? src[i] : zero_value<T>();
  }
}

template <typename T>
__device__ __forceinline__ void zero_chunk(T* dst) {
  *reinterpret_cast<uint4*>(dst) = make_uint4(0, 0, 0, 0);
}

// One pipeline stage of a tensor-core kernel: the A and B tiles of one K step.
template <typename T, int kARows, int kACols, int kBRows, int kBCols>
struct TcStage {
  T a[kARows][kACols];
  T b[kBRows][kBCols];
};

// Shared memory of a tensor-core kernel: two stages (the K step being
// multiplied, the next one loading), and after the main loop the epilogue's
// per-warp 16x16 float scratch in the same bytes.
template <typename Stage>
union TcTiles {
  Stage stage[2];
  float scratch[kTcWarps][16 * 16];
};

// WMMA loads and stores want 32-byte aligned pointers, cp.async 16-byte
// aligned ones. Inside an array the fragment offsets are multiples of 32
// bytes: fragments start 16 rows (or kK >= 8 rows) of a multiple of 16 bytes
// apart, and 16 values (or kK values, 32 bytes) across. So with the union
// 128-byte aligned, every pointer is aligned when both arrays of a stage are
// a multiple of 32 bytes long.
template <typename Stage>
constexpr bool tc_stage_aligned() {
  return sizeof(Stage) % 32 == 0 && sizeof(Stage::a) % 32 == 0;
}

// Two blocks per SM (<= 128 registers) for 16-bit inputs; TF32 fragments take
// more registers, so float gets one block per SM rather than spills.
template <typename T>
constexpr int tc_min_blocks() {
  return sizeof(T) == 4 ? 1 : 2;
}

// Issues the loads of the implicit GEMM's K step (tap, c0) into `stage` and
// commits them as one cp.async group: A = the tile's 128 rows through the
// tap's row_offset (load_tap_row_offsets), channels c0 .. c0 + BK; B = rows
// c0 .. c0 + BK of the tap's packed weights, columns n0 .. n0 + 128. Padding
// rows and channels past the depth become zeros.
template <typename T, bool kGradInput, typename Stage>
__device__ __forceinline__ void issue_tc_gemm_step(Stage& stage, const ImplicitGemmArgs& args,
                                                   const GemmShape<kGradInput>& shape,
                                                   const int64_t* row_offset, int64_t group,
                                                   int64_t tap, int64_t c0, int64_t n0) {
  constexpr int kChunk = chunk_elems<T>(), kBK = tc_block_k<T>();
  constexpr int kAChunksPerRow = kBK / kChunk, kBChunksPerRow = kTcBN / kChunk;
  const T* a = static_cast<const T*>(args.a);
  const T* b_tap = static_cast<const T*>(args.b) +
                   (group * args.conv.taps() + tap) * shape.depth * args.b_cols;
  const int tid = threadIdx.x;
  for (int e = tid; e < kTcBM * kAChunksPerRow; e += kTcThreads) {
    const int r = e / kAChunksPerRow, q = (e % kAChunksPerRow) * kChunk;
    const int64_t off = row_offset[r], c = c0 + q;
    if (off >= 0 && c < shape.depth)
      copy_chunk_async(&stage.a[r][q], a + off + c, shape.depth - c, args.a_vector_ok);
    else
      zero_chunk(&stage.a[r][q]);
  }
  // Packed B rows are padded to b_cols (a multiple of 8) on a fresh
  // allocation, so every chunk is 16-byte aligned and whole.
  for (int e = tid; e < kBK * kBChunksPerRow; e += kTcThreads) {
    const int kk = e / kBChunksPerRow, q = (e % kBChunksPerRow) * kChunk;
    const int64_t k = c0 + kk, col = n0 + q;
    if (k < shape.depth && col < args.b_cols)
      copy_chunk_async(&stage.b[kk][q], b_tap + k * args.b_cols + col, args.b_cols - col, true);
    else
      zero_chunk(&stage.b[kk][q]);
  }
  cp_async_commit();
}

// The first tap at or after `tap` that some row of the tile reads inside the
// image, with its row offsets loaded into row_offset; p.taps() when none is
// left (the padding skip). Each tap it looks at is a barrier, so the whole
// block must call it.
template <bool kGradInput, int BM>
__device__ __forceinline__ int64_t next_useful_tap(const ConvParams& p, const Pixel* row_pixel,
                                                   int64_t tap, int64_t group,
                                                   int64_t* row_offset) {
  for (; tap < p.taps(); ++tap)
    if (load_tap_row_offsets<kGradInput, BM>(p, row_pixel, tap / p.kernel_width,
                                             tap % p.kernel_width, group, row_offset))
      break;
  return tap;
}

// The K loop is one flat sequence of steps (tap, c0): the useful taps in
// order and, within each, the channel blocks c0 = 0, BK, 2 BK, ... < depth.
// Two stages: while step s is multiplied out of stage s % 2, the loads of
// step s + 1 are in flight into the other stage, across tap boundaries too.
//
// Why it is race-free (one barrier per step, plus those of next_useful_tap
// when a step starts a new tap). Iteration s runs: wait for this thread's
// copies; barrier B(s); compute the next step (maybe next_useful_tap); issue
// its loads into stage (s + 1) % 2; multiply stage s % 2.
//  * Stage s % 2 is complete when it is multiplied: every thread's copies of
//    step s (its only group in flight) have landed at its wait, its plain
//    stores (zero chunks, unaligned fallback) came earlier in program order,
//    and B(s) makes them all visible to the whole block.
//  * Loads of step s + 1 overwrite nothing still being read: stage (s + 1) % 2
//    was last read by the multiply of step s - 1, which every thread finished
//    before reaching B(s), and the loads are issued after B(s).
//  * row_offset is read only while issuing (into the source addresses, not by
//    the copies themselves). next_useful_tap rewrites it after B(s), when all
//    reads for step s (issued in iteration s - 1, before B(s)) are done, and
//    its own barrier orders the new values before the issue of step s + 1.
//  * tap and c0 depend only on the shape and on __syncthreads_or results, so
//    every thread takes the same path through the barriers.
//  * The epilogue's scratch aliases the stages: after the loop no copy is in
//    flight (the last iteration waited and issued nothing), and one more
//    barrier waits for the warps still multiplying the last stage.
template <typename T, bool kGradInput>
__global__ void __launch_bounds__(kTcThreads, tc_min_blocks<T>())
    implicit_gemm_tc_kernel(const ImplicitGemmArgs args) {
  const ConvParams& p = args.conv;
  const GemmShape<kGradInput> shape(p);
  // Block x enumerates (group, M tile); y the N tile.
  const int64_t tiles_m = (shape.M + kTcBM - 1) / kTcBM;
  const int64_t group = blockIdx.x / tiles_m;
  const int64_t m0 = (blockIdx.x % tiles_m) * kTcBM, n0 = int64_t(blockIdx.y) * kTcBN;
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int warp_m = warp / 2, warp_n = warp % 2;

  using Traits = TensorCoreTraits<T>;
  using F = typename Traits::fragment_t;
  constexpr int kBK = tc_block_k<T>(), kPad = chunk_elems<T>();
  using Stage = TcStage<T, kTcBM, kBK + kPad, kBK, kTcBN + kPad>;
  static_assert(tc_stage_aligned<Stage>(), "WMMA fragment pointers must be 32-byte aligned");
  __shared__ __align__(128) TcTiles<Stage> tiles;
  __shared__ int64_t row_offset[kTcBM];
  __shared__ Pixel row_pixel[kTcBM];
  load_tile_pixels<kTcBM>(args, shape.M, m0, row_pixel);

  wmma::fragment<wmma::accumulator, 16, 16, Traits::kK, float> acc[2][4];
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) wmma::fill_fragment(acc[i][j], 0.0f);

  const int64_t taps = p.taps();
  int64_t tap = shape.depth > 0 ? next_useful_tap<kGradInput, kTcBM>(p, row_pixel, 0, group,
                                                                     row_offset)
                                : taps;
  int64_t c0 = 0;
  if (tap < taps)
    issue_tc_gemm_step<T>(tiles.stage[0], args, shape, row_offset, group, tap, c0, n0);
  for (int s = 0; tap < taps; s ^= 1) {
    cp_async_wait<0>();
    __syncthreads();
    c0 += kBK;
    if (c0 >= shape.depth) {
      c0 = 0;
      tap = next_useful_tap<kGradInput, kTcBM>(p, row_pixel, tap + 1, group, row_offset);
    }
    if (tap < taps)
      issue_tc_gemm_step<T>(tiles.stage[s ^ 1], args, shape, row_offset, group, tap, c0, n0);

    const Stage& cur = tiles.stage[s];
#pragma unroll
    for (int kk = 0; kk < kBK; kk += Traits::kK) {
      wmma::fragment<wmma::matrix_a, 16, 16, Traits::kK, F, wmma::row_major> a_frag[2];
      wmma::fragment<wmma::matrix_b, 16, 16, Traits::kK, F, wmma::row_major> b_frag[4];
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        wmma::load_matrix_sync(a_frag[i], &cur.a[warp_m * 32 + i * 16][kk], kBK + kPad);
        prepare_fragment<T>(a_frag[i]);
      }
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        wmma::load_matrix_sync(b_frag[j], &cur.b[kk][warp_n * 64 + j * 16], kTcBN + kPad);
        prepare_fragment<T>(b_frag[j]);
      }
#pragma unroll
      for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) wmma::mma_sync(acc[i][j], a_frag[i], b_frag[j], acc[i][j]);
    }
  }
  __syncthreads();  // scratch aliases the stages other warps may still be reading
  // Epilogue: each warp stages one 16x16 fragment at a time in its own scratch.
  float* scratch = tiles.scratch[warp];
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      wmma::store_matrix_sync(scratch, acc[i][j], 16, wmma::mem_row_major);
      __syncwarp();
      for (int e = lane; e < 256; e += 32) {
        const int r = warp_m * 32 + i * 16 + e / 16;
        const int64_t col = n0 + warp_n * 64 + j * 16 + e % 16;
        if (row_pixel[r].n >= 0 && col < shape.cols)
          store_result<kGradInput, T>(args, shape, row_pixel[r], col, group, scratch[e]);
      }
      __syncwarp();
    }
}

template <typename T, bool kGradInput>
void launch_implicit_gemm_tc(const ImplicitGemmArgs& args, const GemmShape<kGradInput>& shape) {
  const int64_t gx = ceil_div_host(shape.M, kTcBM) * args.conv.groups;
  const int64_t gy = ceil_div_host(shape.cols, kTcBN);
  check_grid(gx, gy, 1, "implicit GEMM");
  constexpr auto kernel = implicit_gemm_tc_kernel<T, kGradInput>;
  ATROUS_LAUNCH(kernel, grid3(gx, gy, 1), kTcThreads, args.stream, args);
}

template <typename T, bool kGradInput>
void launch_implicit_gemm_simt(const ImplicitGemmArgs& args, const GemmShape<kGradInput>& shape) {
  constexpr int BM = sizeof(T) == 8 ? 64 : 128, BN = BM, BK = 8;
  const int64_t gx = ceil_div_host(shape.M, BM) * args.conv.groups;
  const int64_t gy = ceil_div_host(shape.cols, BN);
  check_grid(gx, gy, 1, "implicit GEMM");
  constexpr auto kernel = implicit_gemm_simt_kernel<T, BM, BN, BK, kGradInput>;
  ATROUS_LAUNCH(kernel, grid3(gx, gy, 1), 256, args.stream, args);
}

// Tensor cores for half/bfloat16, and for float when TF32 is allowed; SIMT
// FMA for exact float and for double.
template <typename scalar_t, bool kGradInput>
void launch_implicit_gemm(const ImplicitGemmArgs& args) {
  using T = typename DeviceType<scalar_t>::type;
  const GemmShape<kGradInput> shape(args.conv);
  if (shape.M == 0 || shape.cols == 0) return;
  if constexpr (sizeof(T) == 2) {
    launch_implicit_gemm_tc<T>(args, shape);
  } else if constexpr (sizeof(T) == 4) {
    if (args.allow_tf32)
      launch_implicit_gemm_tc<T>(args, shape);
    else
      launch_implicit_gemm_simt<T>(args, shape);
  } else {
    launch_implicit_gemm_simt<T>(args, shape);
  }
}

// ------------------------------------------------------------- grad_weight --

// For one (group, tap) the reduction runs over the valid output pixels of
// that tap, a rectangle per image (valid_out_range on each axis):
//   pixel k -> (n, oh, ow),  k = (n * rows_h + (oh - oh0)) * rows_w + (ow - ow0).
struct TapPixels {
  int64_t oh0, ow0, rows_h, rows_w, count;
  TapPixels() = default;  // for __shared__ copies
  __device__ TapPixels(const ConvParams& p, int64_t kh, int64_t kw) {
    const IndexRange h =
        valid_out_range(p.in_height, p.out_height, kh, p.stride_h, p.pad_top, p.dilation_h);
    const IndexRange w =
        valid_out_range(p.in_width, p.out_width, kw, p.stride_w, p.pad_left, p.dilation_w);
    oh0 = h.begin;
    ow0 = w.begin;
    rows_h = h.size();
    rows_w = w.size();
    count = p.batch * rows_h * rows_w;
  }
};

// Offsets (channel 0 of the group) of pixel k in grad_output and in the input.
__device__ __forceinline__ void tap_pixel_offsets(const ConvParams& p, const TapPixels& tp,
                                                  int64_t kh, int64_t kw, int64_t group,
                                                  int64_t k, int64_t* gy_off, int64_t* x_off) {
  const int64_t ow = tp.ow0 + k % tp.rows_w;
  const int64_t oh = tp.oh0 + (k / tp.rows_w) % tp.rows_h;
  const int64_t n = k / (tp.rows_w * tp.rows_h);
  const int64_t ih = input_index(oh, kh, p.stride_h, p.pad_top, p.dilation_h);
  const int64_t iw = input_index(ow, kw, p.stride_w, p.pad_left, p.dilation_w);
  *gy_off = ((n * p.out_height + oh) * p.out_width + ow) * p.out_channels +
            group * p.out_channels_per_group();
  *x_off = ((n * p.in_height + ih) * p.in_width + iw) * p.in_channels +
           group * p.in_channels_per_group();
}

// The (group, tap, Cout tile, Cin tile) a grad_weight block owns: block x
// enumerates them with the Cin tile fastest.
struct GradWeightTile {
  int64_t group, tap, kh, kw, m0, n0;
};
template <int BM, int BN>
__device__ __forceinline__ GradWeightTile grad_weight_tile(const ConvParams& p) {
  const int64_t tiles_m = (p.out_channels_per_group() + BM - 1) / BM;
  const int64_t tiles_n = (p.in_channels_per_group() + BN - 1) / BN;
  int64_t bx = blockIdx.x;
  const int64_t tile_n = bx % tiles_n;
  bx /= tiles_n;
  const int64_t tile_m = bx % tiles_m;
  bx /= tiles_m;
  GradWeightTile t;
  t.tap = bx % p.taps();
  t.group = bx / p.taps();
  t.kh = t.tap / p.kernel_width;
  t.kw = t.tap % p.kernel_width;
  t.m0 = tile_m * BM;
  t.n0 = tile_n * BN;
  return t;
}

// Offsets of the BK pixels k0.. of the tap (-1 past k_end) into gy_off /
// x_off, for the whole block to read after the barrier.
template <int BK>
__device__ __forceinline__ void load_chunk_pixel_offsets(const ConvParams& p, const TapPixels& tp,
                                                         int64_t kh, int64_t kw, int64_t group,
                                                         int64_t k0, int64_t k_end,
                                                         int64_t* gy_off, int64_t* x_off) {
  const int t = threadIdx.x;
  if (t < BK) {
    if (k0 + t < k_end) {
      tap_pixel_offsets(p, tp, kh, kw, group, k0 + t, &gy_off[t], &x_off[t]);
    } else {
      gy_off[t] = -1;
      x_off[t] = -1;
    }
  }
  __syncthreads();
}

// The pixel range of split s: fixed by the shapes alone.
__device__ __forceinline__ void split_range(int64_t count, int64_t splits, int64_t s, int64_t* begin,
                                            int64_t* end) {
  const int64_t per = (count + splits - 1) / splits;
  *begin = s * per < count ? s * per : count;
  *end = (s + 1) * per < count ? (s + 1) * per : count;
}

// Block index x enumerates (group, tap, co tile, ci tile); y is the split.
// C[co][ci] of the partial for (split, group*taps + tap) is written row-major.
template <typename T, int BM, int BN, int BK>
__global__ void __launch_bounds__(256, 2) grad_weight_simt_kernel(const GradWeightArgs args) {
  using acc_t = typename AccType<T>::type;
  constexpr int TM = BM / 16, TN = BN / 16;
  const ConvParams& p = args.conv;
  const int64_t cog = p.out_channels_per_group(), cig = p.in_channels_per_group();
  const GradWeightTile tile = grad_weight_tile<BM, BN>(p);
  const int64_t tap = tile.tap, group = tile.group, kh = tile.kh, kw = tile.kw;
  const int64_t m0 = tile.m0, n0 = tile.n0;
  const T* gy = static_cast<const T*>(args.grad_output);
  const T* x = static_cast<const T*>(args.input);
  const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;

  __shared__ acc_t As[BK][BM + 4];
  __shared__ acc_t Bs[BK][BN + 4];
  __shared__ int64_t gy_off[BK], x_off[BK];

  acc_t acc[TM][TN];
#pragma unroll
  for (int i = 0; i < TM; ++i)
#pragma unroll
    for (int j = 0; j < TN; ++j) acc[i][j] = acc_t(0);

  const TapPixels tp(p, kh, kw);
  int64_t k_begin, k_end;
  split_range(tp.count, args.splits, blockIdx.y, &k_begin, &k_end);
  for (int64_t k0 = k_begin; k0 < k_end; k0 += BK) {
    load_chunk_pixel_offsets<BK>(p, tp, kh, kw, group, k0, k_end, gy_off, x_off);
    for (int e = tid; e < BK * BM; e += blockDim.x) {
      const int kk = e / BM, mm = e % BM;
      const int64_t co = m0 + mm;
      As[kk][mm] = (gy_off[kk] >= 0 && co < cog) ? to_acc(gy[gy_off[kk] + co]) : acc_t(0);
    }
    for (int e = tid; e < BK * BN; e += blockDim.x) {
      const int kk = e / BN, nn = e % BN;
      const int64_t ci = n0 + nn;
      Bs[kk][nn] = (x_off[kk] >= 0 && ci < cig) ? to_acc(x[x_off[kk] + ci]) : acc_t(0);
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < BK; ++kk) {
      acc_t a_frag[TM], b_frag[TN];
#pragma unroll
      for (int i = 0; i < TM; ++i) a_frag[i] = As[kk][ty + 16 * i];
#pragma unroll
      for (int j = 0; j < TN; ++j) b_frag[j] = Bs[kk][tx + 16 * j];
#pragma unroll
      for (int i = 0; i < TM; ++i)
#pragma unroll
        for (int j = 0; j < TN; ++j) acc[i][j] = fma(a_frag[i], b_frag[j], acc[i][j]);
    }
    __syncthreads();
  }
  acc_t* partial = static_cast<acc_t*>(args.partials) +
                   ((int64_t(blockIdx.y) * p.groups + group) * p.taps() + tap) * cog * cig;
#pragma unroll
  for (int i = 0; i < TM; ++i)
#pragma unroll
    for (int j = 0; j < TN; ++j) {
      const int64_t co = m0 + ty + 16 * i, ci = n0 + tx + 16 * j;
      if (co < cog && ci < cig) partial[co * cig + ci] = acc[i][j];
    }
}

// Issues the loads of grad_weight K step k0 (pixels k0 .. k0 + BK of the tap,
// their offsets in gy_off / x_off from load_chunk_pixel_offsets) into `stage`
// and commits them as one cp.async group: A = grad_y rows, channels
// m0 .. m0 + 128 (Cout), B = input rows, channels n0 .. n0 + 128 (Cin).
// Pixels past the split and channels past the group become zeros.
template <typename T, typename Stage>
__device__ __forceinline__ void issue_tc_grad_weight_step(Stage& stage, const GradWeightArgs& args,
                                                          const int64_t* gy_off,
                                                          const int64_t* x_off, int64_t m0,
                                                          int64_t n0) {
  constexpr int kChunk = chunk_elems<T>(), kBK = tc_block_k<T>();
  constexpr int kAChunksPerRow = kTcBM / kChunk, kBChunksPerRow = kTcBN / kChunk;
  const ConvParams& p = args.conv;
  const int64_t cog = p.out_channels_per_group(), cig = p.in_channels_per_group();
  const T* gy = static_cast<const T*>(args.grad_output);
  const T* x = static_cast<const T*>(args.input);
  const int tid = threadIdx.x;
  for (int e = tid; e < kBK * kAChunksPerRow; e += kTcThreads) {
    const int kk = e / kAChunksPerRow, q = (e % kAChunksPerRow) * kChunk;
    const int64_t co = m0 + q;
    if (gy_off[kk] >= 0 && co < cog)
      copy_chunk_async(&stage.a[kk][q], gy + gy_off[kk] + co, cog - co, args.vector_ok);
    else
      zero_chunk(&stage.a[kk][q]);
  }
  for (int e = tid; e < kBK * kBChunksPerRow; e += kTcThreads) {
    const int kk = e / kBChunksPerRow, q = (e % kBChunksPerRow) * kChunk;
    const int64_t ci = n0 + q;
    if (x_off[kk] >= 0 && ci < cig)
      copy_chunk_async(&stage.b[kk][q], x + x_off[kk] + ci, cig - ci, args.vector_ok);
    else
      zero_chunk(&stage.b[kk][q]);
  }
  cp_async_commit();
}

// Tensor-core grad_weight: A = grad_y^T staged column-major (a[k][co]),
// B = x staged row-major (b[k][ci]); 128 x 128 tile, BK = tc_block_k pixels.
// The K loop is the split's pixels, BK at a time, pipelined over two stages
// as in implicit_gemm_tc_kernel, and race-free for the same reasons with
// gy_off / x_off in the role of row_offset: iteration s waits for its copies,
// passes barrier B(s), computes the offsets of step s + 1 (threads < BK write
// them after B(s), when every read of step s's offsets, made while issuing in
// iteration s - 1, is done; load_chunk_pixel_offsets' barrier then publishes
// them), issues step s + 1 into the stage step s - 1 was multiplied from, and
// multiplies stage s % 2.
template <typename T>
__global__ void __launch_bounds__(kTcThreads, tc_min_blocks<T>())
    grad_weight_tc_kernel(const GradWeightArgs args) {
  const ConvParams& p = args.conv;
  const int64_t cog = p.out_channels_per_group(), cig = p.in_channels_per_group();
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int warp_m = warp / 2, warp_n = warp % 2;
  // The block's tile and its tap's pixel rectangle live in shared memory and
  // are re-read where used (a few shared loads per K step): held in
  // registers through the pipelined loop, they pushed the 16-bit kernels
  // past their 128 registers (ptxas spilled 16-32 bytes on sm_80/sm_90).
  __shared__ GradWeightTile tile;
  __shared__ TapPixels tap_pixels;
  if (tid == 0) {
    tile = grad_weight_tile<kTcBM, kTcBN>(p);
    tap_pixels = TapPixels(p, tile.kh, tile.kw);
  }
  __syncthreads();

  using Traits = TensorCoreTraits<T>;
  using F = typename Traits::fragment_t;
  constexpr int kBK = tc_block_k<T>(), kPad = chunk_elems<T>();
  using Stage = TcStage<T, kBK, kTcBM + kPad, kBK, kTcBN + kPad>;
  static_assert(tc_stage_aligned<Stage>(), "WMMA fragment pointers must be 32-byte aligned");
  __shared__ __align__(128) TcTiles<Stage> tiles;
  __shared__ int64_t gy_off[kBK], x_off[kBK];

  wmma::fragment<wmma::accumulator, 16, 16, Traits::kK, float> acc[2][4];
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) wmma::fill_fragment(acc[i][j], 0.0f);

  int64_t k_begin, k_end;
  split_range(tap_pixels.count, args.splits, blockIdx.y, &k_begin, &k_end);
  if (k_begin < k_end) {
    load_chunk_pixel_offsets<kBK>(p, tap_pixels, tile.kh, tile.kw, tile.group, k_begin, k_end,
                                  gy_off, x_off);
    issue_tc_grad_weight_step<T>(tiles.stage[0], args, gy_off, x_off, tile.m0, tile.n0);
  }
  int s = 0;
  for (int64_t k0 = k_begin; k0 < k_end; k0 += kBK, s ^= 1) {
    cp_async_wait<0>();
    __syncthreads();
    if (k0 + kBK < k_end) {
      load_chunk_pixel_offsets<kBK>(p, tap_pixels, tile.kh, tile.kw, tile.group, k0 + kBK, k_end,
                                    gy_off, x_off);
      issue_tc_grad_weight_step<T>(tiles.stage[s ^ 1], args, gy_off, x_off, tile.m0, tile.n0);
    }

    const Stage& cur = tiles.stage[s];
#pragma unroll
    for (int kk = 0; kk < kBK; kk += Traits::kK) {
      wmma::fragment<wmma::matrix_a, 16, 16, Traits::kK, F, wmma::col_major> a_frag[2];
      wmma::fragment<wmma::matrix_b, 16, 16, Traits::kK, F, wmma::row_major> b_frag[4];
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        wmma::load_matrix_sync(a_frag[i], &cur.a[kk][warp_m * 32 + i * 16], kTcBM + kPad);
        prepare_fragment<T>(a_frag[i]);
      }
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        wmma::load_matrix_sync(b_frag[j], &cur.b[kk][warp_n * 64 + j * 16], kTcBN + kPad);
        prepare_fragment<T>(b_frag[j]);
      }
#pragma unroll
      for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) wmma::mma_sync(acc[i][j], a_frag[i], b_frag[j], acc[i][j]);
    }
  }
  __syncthreads();  // scratch aliases the stages other warps may still be reading
  float* partial =
      static_cast<float*>(args.partials) +
      ((int64_t(blockIdx.y) * p.groups + tile.group) * p.taps() + tile.tap) * cog * cig;
  float* scratch = tiles.scratch[warp];
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      wmma::store_matrix_sync(scratch, acc[i][j], 16, wmma::mem_row_major);
      __syncwarp();
      for (int e = lane; e < 256; e += 32) {
        const int64_t co = tile.m0 + warp_m * 32 + i * 16 + e / 16;
        const int64_t ci = tile.n0 + warp_n * 64 + j * 16 + e % 16;
        if (co < cog && ci < cig) partial[co * cig + ci] = scratch[e];
      }
      __syncwarp();
    }
}

// grad_w[g*Cog + co][ci][kh][kw] = sum over s, in order, of partial[s][g*taps + tap][co][ci].
template <typename T>
__global__ void grad_weight_reduce_kernel(const GradWeightArgs args) {
  using acc_t = typename AccType<T>::type;
  const ConvParams& p = args.conv;
  const int64_t cog = p.out_channels_per_group(), cig = p.in_channels_per_group();
  const int64_t per_split = p.groups * p.taps() * cog * cig;
  const acc_t* partials = static_cast<const acc_t*>(args.partials);
  T* out = static_cast<T*>(args.grad_weight);
  const Strides4& s = args.weight_strides;
  for (int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < per_split;
       e += int64_t(gridDim.x) * blockDim.x) {
    acc_t sum = 0;
    for (int64_t split = 0; split < args.splits; ++split) sum += partials[split * per_split + e];
    const int64_t ci = e % cig, co = (e / cig) % cog, tap = (e / (cig * cog)) % p.taps();
    const int64_t group = e / (cig * cog * p.taps());
    const int64_t kh = tap / p.kernel_width, kw = tap % p.kernel_width;
    out[(group * cog + co) * s.n + ci * s.c + kh * s.h + kw * s.w] = from_acc<T>(sum);
  }
}

// Blocks for a grid-stride loop over n elements (capped; the loop covers the rest).
inline dim3 elementwise_blocks(int64_t n, int threads) {
  const int64_t blocks = (n + threads - 1) / threads;
  const int64_t cap = int64_t(1) << 20;
  return dim3(static_cast<unsigned>(blocks < 1 ? 1 : (blocks > cap ? cap : blocks)));
}

template <typename T, bool kTensorCores>
void launch_grad_weight_gemm(const GradWeightArgs& args) {
  const ConvParams& p = args.conv;
  const int64_t cog = p.out_channels_per_group(), cig = p.in_channels_per_group();
  if constexpr (kTensorCores) {
    const int64_t tiles = ceil_div_host(cog, kTcBM) * ceil_div_host(cig, kTcBN);
    const int64_t gx = tiles * p.groups * p.taps();
    check_grid(gx, args.splits, 1, "grad_weight");
    constexpr auto kernel = grad_weight_tc_kernel<T>;
    ATROUS_LAUNCH(kernel, grid3(gx, args.splits, 1), kTcThreads, args.stream, args);
  } else {
    constexpr int BM = sizeof(T) == 8 ? 64 : 128, BN = BM, BK = 8;
    const int64_t tiles = ceil_div_host(cog, BM) * ceil_div_host(cig, BN);
    const int64_t gx = tiles * p.groups * p.taps();
    check_grid(gx, args.splits, 1, "grad_weight");
    constexpr auto kernel = grad_weight_simt_kernel<T, BM, BN, BK>;
    ATROUS_LAUNCH(kernel, grid3(gx, args.splits, 1), 256, args.stream, args);
  }
}

template <typename scalar_t>
void launch_grad_weight_impl(const GradWeightArgs& args) {
  using T = typename DeviceType<scalar_t>::type;
  const ConvParams& p = args.conv;
  const int64_t cog = p.out_channels_per_group(), cig = p.in_channels_per_group();
  if constexpr (sizeof(T) == 2) {
    launch_grad_weight_gemm<T, true>(args);
  } else if constexpr (sizeof(T) == 4) {
    if (args.allow_tf32)
      launch_grad_weight_gemm<T, true>(args);
    else
      launch_grad_weight_gemm<T, false>(args);
  } else {
    launch_grad_weight_gemm<T, false>(args);
  }
  const int64_t total = p.groups * p.taps() * cog * cig;
  constexpr auto reduce = grad_weight_reduce_kernel<T>;
  ATROUS_LAUNCH(reduce, elementwise_blocks(total, 256), 256, args.stream, args);
}

// --------------------------------------------------------------- depthwise --

// One thread per output element, channel fastest (NHWC order), so loads of
// the input and of the weight are coalesced. Out channel c reads input
// channel c / mult.
template <typename T>
__global__ void depthwise_forward_kernel(const DirectArgs args) {
  using acc_t = typename AccType<T>::type;
  const ConvParams& p = args.conv;
  const T* x = static_cast<const T*>(args.a);
  const T* w = static_cast<const T*>(args.b);  // [Cout][taps]
  const T* bias = static_cast<const T*>(args.bias);
  T* out = static_cast<T*>(args.out);
  const int64_t mult = p.out_channels_per_group();
  const int64_t total = p.batch * p.out_height * p.out_width * p.out_channels;
  for (int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < total;
       e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t c = e % p.out_channels;
    const int64_t ow = (e / p.out_channels) % p.out_width;
    const int64_t oh = (e / (p.out_channels * p.out_width)) % p.out_height;
    const int64_t n = e / (p.out_channels * p.out_width * p.out_height);
    acc_t sum = bias ? to_acc(bias[c]) : acc_t(0);
    for (int64_t kh = 0; kh < p.kernel_height; ++kh) {
      const int64_t ih = input_index(oh, kh, p.stride_h, p.pad_top, p.dilation_h);
      if (ih < 0 || ih >= p.in_height) continue;
      for (int64_t kw = 0; kw < p.kernel_width; ++kw) {
        const int64_t iw = input_index(ow, kw, p.stride_w, p.pad_left, p.dilation_w);
        if (iw < 0 || iw >= p.in_width) continue;
        sum += to_acc(x[((n * p.in_height + ih) * p.in_width + iw) * p.in_channels + c / mult]) *
               to_acc(w[c * p.taps() + kh * p.kernel_width + kw]);
      }
    }
    const Strides4& s = args.out_strides;
    out[n * s.n + c * s.c + oh * s.h + ow * s.w] = from_acc<T>(sum);
  }
}

// One thread per input element: grad_x[.., c] = sum over taps and j < mult of
// grad_y[(oh, ow) reading this pixel, c*mult + j] * w[c*mult + j][tap].
template <typename T>
__global__ void depthwise_grad_input_kernel(const DirectArgs args) {
  using acc_t = typename AccType<T>::type;
  const ConvParams& p = args.conv;
  const T* gy = static_cast<const T*>(args.a);
  const T* w = static_cast<const T*>(args.b);
  T* out = static_cast<T*>(args.out);
  const int64_t mult = p.out_channels_per_group();
  const int64_t total = p.batch * p.in_height * p.in_width * p.in_channels;
  for (int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < total;
       e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t c = e % p.in_channels;
    const int64_t iw = (e / p.in_channels) % p.in_width;
    const int64_t ih = (e / (p.in_channels * p.in_width)) % p.in_height;
    const int64_t n = e / (p.in_channels * p.in_width * p.in_height);
    acc_t sum = 0;
    for (int64_t kh = 0; kh < p.kernel_height; ++kh) {
      const int64_t oh =
          output_index_for_input(ih, p.out_height, kh, p.stride_h, p.pad_top, p.dilation_h);
      if (oh < 0) continue;
      for (int64_t kw = 0; kw < p.kernel_width; ++kw) {
        const int64_t ow =
            output_index_for_input(iw, p.out_width, kw, p.stride_w, p.pad_left, p.dilation_w);
        if (ow < 0) continue;
        const T* g_px = gy + ((n * p.out_height + oh) * p.out_width + ow) * p.out_channels;
        for (int64_t j = 0; j < mult; ++j)
          sum += to_acc(g_px[c * mult + j]) *
                 to_acc(w[(c * mult + j) * p.taps() + kh * p.kernel_width + kw]);
      }
    }
    const Strides4& s = args.out_strides;
    out[n * s.n + c * s.c + ih * s.h + iw * s.w] = from_acc<T>(sum);
  }
}

// Channel-tile reductions over pixels (depthwise grad_weight, grad_bias).
// A block owns 32 channels (lane = channel) and one of `splits` fixed,
// shape-only pixel ranges; its 8 rows of lanes stride over that range in a
// fixed order, the 8 row sums are added in order, and the block writes one
// partial per channel. A second kernel adds the partials in split order. No
// atomics anywhere, so the result is bitwise reproducible.
constexpr int kReduceChannels = 32, kReduceRows = 8;

template <typename acc_t>
__device__ __forceinline__ acc_t ordered_block_sum(acc_t partial, acc_t (*rows)[kReduceChannels]) {
  const int lane = threadIdx.x % kReduceChannels, row = threadIdx.x / kReduceChannels;
  rows[row][lane] = partial;
  __syncthreads();
  acc_t total = 0;
  if (row == 0)
    for (int r = 0; r < kReduceRows; ++r) total += rows[r][lane];
  return total;
}

// partial[split][tap][c] = sum over the split's share of the tap's valid
// pixels of grad_y[.., c] * x[.., c / mult]. Block x = (tap, channel tile).
template <typename T>
__global__ void __launch_bounds__(kReduceChannels * kReduceRows)
    depthwise_grad_weight_kernel(const DirectArgs args) {
  using acc_t = typename AccType<T>::type;
  __shared__ acc_t rows[kReduceRows][kReduceChannels];
  const ConvParams& p = args.conv;
  const T* gy = static_cast<const T*>(args.a);
  const T* x = static_cast<const T*>(args.b);
  const int64_t tiles = (p.out_channels + kReduceChannels - 1) / kReduceChannels;
  const int64_t tap = blockIdx.x / tiles;
  const int64_t c = (blockIdx.x % tiles) * kReduceChannels + threadIdx.x % kReduceChannels;
  const int64_t kh = tap / p.kernel_width, kw = tap % p.kernel_width;
  const int64_t mult = p.out_channels_per_group();
  const TapPixels tp(p, kh, kw);
  int64_t k_begin, k_end;
  split_range(tp.count, args.splits, blockIdx.y, &k_begin, &k_end);
  acc_t sum = 0;
  if (c < p.out_channels) {
    for (int64_t k = k_begin + threadIdx.x / kReduceChannels; k < k_end; k += kReduceRows) {
      const int64_t ow = tp.ow0 + k % tp.rows_w;
      const int64_t oh = tp.oh0 + (k / tp.rows_w) % tp.rows_h;
      const int64_t n = k / (tp.rows_w * tp.rows_h);
      const int64_t ih = input_index(oh, kh, p.stride_h, p.pad_top, p.dilation_h);
      const int64_t iw = input_index(ow, kw, p.stride_w, p.pad_left, p.dilation_w);
      sum += to_acc(gy[((n * p.out_height + oh) * p.out_width + ow) * p.out_channels + c]) *
             to_acc(x[((n * p.in_height + ih) * p.in_width + iw) * p.in_channels + c / mult]);
    }
  }
  const acc_t total = ordered_block_sum(sum, rows);
  if (threadIdx.x < kReduceChannels && c < p.out_channels)
    static_cast<acc_t*>(args.partials)[(int64_t(blockIdx.y) * p.taps() + tap) * p.out_channels + c] =
        total;
}

// partial[split][c] = sum over the split's share of (n, oh, ow) of grad_y[.., c].
template <typename T>
__global__ void __launch_bounds__(kReduceChannels * kReduceRows)
    grad_bias_kernel(const DirectArgs args) {
  using acc_t = typename AccType<T>::type;
  __shared__ acc_t rows[kReduceRows][kReduceChannels];
  const ConvParams& p = args.conv;
  const T* gy = static_cast<const T*>(args.a);
  const int64_t c = int64_t(blockIdx.x) * kReduceChannels + threadIdx.x % kReduceChannels;
  int64_t k_begin, k_end;
  split_range(p.batch * p.out_height * p.out_width, args.splits, blockIdx.y, &k_begin, &k_end);
  acc_t sum = 0;
  if (c < p.out_channels)
    for (int64_t k = k_begin + threadIdx.x / kReduceChannels; k < k_end; k += kReduceRows)
      sum += to_acc(gy[k * p.out_channels + c]);
  const acc_t total = ordered_block_sum(sum, rows);
  if (threadIdx.x < kReduceChannels && c < p.out_channels)
    static_cast<acc_t*>(args.partials)[int64_t(blockIdx.y) * p.out_channels + c] = total;
}

// out(e) = sum over s, in order, of partial[s][e], e < count; written to
// grad_bias[c] (kDepthwiseWeight false, e = c) or grad_w[c][0][kh][kw]
// (kDepthwiseWeight true, e = tap * Cout + c).
template <typename T, bool kDepthwiseWeight>
__global__ void ordered_split_sum_kernel(const DirectArgs args, int64_t count) {
  using acc_t = typename AccType<T>::type;
  const ConvParams& p = args.conv;
  const acc_t* partials = static_cast<const acc_t*>(args.partials);
  const Strides4& s = args.out_strides;
  for (int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < count;
       e += int64_t(gridDim.x) * blockDim.x) {
    acc_t sum = 0;
    for (int64_t split = 0; split < args.splits; ++split) sum += partials[split * count + e];
    const int64_t c = e % p.out_channels;
    int64_t offset = c * s.n;
    if (kDepthwiseWeight) {
      const int64_t tap = e / p.out_channels;
      offset += (tap / p.kernel_width) * s.h + (tap % p.kernel_width) * s.w;
    }
    static_cast<T*>(args.out)[offset] = from_acc<T>(sum);
  }
}

}  // namespace

// ------------------------------------------------------------ launchers --

template <typename scalar_t>
void launch_implicit_gemm_forward(const ImplicitGemmArgs& args) {
  launch_implicit_gemm<scalar_t, false>(args);
}

template <typename scalar_t>
void launch_implicit_gemm_grad_input(const ImplicitGemmArgs& args) {
  launch_implicit_gemm<scalar_t, true>(args);
}

template <typename scalar_t>
void launch_grad_weight(const GradWeightArgs& args) {
  launch_grad_weight_impl<scalar_t>(args);
}

template <typename scalar_t>
void launch_depthwise_forward(const DirectArgs& args) {
  using T = typename DeviceType<scalar_t>::type;
  const ConvParams& p = args.conv;
  const int64_t total = p.batch * p.out_height * p.out_width * p.out_channels;
  if (total == 0) return;
  constexpr auto kernel = depthwise_forward_kernel<T>;
  ATROUS_LAUNCH(kernel, elementwise_blocks(total, 256), 256, args.stream, args);
}

template <typename scalar_t>
void launch_depthwise_grad_input(const DirectArgs& args) {
  using T = typename DeviceType<scalar_t>::type;
  const ConvParams& p = args.conv;
  const int64_t total = p.batch * p.in_height * p.in_width * p.in_channels;
  if (total == 0) return;
  constexpr auto kernel = depthwise_grad_input_kernel<T>;
  ATROUS_LAUNCH(kernel, elementwise_blocks(total, 256), 256, args.stream, args);
}

template <typename scalar_t>
void launch_depthwise_grad_weight(const DirectArgs& args) {
  using T = typename DeviceType<scalar_t>::type;
  const ConvParams& p = args.conv;
  const int64_t blocks = p.taps() * ceil_div_host(p.out_channels, kReduceChannels);
  check_grid(blocks, args.splits, 1, "depthwise grad_weight");
  constexpr auto partial_sums = depthwise_grad_weight_kernel<T>;
  ATROUS_LAUNCH(partial_sums, grid3(blocks, args.splits, 1), kReduceChannels * kReduceRows,
                args.stream, args);
  const int64_t count = p.taps() * p.out_channels;
  constexpr auto ordered_sum = ordered_split_sum_kernel<T, true>;
  ATROUS_LAUNCH(ordered_sum, elementwise_blocks(count, 256), 256, args.stream, args, count);
}

template <typename scalar_t>
void launch_grad_bias(const DirectArgs& args) {
  using T = typename DeviceType<scalar_t>::type;
  const int64_t blocks = ceil_div_host(args.conv.out_channels, kReduceChannels);
  check_grid(blocks, args.splits, 1, "grad_bias");
  constexpr auto partial_sums = grad_bias_kernel<T>;
  ATROUS_LAUNCH(partial_sums, grid3(blocks, args.splits, 1), kReduceChannels * kReduceRows,
                args.stream, args);
  const int64_t count = args.conv.out_channels;
  constexpr auto ordered_sum = ordered_split_sum_kernel<T, false>;
  ATROUS_LAUNCH(ordered_sum, elementwise_blocks(count, 256), 256, args.stream, args, count);
}

#define ATROUS_INSTANTIATE_CUDA_LAUNCHERS(scalar_t)                               \
  template void launch_implicit_gemm_forward<scalar_t>(const ImplicitGemmArgs&);    \
  template void launch_implicit_gemm_grad_input<scalar_t>(const ImplicitGemmArgs&); \
  template void launch_grad_weight<scalar_t>(const GradWeightArgs&);                \
  template void launch_depthwise_forward<scalar_t>(const DirectArgs&);              \
  template void launch_depthwise_grad_input<scalar_t>(const DirectArgs&);           \
  template void launch_depthwise_grad_weight<scalar_t>(const DirectArgs&);          \
  template void launch_grad_bias<scalar_t>(const DirectArgs&);

}  // namespace cuda
}  // namespace atrous
