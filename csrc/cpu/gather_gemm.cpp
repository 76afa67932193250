// Register-blocked micro-kernel for gather_gemm, compiled once per x86
// instruction set and chosen at run time.
//
// A tile of MR rows x one 64-byte panel of C stays in registers while k runs
// over a cache block of the depth: per k it loads one B vector, broadcasts MR
// values of A and issues MR fused multiply-adds. GCC's generic vectors are
// lowered to the widest registers of the function's target, and `flatten`
// inlines the generic template into each target-specific entry point.
#include "gather_gemm.h"

#include <c10/util/Exception.h>

#include <ATen/Parallel.h>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <type_traits>
#include <vector>

namespace atrous {
namespace cpu {
namespace {

// GCC generic vector of `Bytes` bytes; each target's entry point picks the
// width of its registers, so no vector is ever split by the compiler.
template <typename T, int Bytes>
struct Vec;
template <int Bytes>
struct Vec<float, Bytes> {
  typedef float type __attribute__((vector_size(Bytes)));
};
template <int Bytes>
struct Vec<double, Bytes> {
  typedef double type __attribute__((vector_size(Bytes)));
};

// Cache blocking. The loops run depth block > row block > panel > row tile.
// A 64-byte B panel of one depth block (at most kDepthBlock deep, 16 KiB)
// stays in L1 while the row block's A rows stream past it; the row block's A
// rows (kRowBlock x depth block) and C rows, and the depth block of every B
// panel, stay in L2 (1 MB here) while the panels pass over them. The B part
// grows with the columns, so the depth block shrinks to keep it within
// kBBlockBytes: 256 deep up to 256 float columns, 128 deep at 512.
constexpr int64_t kDepthBlock = 256;
constexpr int64_t kMinDepthBlock = 64;
constexpr int64_t kBBlockBytes = 256 * 1024;
constexpr int64_t kRowBlock = 120;

// The depth block (in k steps of kPanelBytes-wide B rows) for `panels` panels.
inline int64_t depth_block(int64_t panels) {
  const int64_t fit = kBBlockBytes / (panels * kPanelBytes);
  return fit < kMinDepthBlock ? kMinDepthBlock : (fit > kDepthBlock ? kDepthBlock : fit);
}

// An MR-row x 1-panel tile of C: per k it loads the panel's B row,
// broadcasts MR values of A and issues MR * (64 / VB) FMAs. (Two panels per
// tile, halving the A broadcasts per FMA, measured no faster on NHWC rows:
// bench/NOTES.md.)
//
// a_step is std::integral_constant<int64_t, 1> for contiguous A rows (the
// NHWC path, whose addressing then stays a scaled k) or a run-time int64_t.
template <typename T, int VB, int MR, typename Step>
inline void micro_tile(const T* const* a_rows, Step a_step, T* const* c_rows, int64_t col,
                       const T* b, int64_t k_begin, int64_t k_count) {
  using V = typename Vec<T, VB>::type;
  constexpr int NV = kPanelBytes / VB;  // vectors per panel row
  constexpr int lanes = VB / sizeof(T);
  V acc[MR][NV];
  for (int i = 0; i < MR; ++i)
    for (int v = 0; v < NV; ++v) std::memcpy(&acc[i][v], c_rows[i] + col + v * lanes, VB);
  const T* a[MR];
  for (int i = 0; i < MR; ++i) a[i] = a_rows[i] + k_begin * a_step;
  for (int64_t k = 0; k < k_count; ++k) {
    V bv[NV];
    for (int v = 0; v < NV; ++v) std::memcpy(&bv[v], b + k * panel_width<T>() + v * lanes, VB);
    for (int i = 0; i < MR; ++i) {
      const T ai = a[i][k * a_step];
      for (int v = 0; v < NV; ++v) acc[i][v] += ai * bv[v];
    }
  }
  for (int i = 0; i < MR; ++i)
    for (int v = 0; v < NV; ++v) std::memcpy(c_rows[i] + col + v * lanes, &acc[i][v], VB);
}

template <typename T, int VB, int MR, typename Step>
inline void tail_tile(int rows, const T* const* a_rows, Step a_step, T* const* c_rows,
                      int64_t col, const T* b, int64_t k_begin, int64_t k_count) {
  // Rows left over after the full MR tiles, peeled one size at a time so each
  // call still has a compile-time tile height.
  if constexpr (MR > 1) {
    if (rows == MR - 1) {
      micro_tile<T, VB, MR - 1, Step>(a_rows, a_step, c_rows, col, b, k_begin, k_count);
      return;
    }
    tail_tile<T, VB, MR - 1, Step>(rows, a_rows, a_step, c_rows, col, b, k_begin, k_count);
  }
}

// ------------------------------------------------- A read along planes --
//
// With a_step > 1 (an NCHW operand, a_step = H * W) each k of a micro-tile's
// A reads a different cache line per row, a plane apart, where an NHWC row
// streams k contiguously: the MR x 1-panel tile then measured 10-25% slower
// than copying A to NHWC first (bench/NOTES.md). But the rows a tap gathers
// are mostly runs of consecutive pixels of one image row, A[m + i][k] =
// A[m][k] + i, so a run tile of R rows reads its R values of each k from one
// or two cache lines through a single pointer, and covers NP panels:
// R * NP * (64 / VB) FMAs per k for NP vector loads of B and R broadcasts
// that share their lines. Rows that continue no run take the pointer tiles.

// Planes ahead that a run tile prefetches its A lines: 2-5% on ASPP OS16 and
// layer4 NCHW forwards, level elsewhere (16 and 32 measured alike).
constexpr int64_t kRunPrefetch = 16;

template <typename T, int VB, int R, int NP>
inline void run_tile(const T* a_row0, int64_t a_step, T* const* c_rows, int64_t col, const T* b,
                     int64_t b_panel_stride, int64_t k_begin, int64_t k_count) {
  using V = typename Vec<T, VB>::type;
  constexpr int NV = kPanelBytes / VB;  // vectors per panel row
  constexpr int lanes = VB / sizeof(T);
  V acc[R][NP * NV];
  for (int i = 0; i < R; ++i)
    for (int v = 0; v < NP * NV; ++v) std::memcpy(&acc[i][v], c_rows[i] + col + v * lanes, VB);
  const T* a = a_row0 + k_begin * a_step;
  // The run's line(s) kRunPrefetch planes ahead, as integers: those
  // addresses may lie past the operand (a prefetch never faults).
  const uintptr_t ahead = reinterpret_cast<uintptr_t>(a) + kRunPrefetch * a_step * sizeof(T);
  const uintptr_t step_bytes = a_step * sizeof(T);
  for (int64_t k = 0, offset = 0; k < k_count; ++k, offset += a_step) {
    __builtin_prefetch(reinterpret_cast<const void*>(ahead + k * step_bytes), 0, 3);
    __builtin_prefetch(reinterpret_cast<const void*>(ahead + k * step_bytes + (R - 1) * sizeof(T)), 0, 3);
    V bv[NP * NV];
    for (int q = 0; q < NP; ++q)
      for (int v = 0; v < NV; ++v)
        std::memcpy(&bv[q * NV + v], b + q * b_panel_stride + k * panel_width<T>() + v * lanes, VB);
    for (int i = 0; i < R; ++i) {
      const T ai = a[offset + i];
      for (int v = 0; v < NP * NV; ++v) acc[i][v] += ai * bv[v];
    }
  }
  for (int i = 0; i < R; ++i)
    for (int v = 0; v < NP * NV; ++v) std::memcpy(c_rows[i] + col + v * lanes, &acc[i][v], VB);
}

template <typename T, int VB, int R, int NP>
inline void run_tail_tile(int rows, const T* a_row0, int64_t a_step, T* const* c_rows, int64_t col,
                          const T* b, int64_t b_panel_stride, int64_t k_begin, int64_t k_count) {
  // The last rows of a run, peeled one size at a time as in tail_tile.
  if constexpr (R > 1) {
    if (rows == R - 1) {
      run_tile<T, VB, R - 1, NP>(a_row0, a_step, c_rows, col, b, b_panel_stride, k_begin, k_count);
      return;
    }
    run_tail_tile<T, VB, R - 1, NP>(rows, a_row0, a_step, c_rows, col, b, b_panel_stride, k_begin,
                                    k_count);
  }
}

// gather_gemm_impl's loops (depth block > row block > panels > tile) over
// tiles found once per call: each run of two or more consecutive pixels in
// run tiles of at most R rows, the rows between runs in pointer tiles of at
// most MR. Panels go NP at a time through run tiles, one at a time through
// pointer tiles. Every C element still sums k in order.
template <typename T, int VB, int MR, int R, int NP>
inline void strided_gemm_impl(const GatherGemmArgs<T>& args) {
  const int64_t width = panel_width<T>();
  const int64_t block = depth_block(args.panels);
  const int64_t b_panel_stride = args.depth * width;
  struct Tile {
    int64_t row, rows;
    bool run;
  };
  thread_local std::vector<Tile> tiles;
  thread_local std::vector<size_t> block_tiles;  // tiles of row block j: [block_tiles[j], block_tiles[j + 1])
  tiles.clear();
  block_tiles.clear();
  for (int64_t m0 = 0; m0 < args.rows; m0 += kRowBlock) {
    const int64_t m1 = args.rows - m0 < kRowBlock ? args.rows : m0 + kRowBlock;
    block_tiles.push_back(tiles.size());
    auto continues = [&](int64_t m) { return args.a_rows[m] == args.a_rows[m - 1] + 1; };
    for (int64_t m = m0; m < m1;) {
      // [m, end): the run from m, or, if row m + 1 does not continue it, the
      // rows before the next run.
      int64_t end = m + 1;
      while (end < m1 && continues(end)) ++end;
      const bool run = end - m >= 2;
      if (!run)
        while (end < m1 && !(end + 1 < m1 && continues(end + 1))) ++end;
      const int64_t most = run ? R : MR;
      for (; m < end; m += std::min(most, end - m)) tiles.push_back({m, std::min(most, end - m), run});
    }
  }
  block_tiles.push_back(tiles.size());
  for (int64_t k0 = 0; k0 < args.depth; k0 += block) {
    const int64_t kc = args.depth - k0 < block ? args.depth - k0 : block;
    for (size_t j = 0; j + 1 < block_tiles.size(); ++j) {
      int64_t p = 0;
      auto panel_tiles = [&](auto np) {
        constexpr int kNP = decltype(np)::value;
        const T* b = args.b_panels + (p * args.depth + k0) * width;
        for (size_t t_index = block_tiles[j]; t_index < block_tiles[j + 1]; ++t_index) {
          const Tile& t = tiles[t_index];
          if (t.run) {
            if (t.rows == R)
              run_tile<T, VB, R, kNP>(args.a_rows[t.row], args.a_step, args.c_rows + t.row, p * width,
                                      b, b_panel_stride, k0, kc);
            else
              run_tail_tile<T, VB, R, kNP>(static_cast<int>(t.rows), args.a_rows[t.row], args.a_step,
                                           args.c_rows + t.row, p * width, b, b_panel_stride, k0, kc);
            continue;
          }
          for (int q = 0; q < kNP; ++q) {
            if (t.rows == MR)
              micro_tile<T, VB, MR>(args.a_rows + t.row, args.a_step, args.c_rows + t.row,
                                    (p + q) * width, b + q * b_panel_stride, k0, kc);
            else
              tail_tile<T, VB, MR>(static_cast<int>(t.rows), args.a_rows + t.row, args.a_step,
                                   args.c_rows + t.row, (p + q) * width, b + q * b_panel_stride, k0,
                                   kc);
          }
        }
      };
      for (; p + NP <= args.panels; p += NP) panel_tiles(std::integral_constant<int, NP>());
      for (; p < args.panels; ++p) panel_tiles(std::integral_constant<int, 1>());
    }
  }
}

// The register stages of the 16 x 16 transpose of transpose_to_rows (below):
// r[c] lane k (channel c of pixel k) is stored as dst[k * dst_ld + c], for
// the first `channels` lanes of the first `pixels` rows. Only shuffles: the
// 32-bit values move as bits (the bfloat16 pair packing relies on it).
// (GCC 12 reports a false maybe-uninitialized inside these intrinsics.)
#if defined(__x86_64__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#define ATROUS_TRANSPOSE_AVX512 __attribute__((target("avx512f,avx512vl,avx512dq,avx512bw")))
ATROUS_TRANSPOSE_AVX512 inline void store_transposed_avx512(const __m512 r[16], int pixels,
                                                            int channels, float* dst,
                                                            int64_t dst_ld) {
  const __mmask16 channel_mask = static_cast<__mmask16>((1u << channels) - 1);
  __m512 t[16];
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);      // a0 b0 a1 b1 per lane
    t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);  // a2 b2 a3 b3 per lane
  }
  __m512 u[16];
  for (int q = 0; q < 4; ++q) {
    const __m512 lo01 = t[4 * q], hi01 = t[4 * q + 1], lo23 = t[4 * q + 2], hi23 = t[4 * q + 3];
    u[4 * q + 0] = _mm512_shuffle_ps(lo01, lo23, 0x44);  // pixel 4L + 0, channels 4q..4q+3
    u[4 * q + 1] = _mm512_shuffle_ps(lo01, lo23, 0xEE);  // pixel 4L + 1
    u[4 * q + 2] = _mm512_shuffle_ps(hi01, hi23, 0x44);  // pixel 4L + 2
    u[4 * q + 3] = _mm512_shuffle_ps(hi01, hi23, 0xEE);  // pixel 4L + 3
  }
  for (int j = 0; j < 4; ++j) {
    // lanes (L0, L2) and (L1, L3) of channels 0-7 and 8-15
    const __m512 even_lo = _mm512_shuffle_f32x4(u[j], u[4 + j], 0x88);
    const __m512 odd_lo = _mm512_shuffle_f32x4(u[j], u[4 + j], 0xDD);
    const __m512 even_hi = _mm512_shuffle_f32x4(u[8 + j], u[12 + j], 0x88);
    const __m512 odd_hi = _mm512_shuffle_f32x4(u[8 + j], u[12 + j], 0xDD);
    const __m512 row[4] = {
        _mm512_shuffle_f32x4(even_lo, even_hi, 0x88),  // pixel j      (lane 0)
        _mm512_shuffle_f32x4(odd_lo, odd_hi, 0x88),    // pixel 4 + j  (lane 1)
        _mm512_shuffle_f32x4(even_lo, even_hi, 0xDD),  // pixel 8 + j  (lane 2)
        _mm512_shuffle_f32x4(odd_lo, odd_hi, 0xDD),    // pixel 12 + j (lane 3)
    };
    for (int L = 0; L < 4; ++L) {
      const int pixel = 4 * L + j;
      if (pixel < pixels) _mm512_mask_storeu_ps(dst + pixel * dst_ld, channel_mask, row[L]);
    }
  }
}

// Rows [m0, m1) of a row block (at most kRowBlock) as runs of consecutive
// pixels (a_rows[m + 1] == a_rows[m] + 1), cut into pieces of at most 16
// pixels, the vector width of the plane readers below: piece i starts at row
// m0 + pieces[i].row, whose pointer is the piece's first pixel. Returns the
// piece count.
struct RunPiece {
  int64_t row;
  int pixels;
};
template <typename A>
inline int64_t run_pieces(const A* const* a_rows, int64_t m0, int64_t m1, RunPiece* pieces) {
  int64_t count = 0;
  for (int64_t m = m0; m < m1;) {
    int64_t end = m + 1;
    while (end < m1 && a_rows[end] == a_rows[end - 1] + 1) ++end;
    for (int64_t i0 = m; i0 < end; i0 += 16)
      pieces[count++] = {i0 - m0, static_cast<int>(end - i0 < 16 ? end - i0 : 16)};
    m = end;
  }
  return count;
}

// 16 values of a 16-bit plane run (the first `pixels`; a masked load never
// faults) widened to float: vcvtph2ps for float16, a 16-bit shift for bfloat16.
template <typename A>
ATROUS_TRANSPOSE_AVX512 inline __m512 widen16_avx512(const A* src, __mmask16 pixel_mask) {
  const __m256i raw = _mm256_maskz_loadu_epi16(pixel_mask, src);
  if constexpr (std::is_same_v<A, c10::Half>)
    return _mm512_cvtph_ps(raw);
  else
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16));
}

// Widens 16-bit A rows [m0, m1) x k [k0, k0 + kc) read from planes (a_step
// != 1) into float rows kc long, widened[(m - m0) * kc + k] = A[m][k0 + k],
// 16 pixels of a run of consecutive pixels x 16 planes at a time: each plane's
// 16 values are widened into one vector, and the 16 vectors transposed into
// the pixels' rows in registers.
template <typename A>
ATROUS_TRANSPOSE_AVX512 void widen_plane_block_avx512(const GatherGemmArgs<float, A>& args,
                                                      int64_t m0, int64_t m1, int64_t k0,
                                                      int64_t kc, float* widened) {
  RunPiece pieces[kRowBlock];
  const int64_t count = run_pieces(args.a_rows, m0, m1, pieces);
  for (int64_t i = 0; i < count; ++i) {
    const int pixels = pieces[i].pixels;
    const __mmask16 pixel_mask = static_cast<__mmask16>((1u << pixels) - 1);
    const A* run = args.a_rows[m0 + pieces[i].row];
    for (int64_t kb = 0; kb < kc; kb += 16) {
      const int planes = static_cast<int>(kc - kb < 16 ? kc - kb : 16);
      __m512 v[16];
      for (int j = 0; j < 16; ++j)
        v[j] = j < planes ? widen16_avx512(run + (k0 + kb + j) * args.a_step, pixel_mask)
                          : _mm512_setzero_ps();
      store_transposed_avx512(v, pixels, planes, widened + pieces[i].row * kc + kb, kc);
    }
  }
}
#pragma GCC diagnostic pop
#endif

template <typename T, typename A, int VB, int MR>
inline void gather_gemm_impl(const GatherGemmArgs<T, A>& args) {
  const int64_t width = panel_width<T>();
  const int64_t block = depth_block(args.panels);
  // 16-bit A: the block's rows widened to T, kc apart, and pointers to them
  // (per thread; unused for float and double A). 16-bit planes (a_step != 1,
  // AVX-512 only) are widened through registers (widen_plane_block_avx512).
  constexpr bool kWiden = !std::is_same_v<A, T>;
  TORCH_INTERNAL_ASSERT(kWiden || args.a_step == 1, "gather_gemm_impl: A rows must be contiguous");
  const bool planes = kWiden && args.a_step != 1;
  constexpr std::integral_constant<int64_t, 1> a_step;
  thread_local std::vector<T> widened;
  thread_local std::vector<const T*> widened_rows;
  if constexpr (kWiden) {
    widened.resize(kRowBlock * block);
    widened_rows.resize(kRowBlock);
  }
  for (int64_t k0 = 0; k0 < args.depth; k0 += block) {
    const int64_t kc = args.depth - k0 < block ? args.depth - k0 : block;
    for (int64_t m0 = 0; m0 < args.rows; m0 += kRowBlock) {
      const int64_t m1 = args.rows - m0 < kRowBlock ? args.rows : m0 + kRowBlock;
      const int64_t full_end = m1 - (m1 - m0) % MR;
      // The block's A rows from row m0 on, as the micro-tiles index them
      // (rows[i] + k): the caller's rows, or the widened copies with k
      // counted from k0.
      const T* const* a_block;
      int64_t a_k0;
      if constexpr (kWiden) {
#if defined(__x86_64__)
        if (planes) widen_plane_block_avx512(args, m0, m1, k0, kc, widened.data());
#endif
        for (int64_t m = m0; m < m1; ++m) {
          T* dst = widened.data() + (m - m0) * kc;
          if (!planes) widen_to_float(args.a_rows[m] + k0, dst, kc);
          widened_rows[m - m0] = dst;
        }
        a_block = widened_rows.data();
        a_k0 = 0;
      } else {
        a_block = args.a_rows + m0;
        a_k0 = k0;
      }
      // 16-bit A: the next block's rows are prefetched a slice per panel, so
      // the widening of that block does not wait on memory.
      int64_t next_m0 = m0 + kRowBlock, next_k0 = k0;
      if (next_m0 >= args.rows) next_m0 = 0, next_k0 = k0 + block;
      const int64_t next_m1 = args.rows - next_m0 < kRowBlock ? args.rows : next_m0 + kRowBlock;
      const int64_t next_kc = args.depth - next_k0 < block ? args.depth - next_k0 : block;
      const bool prefetch = kWiden && !planes && next_k0 < args.depth;
      for (int64_t p = 0; p < args.panels; ++p) {
        if (prefetch) {
          const int64_t r0 = next_m0 + (next_m1 - next_m0) * p / args.panels;
          const int64_t r1 = next_m0 + (next_m1 - next_m0) * (p + 1) / args.panels;
          for (int64_t r = r0; r < r1; ++r) {
            const char* row = reinterpret_cast<const char*>(args.a_rows[r] + next_k0);
            const int64_t bytes = next_kc * static_cast<int64_t>(sizeof(A));
            for (int64_t off = 0; off < bytes; off += 64) __builtin_prefetch(row + off, 0, 2);
          }
        }
        const T* b = args.b_panels + (p * args.depth + k0) * width;
        const int64_t col = p * width;
        for (int64_t m = m0; m < full_end; m += MR)
          micro_tile<T, VB, MR>(a_block + (m - m0), a_step, args.c_rows + m, col, b, a_k0, kc);
        if (full_end < m1)
          tail_tile<T, VB, MR>(static_cast<int>(m1 - full_end), a_block + (full_end - m0), a_step,
                               args.c_rows + full_end, col, b, a_k0, kc);
      }
    }
  }
}

// Rank-1 updates for outer_gemm: an MR x NP-panel tile of C stays in
// registers while k runs over the pixels; per k it loads NP panel vectors of
// B_k, broadcasts MR values of A_k and issues MR * NP * (64 / VB) FMAs.
template <typename T, int VB, int MR, int NP>
inline void outer_tile(const T* const* a_cols, const T* const* b_rows, int64_t row0, int64_t col,
                       T* c, int64_t ldc, int64_t depth) {
  using V = typename Vec<T, VB>::type;
  constexpr int NV = NP * (kPanelBytes / VB);
  constexpr int lanes = VB / sizeof(T);
  V acc[MR][NV];
  for (int i = 0; i < MR; ++i)
    for (int v = 0; v < NV; ++v) std::memcpy(&acc[i][v], c + (row0 + i) * ldc + col + v * lanes, VB);
  for (int64_t k = 0; k < depth; ++k) {
    const T* a = a_cols[k] + row0;
    const T* b = b_rows[k] + col;
    V bv[NV];
    for (int v = 0; v < NV; ++v) std::memcpy(&bv[v], b + v * lanes, VB);
    for (int i = 0; i < MR; ++i) {
      const T ai = a[i];
      for (int v = 0; v < NV; ++v) acc[i][v] += ai * bv[v];
    }
  }
  for (int i = 0; i < MR; ++i)
    for (int v = 0; v < NV; ++v) std::memcpy(c + (row0 + i) * ldc + col + v * lanes, &acc[i][v], VB);
}

template <typename T, int VB, int MR, int NP>
inline void outer_tail_rows(int rows, const T* const* a_cols, const T* const* b_rows, int64_t row0,
                            int64_t col, T* c, int64_t ldc, int64_t depth) {
  if constexpr (MR > 1) {
    if (rows == MR - 1) {
      outer_tile<T, VB, MR - 1, NP>(a_cols, b_rows, row0, col, c, ldc, depth);
      return;
    }
    outer_tail_rows<T, VB, MR - 1, NP>(rows, a_cols, b_rows, row0, col, c, ldc, depth);
  }
}

template <typename T, int VB, int MR, int NP>
inline void outer_panels(const OuterGemmArgs<T>& args, int64_t col) {
  const int64_t ldc = args.panels * panel_width<T>();
  const int64_t full_rows = args.rows - args.rows % MR;
  for (int64_t m = 0; m < full_rows; m += MR)
    outer_tile<T, VB, MR, NP>(args.a_cols, args.b_rows, m, col, args.c, ldc, args.depth);
  if (full_rows < args.rows)
    outer_tail_rows<T, VB, MR, NP>(static_cast<int>(args.rows - full_rows), args.a_cols,
                                   args.b_rows, full_rows, col, args.c, ldc, args.depth);
}

template <typename T, int VB, int MR, int NP>
inline void outer_gemm_impl(const OuterGemmArgs<T>& args) {
  int64_t p = 0;
  for (; p + NP <= args.panels; p += NP) outer_panels<T, VB, MR, NP>(args, p * panel_width<T>());
  for (; p < args.panels; ++p) outer_panels<T, VB, MR, 1>(args, p * panel_width<T>());
}

// The machine's FMA peak, measured rather than read from a data sheet: 12
// independent accumulator chains (more than FMA latency x FMA ports on any
// current x86 core, so the chains never wait on each other) each take `iters`
// fused multiply-adds of a full register. Returns the multiply-adds done.
template <int VB>
inline int64_t peak_fma_impl(int64_t iters, float* sink) {
  using V = typename Vec<float, VB>::type;
  constexpr int kChains = 12;
  constexpr int lanes = VB / sizeof(float);
  const V zero = {};
  const V mul = zero + 0.999999f, add = zero + 1e-7f;  // scalars broadcast to every lane
  V acc[kChains];
  for (int c = 0; c < kChains; ++c) acc[c] = zero + static_cast<float>(c);
  for (int64_t i = 0; i < iters; ++i)
    for (int c = 0; c < kChains; ++c) acc[c] = acc[c] * mul + add;
  float total = 0.f;
  for (int c = 0; c < kChains; ++c)
    for (int l = 0; l < lanes; ++l) total += acc[c][l];
  *sink = total;  // keeps the loop alive
  return iters * kChains * lanes;
}

// Tile shapes, measured (bench/NOTES.md). gather_gemm: AVX2 has 16 ymm
// registers and a 64-byte panel is two of them, so 6 rows take 12
// accumulators; AVX-512 holds a panel in one zmm register and 6 rows measured
// faster than 8, 12 or 14 (the row pointers compete for registers); the SSE2
// baseline needs four xmm per panel, hence 3 rows. outer_gemm loads two more
// values per k (the A and B row pointers), so on AVX-512 it takes two panels
// per tile (12 zmm accumulators) to stay FMA-bound.
//
// The bf16 tile: 8 rows. vdpbf16ps has a longer latency than an FMA (6
// cycles on Zen 4), so 6 accumulator chains only just cover it; 8 measured
// 2-10% faster than 6 and level with 10 (bench/NOTES.md).
constexpr int kBf16TileRows = 8;

// One entry point per instruction set and argument type; `flatten` inlines
// the generic templates into it, compiled for that instruction set.
#define ATROUS_ISA_ENTRY_POINTS(isa, attributes, VB, MR, OUTER_MR, OUTER_NP)                     \
  attributes void run_##isa(const GatherGemmArgs<float>& a) {                                      \
    gather_gemm_impl<float, float, VB, MR>(a);                                                    \
  }                                                                                               \
  attributes void run_##isa(const GatherGemmArgs<double>& a) {                                     \
    gather_gemm_impl<double, double, VB, MR>(a);                                                  \
  }                                                                                               \
  attributes void run_##isa(const GatherGemmArgs<float, c10::Half>& a) {                           \
    gather_gemm_impl<float, c10::Half, VB, MR>(a);                                                \
  }                                                                                               \
  attributes void run_##isa(const GatherGemmArgs<float, c10::BFloat16>& a) {                       \
    gather_gemm_impl<float, c10::BFloat16, VB, MR>(a);                                            \
  }                                                                                               \
  attributes void run_##isa(const OuterGemmArgs<float>& a) {                                       \
    outer_gemm_impl<float, VB, OUTER_MR, OUTER_NP>(a);                                            \
  }                                                                                               \
  attributes void run_##isa(const OuterGemmArgs<double>& a) {                                      \
    outer_gemm_impl<double, VB, OUTER_MR, OUTER_NP>(a);                                           \
  }                                                                                               \
  attributes int64_t peak_fma_##isa(int64_t iters, float* sink) {                                 \
    return peak_fma_impl<VB>(iters, sink);                                                        \
  }

ATROUS_ISA_ENTRY_POINTS(baseline, __attribute__((flatten)), 16, 3, 3, 1)
#if defined(__x86_64__)
ATROUS_ISA_ENTRY_POINTS(avx2, __attribute__((target("avx2,fma"), flatten)), 32, 6, 6, 1)
ATROUS_ISA_ENTRY_POINTS(avx512,
                        __attribute__((target("avx512f,avx512vl,avx512dq,avx512bw,fma"), flatten)),
                        64, 6, 6, 2)
#endif
#undef ATROUS_ISA_ENTRY_POINTS

// A read along planes: AVX-512 only (see gather_gemm_reads_planes), with run
// tiles of 12 rows x 2 panels (24 of the 32 registers; 14 rows measured
// slower) and pointer tiles of 6 rows.
#if defined(__x86_64__)
#define ATROUS_AVX512_ATTRIBUTES __attribute__((target("avx512f,avx512vl,avx512dq,avx512bw,fma"), flatten))
ATROUS_AVX512_ATTRIBUTES void run_strided_avx512(const GatherGemmArgs<float>& a) {
  strided_gemm_impl<float, 64, 6, 12, 2>(a);
}
ATROUS_AVX512_ATTRIBUTES void run_strided_avx512(const GatherGemmArgs<double>& a) {
  strided_gemm_impl<double, 64, 6, 12, 2>(a);
}
#undef ATROUS_AVX512_ATTRIBUTES
#endif

// ------------------------------------------- bfloat16 pairs (AVX512_BF16) --
//
// The fp32 tile above with k taken two at a time: per pair it loads one
// 64-byte B row (16 columns x 2 k), broadcasts MR 32-bit A pairs and issues MR
// vdpbf16ps, each worth 32 multiply-adds where an fp32 FMA does 16. On cores
// that run a zmm vdpbf16ps at the rate of a zmm FMA (Zen 4, Sapphire Rapids)
// the same tile does twice the work per cycle, while A and B are half the
// bytes. The intrinsics need the target attribute on every function that
// inlines them, hence ATROUS_BF16_TARGET on the templates themselves.
#if defined(__x86_64__)
#define ATROUS_BF16_TARGET \
  __attribute__((target("avx512f,avx512vl,avx512dq,avx512bw,avx512bf16,fma")))

template <int MR>
ATROUS_BF16_TARGET inline void bf16_micro_tile(const c10::BFloat16* const* a_rows,
                                               float* const* c_rows, int64_t col,
                                               const c10::BFloat16* b, int64_t pair_begin,
                                               int64_t pair_count) {
  constexpr int64_t kPairRow = 2 * kBf16PanelColumns;  // bf16 values per B pair row
  __m512 acc[MR];
  for (int i = 0; i < MR; ++i) acc[i] = _mm512_loadu_ps(c_rows[i] + col);
  const c10::BFloat16* a[MR];
  for (int i = 0; i < MR; ++i) a[i] = a_rows[i] + 2 * pair_begin;
  for (int64_t q = 0; q < pair_count; ++q) {
    const __m512bh bv = (__m512bh)_mm512_loadu_si512(b + q * kPairRow);
    for (int i = 0; i < MR; ++i) {
      int32_t pair;
      std::memcpy(&pair, a[i] + 2 * q, sizeof(pair));
      // The broadcast pair as the last operand folds into the instruction
      // ({1to16} embedded broadcast); each product is the same either way.
      acc[i] = _mm512_dpbf16_ps(acc[i], bv, (__m512bh)_mm512_set1_epi32(pair));
    }
  }
  for (int i = 0; i < MR; ++i) _mm512_storeu_ps(c_rows[i] + col, acc[i]);
}

template <int MR>
ATROUS_BF16_TARGET inline void bf16_tail_tile(int rows, const c10::BFloat16* const* a_rows,
                                              float* const* c_rows, int64_t col,
                                              const c10::BFloat16* b, int64_t pair_begin,
                                              int64_t pair_count) {
  if constexpr (MR > 1) {
    if (rows == MR - 1) {
      bf16_micro_tile<MR - 1>(a_rows, c_rows, col, b, pair_begin, pair_count);
      return;
    }
    bf16_tail_tile<MR - 1>(rows, a_rows, c_rows, col, b, pair_begin, pair_count);
  }
}

// Packs the pairs [q0, q0 + qc) of A rows [m0, m1), read from planes
// (GatherGemmBf16Args::a_step != 1), into pair rows 2 * qc values long:
//   packed[(m - m0) * 2 * qc + 2 * q + t] = A[m][2 * (q0 + q) + t].
// Rows come in runs of consecutive pixels (a_rows[m + 1] == a_rows[m] + 1),
// taken 16 pixels x 16 pairs at a time: the 16 pixels of planes k and k + 1
// load as two 256-bit vectors and zero-extend into one vector of 32-bit pairs
// (k | k + 1 << 16), one vector per pair, which store_transposed_avx512 turns
// into the 16 pixels' rows. Planes past a_channels (an odd group's last pair)
// read as zeros. Partial blocks load with a pixel mask, which never faults.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"  // GCC 12, in the zero-extensions
ATROUS_BF16_TARGET void pack_plane_pairs(const GatherGemmBf16Args& args, int64_t m0, int64_t m1,
                                         int64_t q0, int64_t qc, c10::BFloat16* packed) {
  RunPiece pieces[kRowBlock];
  const int64_t count = run_pieces(args.a_rows, m0, m1, pieces);
  for (int64_t i = 0; i < count; ++i) {
    const int pixels = pieces[i].pixels;
    const __mmask16 pixel_mask = static_cast<__mmask16>((1u << pixels) - 1);
    const c10::BFloat16* run = args.a_rows[m0 + pieces[i].row];
    for (int64_t qb = 0; qb < qc; qb += 16) {
      const int pairs = static_cast<int>(qc - qb < 16 ? qc - qb : 16);
      __m512 v[16];
      for (int j = 0; j < 16; ++j) {
        const int64_t k = 2 * (q0 + qb + j);
        __m256i lo = _mm256_setzero_si256(), hi = _mm256_setzero_si256();
        if (j < pairs && k < args.a_channels)
          lo = _mm256_maskz_loadu_epi16(pixel_mask, run + k * args.a_step);
        if (j < pairs && k + 1 < args.a_channels)
          hi = _mm256_maskz_loadu_epi16(pixel_mask, run + (k + 1) * args.a_step);
        v[j] = _mm512_castsi512_ps(_mm512_or_si512(
            _mm512_cvtepu16_epi32(lo), _mm512_slli_epi32(_mm512_cvtepu16_epi32(hi), 16)));
      }
      store_transposed_avx512(v, pixels, pairs,
                              reinterpret_cast<float*>(packed + pieces[i].row * 2 * qc + 2 * qb), qc);
    }
  }
}
#pragma GCC diagnostic pop

// Same loop nest as gather_gemm_impl; the depth block counts pairs, so a
// block of B has the same bytes. Plane operands are packed a block at a time
// (pack_plane_pairs) into per-thread scratch that the micro-tiles read.
template <int MR>
ATROUS_BF16_TARGET void gather_gemm_bf16_impl(const GatherGemmBf16Args& args) {
  const int64_t pairs = args.depth / 2;
  const int64_t block = depth_block(args.panels);
  const bool planes = args.a_step != 1;
  thread_local std::vector<c10::BFloat16> packed;
  thread_local std::vector<const c10::BFloat16*> packed_rows;
  if (planes) {
    packed.resize(kRowBlock * 2 * block);
    packed_rows.resize(kRowBlock);
  }
  for (int64_t q0 = 0; q0 < pairs; q0 += block) {
    const int64_t qc = pairs - q0 < block ? pairs - q0 : block;
    for (int64_t m0 = 0; m0 < args.rows; m0 += kRowBlock) {
      const int64_t m1 = args.rows - m0 < kRowBlock ? args.rows : m0 + kRowBlock;
      const int64_t full_end = m1 - (m1 - m0) % MR;
      // The block's A rows from row m0 on, as the micro-tiles index them
      // (rows[i] + 2 * (q - pair0)): the caller's pair rows, or the packed ones.
      const c10::BFloat16* const* a_block = args.a_rows + m0;
      int64_t pair0 = q0;
      if (planes) {
        pack_plane_pairs(args, m0, m1, q0, qc, packed.data());
        for (int64_t m = m0; m < m1; ++m) packed_rows[m - m0] = packed.data() + (m - m0) * 2 * qc;
        a_block = packed_rows.data();
        pair0 = 0;
      }
      for (int64_t p = 0; p < args.panels; ++p) {
        const c10::BFloat16* b = args.b_panels + (p * pairs + q0) * 2 * kBf16PanelColumns;
        const int64_t col = p * kBf16PanelColumns;
        for (int64_t m = m0; m < full_end; m += MR)
          bf16_micro_tile<MR>(a_block + (m - m0), args.c_rows + m, col, b, pair0, qc);
        if (full_end < m1)
          bf16_tail_tile<MR>(static_cast<int>(m1 - full_end), a_block + (full_end - m0),
                             args.c_rows + full_end, col, b, pair0, qc);
      }
    }
  }
}

ATROUS_BF16_TARGET void run_avx512_bf16(const GatherGemmBf16Args& a) {
  gather_gemm_bf16_impl<kBf16TileRows>(a);
}

// outer_tile with pixels taken two at a time: per pair it loads NP 64-byte B
// rows (16 columns x 2 pixels each), broadcasts MR 32-bit A pairs and issues
// MR * NP vdpbf16ps, each worth 32 multiply-adds.
template <int MR, int NP>
ATROUS_BF16_TARGET inline void bf16_outer_tile(const OuterGemmBf16Args& args, int64_t row0,
                                               int64_t col) {
  const int64_t ldc = args.panels * kBf16PanelColumns;
  float* c = args.c + row0 * ldc + col;
  __m512 acc[MR][NP];
  for (int i = 0; i < MR; ++i)
    for (int v = 0; v < NP; ++v) acc[i][v] = _mm512_loadu_ps(c + i * ldc + v * kBf16PanelColumns);
  for (int64_t q = 0; q < args.pairs; ++q) {
    const c10::BFloat16* a = args.a_cols[q] + 2 * row0;
    const c10::BFloat16* b = args.b_rows[q] + 2 * col;
    __m512bh bv[NP];
    for (int v = 0; v < NP; ++v)
      bv[v] = (__m512bh)_mm512_loadu_si512(b + v * 2 * kBf16PanelColumns);
    for (int i = 0; i < MR; ++i) {
      int32_t pair;
      std::memcpy(&pair, a + 2 * i, sizeof(pair));
      const __m512bh av = (__m512bh)_mm512_set1_epi32(pair);
      for (int v = 0; v < NP; ++v) acc[i][v] = _mm512_dpbf16_ps(acc[i][v], bv[v], av);
    }
  }
  for (int i = 0; i < MR; ++i)
    for (int v = 0; v < NP; ++v) _mm512_storeu_ps(c + i * ldc + v * kBf16PanelColumns, acc[i][v]);
}

template <int MR, int NP>
ATROUS_BF16_TARGET inline void bf16_outer_tail_rows(int rows, const OuterGemmBf16Args& args,
                                                    int64_t row0, int64_t col) {
  if constexpr (MR > 1) {
    if (rows == MR - 1) {
      bf16_outer_tile<MR - 1, NP>(args, row0, col);
      return;
    }
    bf16_outer_tail_rows<MR - 1, NP>(rows, args, row0, col);
  }
}

template <int MR, int NP>
ATROUS_BF16_TARGET inline void bf16_outer_panels(const OuterGemmBf16Args& args, int64_t col) {
  const int64_t full_rows = args.rows - args.rows % MR;
  for (int64_t m = 0; m < full_rows; m += MR) bf16_outer_tile<MR, NP>(args, m, col);
  if (full_rows < args.rows)
    bf16_outer_tail_rows<MR, NP>(static_cast<int>(args.rows - full_rows), args, full_rows, col);
}

// The fp32 outer tile's shape (6 rows x 2 panels, 12 accumulators), which
// also covers vdpbf16ps's 6-cycle latency at one per cycle.
ATROUS_BF16_TARGET void run_avx512_bf16(const OuterGemmBf16Args& a) {
  constexpr int MR = 6, NP = 2;
  int64_t p = 0;
  for (; p + NP <= a.panels; p += NP) bf16_outer_panels<MR, NP>(a, p * kBf16PanelColumns);
  for (; p < a.panels; ++p) bf16_outer_panels<MR, 1>(a, p * kBf16PanelColumns);
}
#undef ATROUS_BF16_TARGET
#endif

#if defined(__x86_64__)
__attribute__((target("avx2,f16c"))) void widen_half_f16c(const c10::Half* src, float* dst,
                                                          int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i))));
  for (; i < n; ++i) dst[i] = static_cast<float>(src[i]);
}

__attribute__((target("avx2,f16c"))) void narrow_half_f16c(const float* src, c10::Half* dst,
                                                           int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i),
                     _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT));
  for (; i < n; ++i) dst[i] = static_cast<c10::Half>(src[i]);
}

// row_fma: 16 lanes per step on AVX-512, 8 on AVX2 + F16C. A value is loaded
// widened to float: float16 by vcvtph2ps, bfloat16 by a 16-bit shift (its
// bits are the high half of the float's).
// GCC 12 reports the undefined pass-through operand inside these AVX-512
// conversion intrinsics as maybe-uninitialized (a false positive).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#define ATROUS_ROW_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,fma")))
ATROUS_ROW_AVX512 inline __m512 load16_avx512(const float* p) { return _mm512_loadu_ps(p); }
ATROUS_ROW_AVX512 inline __m512 load16_avx512(const c10::Half* p) {
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}
ATROUS_ROW_AVX512 inline __m512 load16_avx512(const c10::BFloat16* p) {
  const __m512i wide = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  return _mm512_castsi512_ps(_mm512_slli_epi32(wide, 16));
}
template <typename A, typename B>
ATROUS_ROW_AVX512 void row_fma_avx512(float* dst, const A* a, const B* b, int64_t n) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16)
    _mm512_storeu_ps(dst + i, _mm512_fmadd_ps(load16_avx512(a + i), load16_avx512(b + i),
                                              _mm512_loadu_ps(dst + i)));
  for (; i < n; ++i) dst[i] += static_cast<float>(a[i]) * static_cast<float>(b[i]);
}
// rect_axpy's row tails take an 8-wide step and then scalars: a masked store
// followed by an overlapping load of the next tap's rectangle cannot be
// store-forwarded, and measured slower (bench/NOTES.md). rect_dot only loads,
// so its tails are masked loads.
ATROUS_ROW_AVX512 void rect_axpy_avx512(float* dst, int64_t dst_ld, const float* src,
                                        int64_t src_ld, float a, int64_t rows, int64_t cols) {
  const __m512 av = _mm512_set1_ps(a);
  for (int64_t r = 0; r < rows; ++r) {
    float* d = dst + r * dst_ld;
    const float* x = src + r * src_ld;
    int64_t i = 0;
    for (; i + 16 <= cols; i += 16)
      _mm512_storeu_ps(d + i, _mm512_fmadd_ps(av, _mm512_loadu_ps(x + i), _mm512_loadu_ps(d + i)));
    if (i + 8 <= cols) {
      _mm256_storeu_ps(d + i, _mm256_fmadd_ps(_mm512_castps512_ps256(av), _mm256_loadu_ps(x + i),
                                              _mm256_loadu_ps(d + i)));
      i += 8;
    }
    for (; i < cols; ++i) d[i] += a * x[i];
  }
}
ATROUS_ROW_AVX512 float rect_dot_avx512(const float* a, int64_t a_ld, const float* b, int64_t b_ld,
                                        int64_t rows, int64_t cols) {
  const __mmask16 tail = static_cast<__mmask16>((1u << (cols % 16)) - 1);
  __m512 acc = _mm512_setzero_ps();
  for (int64_t r = 0; r < rows; ++r) {
    const float* x = a + r * a_ld;
    const float* y = b + r * b_ld;
    int64_t i = 0;
    for (; i + 16 <= cols; i += 16) acc = _mm512_fmadd_ps(_mm512_loadu_ps(x + i), _mm512_loadu_ps(y + i), acc);
    if (tail)
      acc = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(tail, x + i), _mm512_maskz_loadu_ps(tail, y + i), acc);
  }
  float lanes[16];
  _mm512_storeu_ps(lanes, acc);
  float sum = 0.f;
  for (float lane : lanes) sum += lane;
  return sum;
}
#undef ATROUS_ROW_AVX512
#pragma GCC diagnostic pop

// ------------------------------------------------ plane runs -> pixel rows --
//
// dst[k * dst_ld + c] = src[c * src_ld + k]: a run of `pixels` consecutive
// values in each of `channels` planes becomes `pixels` rows of channels
// (grad_weight's chunk copies of NCHW operands). AVX-512 moves 16 channels x
// 16 pixels per block through registers in three shuffle stages:
//   1. unpacklo/hi_ps of channel pairs (2i, 2i + 1): within each 128-bit lane
//      (pixels 4L..4L+3), pairs of channels for two pixels;
//   2. shuffle_ps of two such results: a lane holds one pixel's 4 channels,
//      u[4q + j] lane L = pixel 4L + j, channels 4q..4q+3;
//   3. two shuffle_f32x4 rounds gather lane L of u[j], u[4 + j], u[8 + j],
//      u[12 + j] into the row of pixel 4L + j.
// Partial blocks load with a pixel mask (masked-off lanes never fault), zero
// the missing channels and store the first `channels` lanes of the first
// `pixels` rows.
// (GCC 12's false maybe-uninitialized report inside the masked-load intrinsics, as above.)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
ATROUS_TRANSPOSE_AVX512 inline void transpose_block_avx512(const float* src, int64_t src_ld,
                                                           int pixels, int channels, float* dst,
                                                           int64_t dst_ld) {
  const __mmask16 pixel_mask = static_cast<__mmask16>((1u << pixels) - 1);
  __m512 r[16];
  for (int c = 0; c < 16; ++c)
    r[c] = c < channels ? _mm512_maskz_loadu_ps(pixel_mask, src + c * src_ld) : _mm512_setzero_ps();
  store_transposed_avx512(r, pixels, channels, dst, dst_ld);
}
ATROUS_TRANSPOSE_AVX512 void transpose_to_rows_avx512(const float* src, int64_t src_ld,
                                                      int64_t pixels, int64_t channels, float* dst,
                                                      int64_t dst_ld) {
  for (int64_t c0 = 0; c0 < channels; c0 += 16)
    for (int64_t k0 = 0; k0 < pixels; k0 += 16)
      transpose_block_avx512(src + c0 * src_ld + k0, src_ld,
                             static_cast<int>(std::min<int64_t>(16, pixels - k0)),
                             static_cast<int>(std::min<int64_t>(16, channels - c0)),
                             dst + k0 * dst_ld + c0, dst_ld);
}
#undef ATROUS_TRANSPOSE_AVX512
#pragma GCC diagnostic pop

// The AVX2 form: 8 channels x 8 pixels per block, the same first two stages
// within 128-bit lanes, then permute2f128 joins lane L of u[j] (channels 0-3)
// and of u[4 + j] (channels 4-7) into the row of pixel 4L + j. Partial blocks
// are copied value by value.
#define ATROUS_TRANSPOSE_AVX2 __attribute__((target("avx2")))
ATROUS_TRANSPOSE_AVX2 inline void transpose_block_avx2(const float* src, int64_t src_ld, float* dst,
                                                       int64_t dst_ld) {
  __m256 r[8], t[8], u[8];
  for (int c = 0; c < 8; ++c) r[c] = _mm256_loadu_ps(src + c * src_ld);
  for (int i = 0; i < 4; ++i) {
    t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  for (int q = 0; q < 2; ++q) {
    u[4 * q + 0] = _mm256_shuffle_ps(t[4 * q], t[4 * q + 2], 0x44);
    u[4 * q + 1] = _mm256_shuffle_ps(t[4 * q], t[4 * q + 2], 0xEE);
    u[4 * q + 2] = _mm256_shuffle_ps(t[4 * q + 1], t[4 * q + 3], 0x44);
    u[4 * q + 3] = _mm256_shuffle_ps(t[4 * q + 1], t[4 * q + 3], 0xEE);
  }
  for (int j = 0; j < 4; ++j) {
    _mm256_storeu_ps(dst + j * dst_ld, _mm256_permute2f128_ps(u[j], u[4 + j], 0x20));
    _mm256_storeu_ps(dst + (4 + j) * dst_ld, _mm256_permute2f128_ps(u[j], u[4 + j], 0x31));
  }
}
ATROUS_TRANSPOSE_AVX2 void transpose_to_rows_avx2(const float* src, int64_t src_ld, int64_t pixels,
                                                  int64_t channels, float* dst, int64_t dst_ld) {
  for (int64_t c0 = 0; c0 < channels; c0 += 8)
    for (int64_t k0 = 0; k0 < pixels; k0 += 8) {
      if (c0 + 8 <= channels && k0 + 8 <= pixels) {
        transpose_block_avx2(src + c0 * src_ld + k0, src_ld, dst + k0 * dst_ld + c0, dst_ld);
        continue;
      }
      for (int64_t k = k0; k < std::min<int64_t>(pixels, k0 + 8); ++k)
        for (int64_t c = c0; c < std::min<int64_t>(channels, c0 + 8); ++c)
          dst[k * dst_ld + c] = src[c * src_ld + k];
    }
}
#undef ATROUS_TRANSPOSE_AVX2

#define ATROUS_ROW_AVX2 __attribute__((target("avx2,f16c,fma")))
ATROUS_ROW_AVX2 inline __m256 load8_avx2(const float* p) { return _mm256_loadu_ps(p); }
ATROUS_ROW_AVX2 inline __m256 load8_avx2(const c10::Half* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}
ATROUS_ROW_AVX2 inline __m256 load8_avx2(const c10::BFloat16* p) {
  const __m256i wide = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  return _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16));
}
template <typename A, typename B>
ATROUS_ROW_AVX2 void row_fma_avx2(float* dst, const A* a, const B* b, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(dst + i, _mm256_fmadd_ps(load8_avx2(a + i), load8_avx2(b + i),
                                              _mm256_loadu_ps(dst + i)));
  for (; i < n; ++i) dst[i] += static_cast<float>(a[i]) * static_cast<float>(b[i]);
}
ATROUS_ROW_AVX2 void rect_axpy_avx2(float* dst, int64_t dst_ld, const float* src, int64_t src_ld,
                                    float a, int64_t rows, int64_t cols) {
  const __m256 av = _mm256_set1_ps(a);
  for (int64_t r = 0; r < rows; ++r) {
    float* d = dst + r * dst_ld;
    const float* x = src + r * src_ld;
    int64_t i = 0;
    for (; i + 8 <= cols; i += 8)
      _mm256_storeu_ps(d + i, _mm256_fmadd_ps(av, _mm256_loadu_ps(x + i), _mm256_loadu_ps(d + i)));
    for (; i < cols; ++i) d[i] += a * x[i];
  }
}
ATROUS_ROW_AVX2 float rect_dot_avx2(const float* a, int64_t a_ld, const float* b, int64_t b_ld,
                                    int64_t rows, int64_t cols) {
  __m256 acc = _mm256_setzero_ps();
  float tail_sum = 0.f;
  for (int64_t r = 0; r < rows; ++r) {
    const float* x = a + r * a_ld;
    const float* y = b + r * b_ld;
    int64_t i = 0;
    for (; i + 8 <= cols; i += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i), acc);
    for (; i < cols; ++i) tail_sum += x[i] * y[i];
  }
  float lanes[8];
  _mm256_storeu_ps(lanes, acc);
  float sum = 0.f;
  for (float lane : lanes) sum += lane;
  return sum + tail_sum;
}
#undef ATROUS_ROW_AVX2

bool cpu_has_f16c() {
  static const bool has = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c");
  }();
  return has;
}
#endif

enum class Isa { kBaseline = 0, kAvx2 = 1, kAvx512 = 2, kAvx512Bf16 = 3 };

Isa best_supported_isa() {
#if defined(__x86_64__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512bw"))
    return __builtin_cpu_supports("avx512bf16") ? Isa::kAvx512Bf16 : Isa::kAvx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Isa::kAvx2;
#endif
  return Isa::kBaseline;
}

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::kAvx512Bf16:
      return "avx512_bf16";
    case Isa::kAvx512:
      return "avx512";
    case Isa::kAvx2:
      return "avx2";
    default:
      return "baseline";
  }
}

Isa parse_isa(const std::string& name) {
  if (name == "avx512_bf16") return Isa::kAvx512Bf16;
  if (name == "avx512") return Isa::kAvx512;
  if (name == "avx2") return Isa::kAvx2;
  if (name == "baseline") return Isa::kBaseline;
  TORCH_CHECK(false, "atrous: expected a CPU instruction set of 'avx512_bf16', 'avx512', 'avx2' or 'baseline', got '",
              name, "'");
}

Isa initial_isa() {
  const Isa best = best_supported_isa();
  const char* env = std::getenv("ATROUS_CPU_ISA");
  if (env == nullptr || env[0] == '\0') return best;
  const Isa wanted = parse_isa(env);
  return static_cast<int>(wanted) < static_cast<int>(best) ? wanted : best;
}

Isa& active_isa() {
  static Isa isa = initial_isa();
  return isa;
}

int64_t peak_fma(int64_t iters, float* sink) {
  switch (active_isa()) {
#if defined(__x86_64__)
    case Isa::kAvx512Bf16:  // the fp32 peak, the reference the bench quotes
    case Isa::kAvx512:
      return peak_fma_avx512(iters, sink);
    case Isa::kAvx2:
      return peak_fma_avx2(iters, sink);
#endif
    default:
      return peak_fma_baseline(iters, sink);
  }
}

template <typename Args>
void run(const Args& args) {
  switch (active_isa()) {
#if defined(__x86_64__)
    case Isa::kAvx512Bf16:  // float and double GEMMs have no bf16 variant
    case Isa::kAvx512:
      return run_avx512(args);
    case Isa::kAvx2:
      return run_avx2(args);
#endif
    default:
      return run_baseline(args);
  }
}

// A read along planes (a_step != 1): strided_gemm_impl, in functions of its
// own so the NHWC entry points compile exactly as they did without it.
template <typename T>
void run_strided(const GatherGemmArgs<T>& args) {
  TORCH_INTERNAL_ASSERT(gather_gemm_reads_planes(), "gather_gemm: A with a step of ", args.a_step,
                        " on an instruction set without run tiles");
#if defined(__x86_64__)
  run_strided_avx512(args);
#endif
}

}  // namespace

bool gather_gemm_reads_planes() {
  const Isa isa = active_isa();
  return isa == Isa::kAvx512 || isa == Isa::kAvx512Bf16;
}

void gather_gemm(const GatherGemmArgs<float>& args) {
  if (args.rows <= 0 || args.depth <= 0 || args.panels <= 0) return;
  args.a_step == 1 ? run(args) : run_strided(args);
}
void gather_gemm(const GatherGemmArgs<double>& args) {
  if (args.rows <= 0 || args.depth <= 0 || args.panels <= 0) return;
  args.a_step == 1 ? run(args) : run_strided(args);
}
void gather_gemm(const GatherGemmArgs<float, c10::Half>& args) {
  TORCH_INTERNAL_ASSERT(args.a_step == 1 || gather_gemm_reads_planes(), "gather_gemm: 16-bit A with a step of ",
                        args.a_step, " on ", cpu_isa());
  if (args.rows > 0 && args.depth > 0 && args.panels > 0) run(args);
}
void gather_gemm(const GatherGemmArgs<float, c10::BFloat16>& args) {
  TORCH_INTERNAL_ASSERT(args.a_step == 1 || gather_gemm_reads_planes(), "gather_gemm: 16-bit A with a step of ",
                        args.a_step, " on ", cpu_isa());
  if (args.rows > 0 && args.depth > 0 && args.panels > 0) run(args);
}
void widen_to_float(const c10::Half* src, float* dst, int64_t n) {
#if defined(__x86_64__)
  if (cpu_has_f16c()) return widen_half_f16c(src, dst, n);
#endif
  for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<float>(src[i]);
}

void widen_to_float(const c10::BFloat16* src, float* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<float>(src[i]);
}

void narrow_from_float(const float* src, c10::Half* dst, int64_t n) {
#if defined(__x86_64__)
  if (cpu_has_f16c()) return narrow_half_f16c(src, dst, n);
#endif
  for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<c10::Half>(src[i]);
}

void narrow_from_float(const float* src, c10::BFloat16* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<c10::BFloat16>(src[i]);
}

template <typename A, typename B>
void row_fma_dispatch(float* dst, const A* a, const B* b, int64_t n) {
  switch (active_isa()) {
#if defined(__x86_64__)
    case Isa::kAvx512Bf16:
    case Isa::kAvx512:
      return row_fma_avx512(dst, a, b, n);
    case Isa::kAvx2:  // AVX2 CPUs all have F16C
      if (cpu_has_f16c()) return row_fma_avx2(dst, a, b, n);
      break;
#endif
    default:
      break;
  }
  for (int64_t i = 0; i < n; ++i) dst[i] += static_cast<float>(a[i]) * static_cast<float>(b[i]);
}

void row_fma(float* dst, const float* a, const float* b, int64_t n) { row_fma_dispatch(dst, a, b, n); }
void row_fma(float* dst, const c10::Half* a, const float* b, int64_t n) { row_fma_dispatch(dst, a, b, n); }
void row_fma(float* dst, const c10::BFloat16* a, const float* b, int64_t n) { row_fma_dispatch(dst, a, b, n); }
void row_fma(float* dst, const c10::Half* a, const c10::Half* b, int64_t n) { row_fma_dispatch(dst, a, b, n); }
void row_fma(float* dst, const c10::BFloat16* a, const c10::BFloat16* b, int64_t n) {
  row_fma_dispatch(dst, a, b, n);
}

void rect_axpy(float* dst, int64_t dst_ld, const float* src, int64_t src_ld, float a, int64_t rows,
               int64_t cols) {
  switch (active_isa()) {
#if defined(__x86_64__)
    case Isa::kAvx512Bf16:
    case Isa::kAvx512:
      return rect_axpy_avx512(dst, dst_ld, src, src_ld, a, rows, cols);
    case Isa::kAvx2:
      return rect_axpy_avx2(dst, dst_ld, src, src_ld, a, rows, cols);
#endif
    default:
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t i = 0; i < cols; ++i) dst[r * dst_ld + i] += a * src[r * src_ld + i];
  }
}

float rect_dot(const float* a, int64_t a_ld, const float* b, int64_t b_ld, int64_t rows,
               int64_t cols) {
  switch (active_isa()) {
#if defined(__x86_64__)
    case Isa::kAvx512Bf16:
    case Isa::kAvx512:
      return rect_dot_avx512(a, a_ld, b, b_ld, rows, cols);
    case Isa::kAvx2:
      return rect_dot_avx2(a, a_ld, b, b_ld, rows, cols);
#endif
    default: {
      float sum = 0.f;
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t i = 0; i < cols; ++i) sum += a[r * a_ld + i] * b[r * b_ld + i];
      return sum;
    }
  }
}

void transpose_to_rows(const float* src, int64_t src_ld, int64_t pixels, int64_t channels,
                       float* dst, int64_t dst_ld) {
  switch (active_isa()) {
#if defined(__x86_64__)
    case Isa::kAvx512Bf16:
    case Isa::kAvx512:
      return transpose_to_rows_avx512(src, src_ld, pixels, channels, dst, dst_ld);
    case Isa::kAvx2:
      return transpose_to_rows_avx2(src, src_ld, pixels, channels, dst, dst_ld);
#endif
    default:
      for (int64_t k = 0; k < pixels; ++k)
        for (int64_t c = 0; c < channels; ++c) dst[k * dst_ld + c] = src[c * src_ld + k];
  }
}

bool bf16_dot_active() { return active_isa() == Isa::kAvx512Bf16; }

void gather_gemm(const GatherGemmBf16Args& args) {
  TORCH_INTERNAL_ASSERT(bf16_dot_active(), "gather_gemm(bf16) called without AVX512_BF16");
  TORCH_INTERNAL_ASSERT(args.depth % 2 == 0, "gather_gemm(bf16): odd depth ", args.depth);
  TORCH_INTERNAL_ASSERT(args.a_step == 1 || (args.a_channels >= 0 && args.a_channels <= args.depth),
                        "gather_gemm(bf16): planes hold ", args.a_channels, " of ", args.depth, " k");
  if (args.rows <= 0 || args.depth <= 0 || args.panels <= 0) return;
#if defined(__x86_64__)
  run_avx512_bf16(args);
#endif
}

void outer_gemm(const OuterGemmBf16Args& args) {
  TORCH_INTERNAL_ASSERT(bf16_dot_active(), "outer_gemm(bf16) called without AVX512_BF16");
  if (args.rows <= 0 || args.pairs <= 0 || args.panels <= 0) return;
#if defined(__x86_64__)
  run_avx512_bf16(args);
#endif
}

void outer_gemm(const OuterGemmArgs<float>& args) {
  if (args.rows > 0 && args.depth > 0 && args.panels > 0) run(args);
}
void outer_gemm(const OuterGemmArgs<double>& args) {
  if (args.rows > 0 && args.depth > 0 && args.panels > 0) run(args);
}

std::string cpu_isa() { return isa_name(active_isa()); }

double cpu_peak_gflops(int64_t iters_per_thread) {
  TORCH_CHECK(iters_per_thread > 0, "cpu_peak_gflops: expected iters_per_thread > 0, got ",
              iters_per_thread);
  const int threads = at::get_num_threads();
  std::vector<int64_t> macs(threads, 0);
  std::vector<float> sinks(threads, 0.f);
  const auto start = std::chrono::steady_clock::now();
  // One chunk per thread: the grain of 1 over `threads` items gives each
  // thread exactly one probe.
  at::parallel_for(0, threads, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) macs[t] = peak_fma(iters_per_thread, &sinks[t]);
  });
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  int64_t total = 0;
  for (int64_t m : macs) total += m;
  return 2.0 * static_cast<double>(total) / seconds / 1e9;
}

std::string cpu_isas_available() {
  std::string out;
  for (int i = static_cast<int>(best_supported_isa()); i >= 0; --i) {
    if (!out.empty()) out += ",";
    out += isa_name(static_cast<Isa>(i));
  }
  return out;
}

void set_cpu_isa(const std::string& name) {
  const Isa wanted = parse_isa(name);
  const Isa best = best_supported_isa();
  TORCH_CHECK(static_cast<int>(wanted) <= static_cast<int>(best),
              "atrous: CPU instruction set '", name, "' is not supported here; available: ",
              cpu_isas_available());
  active_isa() = wanted;
}

}  // namespace cpu
}  // namespace atrous
