// Kernel<Host, op::Linear>: y (=|+=) x·wᵀ (+ bias), with f32 or BF16 weights.
//
// One row (the AR decode step) is a GEMV bound by memory bandwidth: it is split over output
// features across OpenMP threads so that each thread streams its own slice of the weights (Eigen
// does not thread GEMVs). Two to 63 rows (sub-block and block forwards) go through a
// register-blocked kernel that streams the weights once per pass of at most 8 rows, compiled for
// AVX-512 and for AVX2 and chosen at run time (a CPU with neither: one pass up to 16 rows, Eigen's
// blocked product on per-thread slices above). Many rows (prefill, training) go to OpenBLAS's
// SGEMM when blockdiff was configured with it (BLOCKDIFF_HAVE_CBLAS), which is faster than Eigen's
// blocked product on AVX-512 machines; else to the same slicing.
#pragma once

#if defined(BLOCKDIFF_HAVE_CBLAS)
#include <cblas.h>
#endif
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <cpuid.h>
#endif

#include <Eigen/Core>
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "blockdiff/backend/host/vectors.hpp"
#include "blockdiff/backend/kernel.hpp"
#include "blockdiff/core/dispatch.hpp"
#include "blockdiff/core/dtype.hpp"
#include "blockdiff/core/threads.hpp"

namespace blockdiff {

namespace detail {
// L horizontal sums at once for L vectors of L lanes, for the few-row kernel's epilogue:
// out[j] = Σ lanes of v[j]. Each level takes vectors in pairs, folds each one's partial sums onto
// half as many lanes and interleaves the pair into one vector (two shuffles and an add), so 16
// vectors cost 15 adds and 30 shuffles instead of about 8 operations each. Folding leaves vector
// j's sum in lane bitrev(j); reading the inputs in bit-reversed order puts it in lane j.
//
// One level: each 2·Half-lane group of a and of b folds onto Half lanes, a's groups and b's
// alternating. The lane lists are literal: nvcc's front end, which also reads this header,
// cannot expand a parameter pack inside a shuffle.
template <int Half>
[[gnu::always_inline]] inline void fold_pair(const Vec16& a, const Vec16& b, Vec16& out) {
  if constexpr (Half == 8) {
    out = __builtin_shufflevector(a, b, 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23) +
          __builtin_shufflevector(a, b, 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31);
  } else if constexpr (Half == 4) {
    out = __builtin_shufflevector(a, b, 0, 1, 2, 3, 16, 17, 18, 19, 8, 9, 10, 11, 24, 25, 26, 27) +
          __builtin_shufflevector(a, b, 4, 5, 6, 7, 20, 21, 22, 23, 12, 13, 14, 15, 28, 29, 30, 31);
  } else if constexpr (Half == 2) {
    out = __builtin_shufflevector(a, b, 0, 1, 16, 17, 4, 5, 20, 21, 8, 9, 24, 25, 12, 13, 28, 29) +
          __builtin_shufflevector(a, b, 2, 3, 18, 19, 6, 7, 22, 23, 10, 11, 26, 27, 14, 15, 30, 31);
  } else if constexpr (Half == 1) {
    out = __builtin_shufflevector(a, b, 0, 16, 2, 18, 4, 20, 6, 22, 8, 24, 10, 26, 12, 28, 14, 30) +
          __builtin_shufflevector(a, b, 1, 17, 3, 19, 5, 21, 7, 23, 9, 25, 11, 27, 13, 29, 15, 31);
  }
}
template <int Half>
[[gnu::always_inline]] inline void fold_pair(const Vec8& a, const Vec8& b, Vec8& out) {
  if constexpr (Half == 4) {
    out = __builtin_shufflevector(a, b, 0, 1, 2, 3, 8, 9, 10, 11) + __builtin_shufflevector(a, b, 4, 5, 6, 7, 12, 13, 14, 15);
  } else if constexpr (Half == 2) {
    out = __builtin_shufflevector(a, b, 0, 1, 8, 9, 4, 5, 12, 13) + __builtin_shufflevector(a, b, 2, 3, 10, 11, 6, 7, 14, 15);
  } else if constexpr (Half == 1) {
    out = __builtin_shufflevector(a, b, 0, 8, 2, 10, 4, 12, 6, 14) + __builtin_shufflevector(a, b, 1, 9, 3, 11, 5, 13, 7, 15);
  }
}
template <int Half, class V>
[[gnu::always_inline]] inline void fold_levels(V* v) {
  // v[0 .. 2·Half) fold in pairs, in place, into v[0 .. Half); then the next level.
  BLOCKDIFF_UNROLL(8)
  for (int j = 0; j < Half; ++j) fold_pair<Half>(v[2 * j], v[2 * j + 1], v[j]);
  if constexpr (Half > 1) fold_levels<Half / 2>(v);
}
constexpr int bitrev(int j, int bits) {
  int r = 0;
  for (int b = 0; b < bits; ++b) r |= ((j >> b) & 1) << (bits - 1 - b);
  return r;
}
template <class V>
[[gnu::always_inline]] inline void lane_sums(const V (&v)[lanes<V>], float* out) {
  constexpr int L = lanes<V>, bits = L == 16 ? 4 : 3;
  V a[L];
  BLOCKDIFF_UNROLL(16)
  for (int j = 0; j < L; ++j) a[j] = v[bitrev(j, bits)];
  fold_levels<L / 2>(a);
  std::memcpy(out, &a[0], sizeof(V));
}

//! y[N, m] (=|+=) x[N, k] · w[m, k]ᵀ (+ bias) for a few rows (a sub-block forward).
//! R weight rows at a time are streamed from memory once and multiplied into all N input rows
//! held in L1, with R·N vector accumulators in registers, so the product costs about what reading
//! the weights costs. (Eigen's GEMM would first pack the weights, which costs as much again.)
//! R, the weight rows per register block: in Vec16 (AVX-512's 32 registers) at most 24
//! accumulators; in Vec8 (AVX2's 16) R·N accumulators, R weight vectors and one input vector
//! within 15 registers.
//! In Vec8 eight input rows would leave room for one weight row, whose vector's 8 multiply-adds
//! then reload all 8 input vectors (9 loads per 8 FMAs, and the inputs fall out of L1 under the
//! streaming weights). The kernel instead takes each group of 2 weight rows in two halves of 4
//! input rows (6 loads per 8 FMAs); the second half reads the group's weights from L1.
template <int N, class V>
constexpr int few_rows_halves = lanes<V> == 8 && N == 8 ? 2 : 1;
template <int N, class V>
constexpr int few_rows_block = lanes<V> == 16 ? (N == 1 ? 8 : (N <= 8 ? 3 : (N <= 12 ? 2 : 1)))
                                              : std::max(1, std::min(8, 14 / (N / few_rows_halves<N, V> + 1)));
// Software prefetch, because R streams per thread are too few for the hardware prefetcher to keep
// enough loads in flight: each weight row this many bytes (8 cache lines) ahead, and the next
// group's rows at the same column, so 2R streams are on their way (the 8-row product from memory:
// ~30 → ~45 GB/s of weights on two cores).
constexpr int few_rows_prefetch_bytes = 512;
// Where the N input rows outgrow L1 (8 × 4864 floats for down_proj), the kernel runs in column
// slices: columns [kb, kb + slice) of every group, then the next, so that the inputs' slice stays
// in L1 while the weights stream past it (instead of being read from L2 at every step); each
// slice's sums are added to the output. The slice holds 16 KiB of inputs; products whose inputs
// fit in twice that run in one pass. The sliced form is compiled for passes of 8 rows only (an
// 8-token sub-block, the passes of a block forward): each form of the kernel costs every
// translation unit that includes this file its compile time.
template <int N, class X>
constexpr int few_rows_slice = 16 * 1024 / (N * static_cast<int>(sizeof(X))) / 32 * 32;
template <int N, class X>
constexpr bool few_rows_sliced(int k) {
  return N == 8 && static_cast<std::int64_t>(k) > 2 * few_rows_slice<N, X>;
}

// GCC folds an input-row load into each of the R multiply-adds that use it (R loads from L1
// instead of one, and the loop becomes load-bound: 1.5x slower); an empty asm statement keeps the
// vector in a register. Only where the vector is one register (Wide): a Vec16 in SSE is four.
// (clang checks an asm operand's width against the target of the function that holds the asm,
// before inlining it into the clone whose registers fit it: there the hint is left out.)
template <bool Wide, class V>
[[gnu::always_inline]] inline void in_register(V& v) {
#if defined(__clang__)
  (void)v;
#else
  if constexpr (Wide) asm("" : "+v"(v));
#endif
}

// acc[l] += a[2l]·b[2l] + a[2l+1]·b[2l+1] for a and b holding 32 BF16 each, in f32: AVX512-BF16's
// vdpbf16ps. Written as assembly so that the kernel body needs no target attribute of its own
// (GCC would refuse to inline the intrinsic into it); only the function it is compiled into,
// chosen at run time on a CPU that has the instruction, executes it. clang checks the operands'
// width against the function that holds the asm, not the AVX-512 clone it is inlined into, so
// under clang the dot-product kernel is left out (BLOCKDIFF_BF16_DOT) and this is declared only.
#if defined(__clang__)
void dot_pairs(Vec16& acc, const Vec16& a, const Vec16& b);
#else
[[gnu::always_inline]] inline void dot_pairs(Vec16& acc, const Vec16& a, const Vec16& b) {
  asm("vdpbf16ps %2, %1, %0" : "+v"(acc) : "v"(a), "v"(b));
}
#endif

// One pass of the kernel below over output groups [g0, g1), columns [kb, ke) of kv (the columns
// past kv, the last whole vector, join the pass that ends there); `Sliced` keeps the weight
// prefetch inside the slice.
template <int N, class V, bool Wide, bool Sliced, class X, class W>
[[gnu::always_inline]] inline void few_rows_pass(const X* x, int k, const W* w, int m, const float* bias, float* y,
                                                 bool accumulate, int g0, int g1, int kb, int ke, int kv) {
  constexpr bool dot = std::is_same_v<X, bf16>;
  constexpr int R = few_rows_block<N, V>, L = lanes<V>;
  constexpr int step = dot ? 32 : L;
  constexpr int ahead = few_rows_prefetch_bytes / static_cast<int>(sizeof(W));
  const bool first = !Sliced || kb == 0, last = !Sliced || ke == kv;
  for (int g = g0; g < g1; ++g) {
    // A short last group slides back to end at row m (m ≥ R, see few_rows_linear): its first
    // R − fresh rows belong to the group before it and are recomputed, not stored. Every weight
    // pointer is then base + r·k, with no clamping in the loop's set-up (a clamp costs GCC three
    // vector registers across the loop, and the kernel 1.4x).
    const int o0 = std::min(g * R, m - R), fresh = std::min(R, m - g * R);
    const W* wr[R];
    for (int r = 0; r < R; ++r) wr[r] = w + static_cast<std::int64_t>(o0 + r) * k;
    V acc[R][N];
    for (int r = 0; r < R; ++r)
      for (int i = 0; i < N; ++i) acc[r][i] = V{};
    for (int j = kb; j < ke; j += step) {
      V a[R], xi;
      for (int r = 0; r < R; ++r) {
        if constexpr (dot) std::memcpy(&a[r], wr[r] + j, sizeof(V));  // 32 BF16, as they are
        else load_lanes(a[r], wr[r] + j);
        __builtin_prefetch(wr[r] + (Sliced ? std::min(j + ahead, ke - step) : j + ahead));
        __builtin_prefetch(wr[r] + static_cast<std::int64_t>(R) * k + j);  // the next group's row r
      }
      for (int i = 0; i < N; ++i) {
        if constexpr (dot) std::memcpy(&xi, x + static_cast<std::int64_t>(i) * k + j, sizeof xi);
        else load_lanes(xi, x + static_cast<std::int64_t>(i) * k + j);
        in_register<Wide>(xi);
        for (int r = 0; r < R; ++r) {
          if constexpr (dot) {
            V t = acc[r][i];  // through a local, so that GCC keeps the accumulators in registers
            dot_pairs(t, a[r], xi);
            acc[r][i] = t;
          } else {
            acc[r][i] += a[r] * xi;
          }
        }
      }
    }
    // The R·N horizontal sums, L at a time in wide registers (the zero vectors padding the last
    // L cost a few adds); one at a time otherwise, where a shuffle of a Vec16 is many.
    constexpr int sums_count = Wide ? (R * N + L - 1) / L * L : 0;
    [[maybe_unused]] alignas(64) float sums[sums_count > 0 ? sums_count : 1];
    if constexpr (Wide) {
      BLOCKDIFF_UNROLL(4)
      for (int p = 0; p < sums_count; p += L) {
        V part[L];
        BLOCKDIFF_UNROLL(16)
        for (int j = 0; j < L; ++j) part[j] = p + j < R * N ? acc[(p + j) / N][(p + j) % N] : V{};
        lane_sums(part, sums + p);
      }
    }
    for (int r = R - fresh; r < R; ++r) {
      const int o = o0 + r;
      for (int i = 0; i < N; ++i) {
        const X* xi = x + static_cast<std::int64_t>(i) * k;
        float v = Wide ? sums[r * N + i] : lane_sum(acc[r][i]);
        if (last)
          for (int j = kv; j < k; ++j) v += to_float(wr[r][j]) * to_float(xi[j]);
        float& out = y[static_cast<std::int64_t>(i) * m + o];
        if (first) {
          v += bias != nullptr ? bias[o] : 0.0f;
          out = accumulate ? out + v : v;
        } else {
          out += v;
        }
      }
    }
  }
}

// y[N, m] for output groups [g0, g1) of R weight rows each; no threading here (an OpenMP
// region's outlined body would not inherit a target attribute), so the caller splits the groups
// over threads.
// W is the weights' storage type (float or bf16). With f32 inputs X the arithmetic is f32: each
// weight is widened and multiply-added, one vector V of columns a step. With BF16 inputs (the
// activations rounded to BF16 by the caller) and BF16 weights, pairs of columns are multiplied into
// f32 by dot_pairs, 32 columns a step: twice the multiply-adds per instruction.
template <int N, class V, bool Wide, bool Sliced, class X, class W>
[[gnu::always_inline]] inline void few_rows_groups(const X* x, int k, const W* w, int m, const float* bias,
                                                   float* y, bool accumulate, int g0, int g1) {
  constexpr bool dot = std::is_same_v<X, bf16>;
  static_assert(!dot || (Wide && lanes<V> == 16 && std::is_same_v<W, bf16>),
                "BF16 dot products need BF16 weights and AVX-512");
  constexpr int step = dot ? 32 : lanes<V>;
  const int kv = k / step * step;
  if constexpr (few_rows_halves<N, V> == 2) {
    constexpr int H = N / 2, slice = Sliced ? few_rows_slice<N, X> : 0;
    int kb = 0;
    do {  // once when not sliced, and when k is shorter than a vector (the pass adds the tail)
      const int ke = Sliced ? std::min(kb + slice, kv) : kv;
      for (int g = g0; g < g1; ++g)
        for (int h = 0; h < 2; ++h)
          few_rows_pass<H, V, Wide, Sliced>(x + static_cast<std::int64_t>(h) * H * k, k, w, m, bias,
                                            y + static_cast<std::int64_t>(h) * H * m, accumulate, g, g + 1, kb, ke, kv);
      kb = ke;
    } while (kb < kv);
  } else if constexpr (Sliced) {
    constexpr int slice = few_rows_slice<N, X>;
    for (int kb = 0; kb < kv; kb += slice)
      few_rows_pass<N, V, Wide, true>(x, k, w, m, bias, y, accumulate, g0, g1, kb, std::min(kb + slice, kv), kv);
  } else {
    few_rows_pass<N, V, Wide, false>(x, k, w, m, bias, y, accumulate, g0, g1, 0, kv, kv);
  }
}

template <class X, class W>
using FewRowsFn = void (*)(const X*, int, const W*, int, const float*, float*, bool, int, int);

template <int N, bool Sliced, class W>
void few_rows_groups_default(const float* x, int k, const W* w, int m, const float* b, float* y, bool acc, int g0,
                             int g1) {
  few_rows_groups<N, BuildVec, build_isa != Isa::portable, Sliced, float>(x, k, w, m, b, y, acc, g0, g1);
}

// The kernel in wider vectors than the build's (vectors.hpp: BLOCKDIFF_AVX512_CLONE).
#if defined(BLOCKDIFF_AVX512_CLONE)
template <int N, bool Sliced, class W>
__attribute__((target("avx512f,avx512dq,avx512vl,avx512bw,fma"))) void few_rows_groups_avx512(
    const float* x, int k, const W* w, int m, const float* b, float* y, bool acc, int g0, int g1) {
  few_rows_groups<N, Vec16, true, Sliced, float>(x, k, w, m, b, y, acc, g0, g1);
}
#endif
#if defined(BLOCKDIFF_AVX2_CLONE)
template <int N, bool Sliced, class W>
__attribute__((target("avx2,fma"))) void few_rows_groups_avx2(const float* x, int k, const W* w, int m,
                                                              const float* b, float* y, bool acc, int g0, int g1) {
  few_rows_groups<N, Vec8, true, Sliced, float>(x, k, w, m, b, y, acc, g0, g1);
}
#endif
// The BF16 dot-product form of the kernel (BF16 activations and weights), compiled for AVX-512
// whatever the build, and run only where the CPU also has AVX512-BF16 (GCC's alone: dot_pairs).
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define BLOCKDIFF_BF16_DOT 1
template <int N, bool Sliced>
__attribute__((target("avx512f,avx512dq,avx512vl,avx512bw,fma"))) void few_rows_groups_dot(
    const bf16* x, int k, const bf16* w, int m, const float* b, float* y, bool acc, int g0, int g1) {
  few_rows_groups<N, Vec16, true, Sliced>(x, k, w, m, b, y, acc, g0, g1);
}
inline bool cpu_has_avx512_bf16() {
  static const bool yes = [] {
    unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
    return cpu_isa() == Isa::avx512 && __get_cpuid_count(7, 1, &eax, &ebx, &ecx, &edx) != 0 &&
           ((eax >> 5) & 1u) != 0;  // CPUID.(EAX=7, ECX=1):EAX bit 5
  }();
  return yes;
}
#endif

//! Whether a product with BF16 weights and `n` rows takes the BF16 dot-product kernel.
inline bool bf16_dot_products(std::int64_t n) {
#if defined(BLOCKDIFF_BF16_DOT)
  return n >= 2 && backend::Host::bf16_products() && host_isa() == Isa::avx512 && cpu_has_avx512_bf16();
#else
  (void)n;
  return false;
#endif
}

// Whether the few-row kernel runs in registers of a whole vector each (AVX2 or AVX-512), where it
// takes products of any number of rows in passes of at most 8.
inline bool few_rows_wide() { return host_isa() != Isa::portable; }
// Whether the one-row product should also take the few-row kernel: where it runs in AVX-512
// registers and Eigen's GEMV in narrower ones (a portable build on an AVX-512 CPU: 45 → 65 GB/s of
// weights on two cores), and wherever Eigen runs scalar (under nvcc). Its AVX2 form is not faster
// than Eigen's GEMV in SSE from memory and 3× slower on the embedded model's products
// (docs/performance.md, "AVX2").
inline bool gemv_by_few_rows() {
  return (host_isa() == Isa::avx512 && build_isa != Isa::avx512) || (!eigen_vectorizes && few_rows_wide());
}

//! The function for N rows at the current ISA, and the weight rows per group it takes.
template <int N, class X, class W>
struct FewRowsKernel {
  FewRowsFn<X, W> fn = nullptr;
  int rows_per_group = 1;

  template <bool Sliced>
  static FewRowsKernel pick() {
    if constexpr (std::is_same_v<X, bf16>) {
#if defined(BLOCKDIFF_BF16_DOT)
      return {&few_rows_groups_dot<N, Sliced>, few_rows_block<N, Vec16>};
#else
      return {};
#endif
    } else {
      // Passes of more than 8 rows are the portable path's alone (few_rows_product): the wider
      // forms are compiled for 1 to 8 rows only, each form costing every file that includes this
      // one its compile time.
      if constexpr (N <= 8) {
        [[maybe_unused]] const Isa isa = host_isa();
#if defined(BLOCKDIFF_AVX512_CLONE)
        if (isa == Isa::avx512) return {&few_rows_groups_avx512<N, Sliced, W>, few_rows_block<N, Vec16>};
#endif
#if defined(BLOCKDIFF_AVX2_CLONE)
        // One f32 row stays with Eigen where Eigen is vectorised (gemv_by_few_rows).
        if constexpr (N >= 2 || std::is_same_v<W, bf16> || !eigen_vectorizes)
          if (isa == Isa::avx2) return {&few_rows_groups_avx2<N, Sliced, W>, few_rows_block<N, Vec8>};
#endif
      }
      return {&few_rows_groups_default<N, Sliced, W>, few_rows_block<N, BuildVec>};
    }
  }
  static FewRowsKernel for_depth(int k) {
    if constexpr (N == 8) return few_rows_sliced<N, X>(k) ? pick<true>() : pick<false>();
    else return pick<false>();
  }
};

//! Requires m ≥ 8 (the largest register block of weight rows). BF16 inputs X take the
//! dot-product kernel (bf16_dot_products).
template <int N, class X, class W>
void few_rows_linear(const X* x, int k, const W* w, int m, const float* bias, float* y, bool accumulate) {
  const auto kernel = FewRowsKernel<N, X, W>::for_depth(k);
  const int groups = (m + kernel.rows_per_group - 1) / kernel.rows_per_group;
  parallel_team(static_cast<double>(N) * m * k >= 2e5, [&](int t, int nt) {
    const int per = (groups + nt - 1) / nt;
    const int g0 = std::min(groups, t * per), g1 = std::min(groups, g0 + per);
    if (g0 < g1) kernel.fn(x, k, w, m, bias, y, accumulate, g0, g1);
  });
}

inline int host_threads() { return max_threads(); }

//! The products the few-row kernel takes (it needs m ≥ 8, a whole register block of weight rows):
//! one row when `one_row`; 2 or more rows in passes of at most 8 (near-equal sizes) where it runs
//! in AVX2 or AVX-512 registers; 2 to 16 rows in one pass otherwise. False when none of these applies.
template <class W>
bool few_rows_product(const float* x, std::int64_t n, int k, const W* w, int m, const float* bias, float* y,
                      bool accumulate, bool one_row) {
  if (m < 8) return false;
  if (n == 1) {
    if (one_row) few_rows_linear<1, float>(x, k, w, m, bias, y, accumulate);
    return one_row;
  }
  // Each pass streams the weights once: the 8-row kernel keeps 24 accumulators in AVX-512
  // registers (8 in AVX2's) and, from memory, beats both its 16-row form (one weight row per block, load-bound) and
  // Eigen's blocked product at 32 rows (196 vs 149 GFLOP/s on two cores, 4 passes against one).
  const auto in_passes = [&](const auto* xs) {
    const std::int64_t passes = (n + 7) / 8;
    for (std::int64_t p = 0, r0 = 0; p < passes; ++p) {
      const std::int64_t rows = n / passes + (p < n % passes ? 1 : 0);
      dispatch_value<2, 3, 4, 5, 6, 7, 8>(rows, [&]<int N>() {
        few_rows_linear<N>(xs + r0 * k, k, w, m, bias, y + r0 * m, accumulate);
      });
      r0 += rows;
    }
  };
  if constexpr (std::is_same_v<W, bf16>) {
    if (bf16_dot_products(n)) {
      thread_local std::vector<bf16> rounded;  // the activations, rounded once per product
      rounded.resize(static_cast<std::size_t>(n) * k);
      convert_to(DType::f32, x, rounded.data(), rounded.size());
      in_passes(rounded.data());
      return true;
    }
  }
  if (few_rows_wide()) {
    in_passes(x);
    return true;
  }
  if (n > 16) return false;
  dispatch_value<2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16>(n, [&]<int N>() {
    few_rows_linear<N, float>(x, k, w, m, bias, y, accumulate);
  });
  return true;
}
}  // namespace detail

template <>
struct Kernel<backend::Host, op::Linear> {
  static void run(const float* x, std::int64_t n, int k, const float* w, int m, const float* bias, float* y,
                  bool accumulate = false) {
    if (n == 0 || m == 0) return;
    using namespace detail;
    Eigen::Map<const RowMatrix> X(x, n, k);
    Eigen::Map<const RowMatrix> W(w, m, k);
    Eigen::Map<RowMatrix> Y(y, n, m);
#if defined(BLOCKDIFF_HAVE_CBLAS)
    if (n >= 64) {
      // GEMM-shaped (prefill, training): OpenBLAS's SGEMM, with the bias broadcast first.
      if (bias != nullptr && !accumulate)
        for (std::int64_t i = 0; i < n; ++i) std::copy_n(bias, m, y + i * m);
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(n), m, k, 1.0f, x, k, w, k,
                  (accumulate || bias != nullptr) ? 1.0f : 0.0f, y, m);
      if (bias != nullptr && accumulate) Y.rowwise() += Eigen::Map<const Eigen::RowVectorXf>(bias, m);
      return;
    }
#endif
    if (few_rows_product(x, n, k, w, m, bias, y, accumulate, /*one_row=*/gemv_by_few_rows())) return;
    // One row, or 17 to 63 in the portable path: slices of output features, a multiple of 16 wide, one
    // per thread, so each thread streams its own part of the weights.
    const int threads = host_threads();
    const int slices = (static_cast<double>(n) * m * k < 5e4) ? 1 : threads;
    const int width = ((m + slices - 1) / slices + 15) / 16 * 16;
    parallel_for(slices, slices > 1, [&](std::int64_t s) {
      const int c0 = static_cast<int>(s) * width;
      const int cn = std::min(m, c0 + width) - c0;
      if (cn <= 0) return;
      auto out = Y.middleCols(c0, cn);
      if (n == 1) {
        // Row-major matrix times vector: Eigen's dot-product GEMV over contiguous weight rows.
        Eigen::Map<Eigen::VectorXf> y1(y + c0, cn);
        if (accumulate)
          y1.noalias() += W.middleRows(c0, cn) * X.row(0).transpose();
        else
          y1.noalias() = W.middleRows(c0, cn) * X.row(0).transpose();
      } else if (accumulate) {
        out.noalias() += X * W.middleRows(c0, cn).transpose();
      } else {
        out.noalias() = X * W.middleRows(c0, cn).transpose();
      }
      if (bias != nullptr) out.rowwise() += Eigen::Map<const Eigen::RowVectorXf>(bias + c0, cn);
    });
  }

  //! The same product with BF16 weights, in f32 arithmetic. Few rows widen the weights in
  //! registers as they stream them (half the bytes of f32 weights); otherwise the weights are
  //! widened a panel of rows at a time into f32 and each panel takes the f32 path above, which
  //! costs one pass over the panel against n rows of multiply-adds.
  static void run(const float* x, std::int64_t n, int k, const bf16* w, int m, const float* bias, float* y,
                  bool accumulate = false) {
    if (n == 0 || m == 0) return;
    if (n < 64 && detail::few_rows_product(x, n, k, w, m, bias, y, accumulate, /*one_row=*/true)) return;
    // Panels of about 4 MB of f32, whole multiples of 16 rows.
    const int panel = std::min(m, std::max(16, (1 << 20) / std::max(k, 1) / 16 * 16));
    std::vector<float> wide(static_cast<std::size_t>(panel) * k);
    std::vector<float> part(panel == m ? 0 : static_cast<std::size_t>(n) * panel);
    for (int c0 = 0; c0 < m; c0 += panel) {
      const int cn = std::min(panel, m - c0);
      const bf16* src = w + static_cast<std::int64_t>(c0) * k;
      parallel_for(cn, static_cast<std::int64_t>(cn) * k >= (1 << 16), [&](std::int64_t r) {
        for (int j = 0; j < k; ++j) wide[static_cast<std::size_t>(r) * k + j] = to_float(src[r * k + j]);
      });
      const float* b = bias != nullptr ? bias + c0 : nullptr;
      if (cn == m) {  // one panel: straight into y
        run(x, n, k, wide.data(), m, b, y, accumulate);
        return;
      }
      run(x, n, k, wide.data(), cn, b, part.data(), false);
      parallel_for(n, n * cn >= (1 << 16), [&](std::int64_t i) {
        float* out = y + i * m + c0;
        const float* in = part.data() + i * cn;
        for (int j = 0; j < cn; ++j) out[j] = accumulate ? out[j] + in[j] : in[j];
      });
    }
  }
};

}  // namespace blockdiff
