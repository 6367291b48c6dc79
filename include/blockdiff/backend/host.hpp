// backend::Host kernels: the CPU reference that every other backend is tested against.
//
// One row (the AR decode step) is a GEMV bound by memory bandwidth: it is split over output
// features across OpenMP threads so that each thread streams its own slice of the weights
// (Eigen does not thread GEMVs). Two to 63 rows (sub-block and block forwards) go through a
// register-blocked kernel that streams the weights once per pass of at most 8 rows, compiled for
// AVX-512 and for AVX2 and chosen at run time (a CPU with neither: one pass up to 16 rows, Eigen's
// blocked product on per-thread slices above). Many rows
// (prefill, training) go to OpenBLAS's SGEMM when blockdiff was configured with it
// (BLOCKDIFF_HAVE_CBLAS), which is faster than Eigen's blocked product on AVX-512 machines; else
// to the same slicing. Attention multiplies the query heads that share a KV head in one product,
// reading no key past the mask's bound (mask::key_bound). Arithmetic is f32 throughout, but for
// the sums of the vocabulary passes (f64) and sampling's draws (f64 vectors, sorting only the
// candidates of a nucleus); weight matrices may be held in BF16, which the products widen as they
// read them.
#pragma once

#include <Eigen/Core>
#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <numeric>
#include <span>
#include <type_traits>
#include <utility>
#include <vector>

#if defined(BLOCKDIFF_HAVE_CBLAS)
#include <cblas.h>
#endif

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <cpuid.h>
#endif

#include "blockdiff/backend/kernel.hpp"
#include "blockdiff/backend/mask.hpp"
#include "blockdiff/core/dispatch.hpp"
#include "blockdiff/core/dtype.hpp"
#include "blockdiff/core/threads.hpp"

namespace blockdiff {

namespace detail {
using RowMatrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

// SIMD vectors in GCC/Clang vector extensions, with no intrinsics and no CPU requirement: a
// Vec16 is one AVX-512 register, two AVX2 ones or four SSE ones, as the code that uses it is
// compiled; a Vec8 is one AVX2 register (the few-row kernel's vector on CPUs without AVX-512).
typedef float Vec16 __attribute__((vector_size(64)));
typedef float Vec8 __attribute__((vector_size(32)));
template <class V>
constexpr int lanes = static_cast<int>(sizeof(V) / sizeof(std::declval<V>()[0]));
//! One SSE register: the portable build's vector where lanes are compared (GCC splits a
//! comparison of vectors wider than the build's registers into scalar code).
typedef float Vec4 __attribute__((vector_size(16)));
typedef std::int32_t Vec16i __attribute__((vector_size(64)));
typedef std::int32_t Vec8i __attribute__((vector_size(32)));
typedef std::int32_t Vec4i __attribute__((vector_size(16)));
// f64 lanes, for the sampling pass's probabilities: one AVX-512, AVX2 or SSE register, and the
// float vectors (of as many lanes) that widen into them.
typedef double Vec8d __attribute__((vector_size(64)));
typedef double Vec4d __attribute__((vector_size(32)));
typedef double Vec2d __attribute__((vector_size(16)));
typedef float Vec2 __attribute__((vector_size(8)));
typedef std::int64_t Vec8l __attribute__((vector_size(64)));
typedef std::int64_t Vec4l __attribute__((vector_size(32)));
typedef std::int64_t Vec2l __attribute__((vector_size(16)));
//! The integer vector of V's width and element size, for comparisons' masks and bit operations.
template <class V, int L = lanes<V>, bool Wide = sizeof(std::declval<V>()[0]) == 8>
using IntLanes = std::conditional_t<
    Wide, std::conditional_t<L == 8, Vec8l, std::conditional_t<L == 4, Vec4l, Vec2l>>,
    std::conditional_t<L == 16, Vec16i, std::conditional_t<L == 8, Vec8i, Vec4i>>>;
//! The float vector that widens into the f64 vector D.
template <class D>
using NarrowLanes = std::conditional_t<lanes<D> == 8, Vec8, std::conditional_t<lanes<D> == 4, Vec4, Vec2>>;

// Vectors travel by reference only: passing them by value changes the ABI between builds with
// and without AVX-512.
inline void load_lanes(Vec16& v, const float* p) { std::memcpy(&v, p, sizeof v); }
inline void load_lanes(Vec8& v, const float* p) { std::memcpy(&v, p, sizeof v); }
inline void load_lanes(Vec4& v, const float* p) { std::memcpy(&v, p, sizeof v); }
// BF16 weights widen as they are loaded: a BF16 is the top half of an f32, so zero-extending each
// word and shifting it up 16 bits is exact. (GCC emits the 16-lane extension as two 8-lane ones,
// an extract and an insert; still cheaper than the bytes saved, see docs/performance.md.)
typedef std::uint16_t Half16 __attribute__((vector_size(32)));
typedef std::uint32_t Word16 __attribute__((vector_size(64)));
typedef std::uint16_t Half8 __attribute__((vector_size(16)));
typedef std::uint32_t Word8 __attribute__((vector_size(32)));
template <class Half, class Word, class V>
inline void widen_bf16(V& v, const bf16* p) {
  Half h;
  std::memcpy(&h, p, sizeof h);
  const Word w = __builtin_convertvector(h, Word) << 16;
  std::memcpy(&v, &w, sizeof v);
}
inline void load_lanes(Vec16& v, const bf16* p) { widen_bf16<Half16, Word16>(v, p); }
inline void load_lanes(Vec8& v, const bf16* p) { widen_bf16<Half8, Word8>(v, p); }
//! e^z for z ≤ 0, lane-wise: z = n·ln2 + r with |r| ≤ ln2/2, e^r by a degree-6 polynomial (about
//! one ulp), 2^n put into the exponent bits; e^z underflows to 0 below −87 (a float's least normal
//! is e^−87.3).
template <class V>
[[gnu::always_inline]] inline void exp_nonpositive(V& z) {
  using I = IntLanes<V>;
  V t = z * 1.44269504f + 12582912.0f;  // round(z·log2 e) by the 1.5·2²³ trick
  const V n = t - 12582912.0f;
  const V r = (z - n * 0.693359375f) + n * 2.12194440e-4f;  // ln 2 in two parts
  V p = r * 1.9875691500e-4f + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const I scale = (__builtin_convertvector(n, I) + 127) << 23;
  const I alive = z >= -87.0f;
  z = (V)(((I)(p * (V)scale)) & alive);
}
//! 1 / k! for k ≤ 13.
inline constexpr auto inverse_factorials = [] {
  std::array<double, 14> c{};
  double factorial = 1;  // exact: 13! < 2⁵³
  for (int k = 0; k < 14; ++k) c[static_cast<std::size_t>(k)] = 1.0 / (factorial *= k > 0 ? k : 1);
  return c;
}();
//! p = Σ r^k / k! for k ≤ sizeof...(K), by Horner's rule.
template <class D, std::size_t... K>
[[gnu::always_inline]] inline void taylor_exp(D& p, const D& r, std::index_sequence<K...>) {
  p = D{} + inverse_factorials[sizeof...(K)];
  ((p = p * r + inverse_factorials[sizeof...(K) - 1 - K]), ...);
}
//! e^z for z ≤ 0 in f64 lanes, as exp_nonpositive does in f32: |r| ≤ ln2/2 with ln 2 in two parts
//! (the first exact times any n here), e^r by its Taylor polynomial to degree 13 (truncation below
//! 1e-17, so about an ulp in all), 2^n into the exponent bits. e^z is 0 below −708 (f64's least
//! normal is e^−708.4); a NaN stays NaN.
template <class D>
[[gnu::always_inline]] inline void exp_nonpositive_f64(D& z) {
  using I = IntLanes<D>;
  const D n = (z * 1.4426950408889634 + 6755399441055744.0) - 6755399441055744.0;  // round(z·log2 e), 1.5·2⁵²
  const D r = (z - n * 6.93147180369123816490e-01) - n * 1.90821492927058770002e-10;
  D p;
  taylor_exp(p, r, std::make_index_sequence<13>{});
  const I scale = (__builtin_convertvector(n, I) + 1023) << 52;
  const I dead = z < -708.0;
  z = (D)((I)(p * (D)scale) & ~dead);
}
// A halving tree (16 → 8 → 4 → 2 → 1 lanes) in vector registers, where a left-to-right scalar sum
// is a dependent chain of adds for each of a group's R·N accumulators.
inline float lane_sum(const Vec8& h) {
  typedef float Vec4 __attribute__((vector_size(16)));
  const Vec4 q = __builtin_shufflevector(h, h, 0, 1, 2, 3) + __builtin_shufflevector(h, h, 4, 5, 6, 7);
  return (q[0] + q[2]) + (q[1] + q[3]);
}
inline float lane_sum(const Vec16& v) {
  return lane_sum(Vec8(__builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7) +
                       __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15)));
}

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

using Isa = backend::Host::Isa;

// The build's own kernel: the widest vectors that this translation unit is compiled for.
#if defined(__AVX512F__)
constexpr Isa build_isa = Isa::avx512;
using BuildVec = Vec16;
#elif defined(__AVX2__) && defined(__FMA__)
constexpr Isa build_isa = Isa::avx2;
using BuildVec = Vec8;
#else
constexpr Isa build_isa = Isa::portable;
using BuildVec = Vec16;
#endif
// Whether Eigen's products run in SIMD registers in this translation unit. Eigen turns its
// vectorisation off wherever nvcc compiles (its host pass included), so host code in a .cu file
// multiplies with scalar loops unless the few-row kernel, compiled for the CPU's vectors either
// way, takes the product instead.
#if defined(EIGEN_VECTORIZE)
constexpr bool eigen_vectorizes = true;
#else
constexpr bool eigen_vectorizes = false;
#endif

template <int N, bool Sliced, class W>
void few_rows_groups_default(const float* x, int k, const W* w, int m, const float* b, float* y, bool acc, int g0,
                             int g1) {
  few_rows_groups<N, BuildVec, build_isa != Isa::portable, Sliced, float>(x, k, w, m, b, y, acc, g0, g1);
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
// The widest vectors this CPU runs, of those the host kernels have.
inline Isa cpu_isa() {
  static const Isa isa = [] {
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("fma"))
      return Isa::avx512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Isa::avx2;
    return Isa::portable;
  }();
  return isa;
}

// The same body compiled for wider vectors than the build's, chosen at run time, so that a
// portable build still runs AVX-512 or AVX2 code on such a CPU: the SSE build of this kernel runs
// about nine times slower than the AVX-512 one.
#if !defined(__AVX512F__)
#define BLOCKDIFF_AVX512_CLONE 1
template <int N, bool Sliced, class W>
__attribute__((target("avx512f,avx512dq,avx512vl,avx512bw,fma"))) void few_rows_groups_avx512(
    const float* x, int k, const W* w, int m, const float* b, float* y, bool acc, int g0, int g1) {
  few_rows_groups<N, Vec16, true, Sliced, float>(x, k, w, m, b, y, acc, g0, g1);
}
#endif
#if !defined(__AVX2__) || !defined(__FMA__)
#define BLOCKDIFF_AVX2_CLONE 1
template <int N, bool Sliced, class W>
__attribute__((target("avx2,fma"))) void few_rows_groups_avx2(const float* x, int k, const W* w, int m,
                                                              const float* b, float* y, bool acc, int g0, int g1) {
  few_rows_groups<N, Vec8, true, Sliced, float>(x, k, w, m, b, y, acc, g0, g1);
}
#endif

// The BF16 dot-product form of the kernel (BF16 activations and weights), compiled for AVX-512
// whatever the build, and run only where the CPU also has AVX512-BF16 (GCC's alone: dot_pairs).
#if !defined(__clang__)
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
#else
inline Isa cpu_isa() { return build_isa; }
#endif

//! The vectors the few-row kernel runs in: the widest the CPU has under backend::Host::max_isa(),
//! and never narrower than the build's own.
inline Isa host_isa() { return std::max(build_isa, std::min(cpu_isa(), backend::Host::max_isa())); }

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

//! gate[i] = silu(gate[i]) · up[i] for n values, V lanes at a time. e = e^−|g| never overflows;
//! the sigmoid is 1 / (1 + e) for g ≥ 0 and e / (1 + e) below.
template <class V>
[[gnu::always_inline]] inline void swiglu_lanes(float* gate, const float* up, std::int64_t n) {
  using I = IntLanes<V>;
  constexpr int L = lanes<V>;
  std::int64_t i = 0;
  for (; i + L <= n; i += L) {
    V g, u;
    load_lanes(g, gate + i);
    load_lanes(u, up + i);
    V e = -(V)((I)g & 0x7fffffff);  // −|g| (nvcc's front end crashes on a vector plus INT_MIN)
    exp_nonpositive(e);
    const I negative = g < 0.0f;
    const V num = (V)(((I)e & negative) | ((I)(V{} + 1.0f) & ~negative));
    const V y = g * num / (1.0f + e) * u;
    std::memcpy(gate + i, &y, sizeof y);
  }
  for (; i < n; ++i) gate[i] = gate[i] / (1.0f + std::exp(-gate[i])) * up[i];
}
#if defined(BLOCKDIFF_AVX512_CLONE)
__attribute__((target("avx512f,avx512dq,avx512vl,avx512bw,fma"))) inline void swiglu_avx512(float* gate,
                                                                                              const float* up,
                                                                                              std::int64_t n) {
  swiglu_lanes<Vec16>(gate, up, n);
}
#endif
#if defined(BLOCKDIFF_AVX2_CLONE)
__attribute__((target("avx2,fma"))) inline void swiglu_avx2(float* gate, const float* up, std::int64_t n) {
  swiglu_lanes<Vec8>(gate, up, n);
}
#endif
//! SwiGLU in the widest vectors host_isa() allows, like the few-row kernel.
inline void swiglu(float* gate, const float* up, std::int64_t n) {
  [[maybe_unused]] const Isa isa = host_isa();
#if defined(BLOCKDIFF_AVX512_CLONE)
  if (isa == Isa::avx512) return swiglu_avx512(gate, up, n);
#endif
#if defined(BLOCKDIFF_AVX2_CLONE)
  if (isa == Isa::avx2) return swiglu_avx2(gate, up, n);
#endif
  swiglu_lanes<BuildVec>(gate, up, n);
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

template <>
struct Kernel<backend::Host, op::Embedding> {
  static void run(const float* table, const int* ids, std::int64_t n, int h, float* out) {
    for (std::int64_t t = 0; t < n; ++t) std::copy_n(table + static_cast<std::int64_t>(ids[t]) * h, h, out + t * h);
  }
  static void run(const bf16* table, const int* ids, std::int64_t n, int h, float* out) {
    for (std::int64_t t = 0; t < n; ++t) {
      const bf16* row = table + static_cast<std::int64_t>(ids[t]) * h;
      std::transform(row, row + h, out + t * h, [](bf16 v) { return to_float(v); });
    }
  }
};

template <>
struct Kernel<backend::Host, op::KvWrite> {
  //! k, v: [tokens, kv_heads, d]; row r's tokens go to its cache [kv_heads, capacity, d] at
  //! slots first_slot, first_slot + 1, ...
  static void run(const float* k, const float* v, std::span<const AttentionRow> rows, const AttentionShape& shape) {
    const int kv_heads = shape.kv_heads, d = shape.head_dim;
    for (const AttentionRow& row : rows)
      for (int t = 0; t < row.n_q; ++t)
        for (int h = 0; h < kv_heads; ++h) {
          const std::int64_t src = ((row.q_begin + t) * kv_heads + h) * d;
          const std::int64_t dst = (static_cast<std::int64_t>(h) * row.capacity + row.first_slot + t) * d;
          std::copy_n(k + src, d, row.k + dst);
          std::copy_n(v + src, d, row.v + dst);
        }
  }
};

template <>
struct Kernel<backend::Host, op::RmsNorm> {
  static void run(const float* x, std::int64_t n, int h, const float* weight, float eps, float* y) {
    parallel_for(n, n * h > 1 << 16, [&](std::int64_t i) {
      const float* xi = x + i * h;
      float* yi = y + i * h;
      float sum = 0.0f;
      for (int j = 0; j < h; ++j) sum += xi[j] * xi[j];
      const float inv = 1.0f / std::sqrt(sum / static_cast<float>(h) + eps);
      for (int j = 0; j < h; ++j) yi[j] = (xi[j] * inv) * weight[j];
    });
  }
};

template <>
struct Kernel<backend::Host, op::Rope> {
  //! x: [n, heads, d]; cos_sin: [positions, d/2] pairs (cos, sin) from model::RopeTable.
  static void run(float* x, std::int64_t n, int heads, int d, const int* positions, const float* cos_table,
                  const float* sin_table) {
    const int half = d / 2;
    parallel_for(n, n * heads * d > 1 << 16, [&](std::int64_t t) {
      const float* c = cos_table + static_cast<std::int64_t>(positions[t]) * half;
      const float* s = sin_table + static_cast<std::int64_t>(positions[t]) * half;
      for (int h = 0; h < heads; ++h) {
        float* v = x + (t * heads + h) * d;
        for (int i = 0; i < half; ++i) {
          const float a = v[i], b = v[i + half];
          v[i] = a * c[i] - b * s[i];         // x·cos + rotate_half(x)·sin, first half
          v[i + half] = b * c[i] + a * s[i];  // second half
        }
      }
    });
  }
};

template <>
struct Kernel<backend::Host, op::SwiGlu> {
  //! In chunks of 4096, in the CPU's widest vectors (detail::swiglu): a std::exp call per element
  //! was 14% of a block-diffusion decode of the embedded model on one AVX2 core.
  static void run(float* gate, const float* up, std::int64_t count) {
    constexpr std::int64_t chunk = 4096;
    parallel_for((count + chunk - 1) / chunk, count > 1 << 16, [&](std::int64_t c) {
      const std::int64_t begin = c * chunk;
      detail::swiglu(gate + begin, up + begin, std::min(chunk, count - begin));
    });
  }
};

namespace detail {
// The vocabulary passes of the policy step (151,936 logits a row at Qwen's size), in V lanes with
// four vectors in flight, compiled for each ISA like the few-row kernel: the widest registers
// that host_isa() allows, and SSE's 4 lanes in the portable build.
template <class V>
[[gnu::always_inline]] inline void max_into(V& acc, const V& v) {
  using I = IntLanes<V>;
  const I take = v > acc;  // a NaN never wins
  acc = (V)(((I)v & take) | ((I)acc & ~take));
}
//! max of l[begin, end), NaNs ignored; −inf when empty.
template <class V>
[[gnu::always_inline]] inline float max_lanes(const float* l, int begin, int end) {
  constexpr int L = lanes<V>;
  constexpr float lowest = -std::numeric_limits<float>::infinity();
  V acc[4], v;
  for (V& a : acc) a = V{} + lowest;
  int i = begin;
  for (; i + 4 * L <= end; i += 4 * L)
    for (int k = 0; k < 4; ++k) {
      load_lanes(v, l + i + k * L);
      max_into(acc[k], v);
    }
  for (; i + L <= end; i += L) {
    load_lanes(v, l + i);
    max_into(acc[0], v);
  }
  max_into(acc[0], acc[1]);
  max_into(acc[2], acc[3]);
  max_into(acc[0], acc[2]);
  float m = lowest;
  for (int j = 0; j < L; ++j) m = std::max(m, acc[0][j]);
  for (; i < end; ++i) m = std::max(m, l[i]);
  return m;
}
struct ExpSums {
  double sum = 0, weighted = 0;  // Σ e^(l−m) and Σ e^(l−m)·(l−m)
};
//! Lane sums in f32 over 1,024 logits at a time, then into f64, so that a row's sum keeps about
//! f64's accuracy relative to the largest term (which is 1). With Store, each e^(l−m) is also
//! written to `out` (which may be `l`: a softmax's numerators in place).
template <class V, bool Weighted, bool Store>
[[gnu::always_inline]] inline ExpSums exp_sums_lanes(const float* l, int vocab, float m, float* out) {
  constexpr int L = lanes<V>;
  ExpSums sums;
  int i = 0;
  while (i + L <= vocab) {
    V sum{}, weighted{}, z;
    for (const int chunk_end = std::min(vocab / L * L, i + 1024); i < chunk_end; i += L) {
      load_lanes(z, l + i);
      z -= m;
      V e = z;
      exp_nonpositive(e);
      sum += e;
      if constexpr (Weighted) weighted += e * z;
      if constexpr (Store) std::memcpy(out + i, &e, sizeof e);
    }
    for (int j = 0; j < L; ++j) {
      sums.sum += sum[j];
      if constexpr (Weighted) sums.weighted += weighted[j];
    }
  }
  for (; i < vocab; ++i) {
    const double z = static_cast<double>(l[i]) - m, e = std::exp(z);
    sums.sum += e;
    if constexpr (Weighted) sums.weighted += e * z;
    if constexpr (Store) out[i] = static_cast<float>(e);
  }
  return sums;
}
//! A row's largest logit, its index (the lowest among equal maxima; 0 when no logit is above
//! −inf) and the largest of the other logits (−inf when there is none); NaNs are ignored.
struct TopTwo {
  float first = -std::numeric_limits<float>::infinity();
  int index = 0;
  float second = -std::numeric_limits<float>::infinity();
  //! Takes x at an index above every one taken so far.
  void take(float x, int i) {
    if (x > first) {
      second = first;
      first = x;
      index = i;
    } else if (x > second) {
      second = x;
    }
  }
};
//! One vector of logits x at indices `at` into lanes' first two and the first's index.
template <class V, class I = IntLanes<V>>
[[gnu::always_inline]] inline void top_two_into(V& first, V& second, I& index, const V& x, const I& at) {
  const I above_first = x > first, above_second = x > second;  // a NaN is above neither
  second = (V)(((I)first & above_first) | ((((I)x & above_second) | ((I)second & ~above_second)) & ~above_first));
  first = (V)(((I)x & above_first) | ((I)first & ~above_first));
  index = (at & above_first) | (index & ~above_first);
}
//! TopTwo of a row in one pass, each lane keeping its own first two and the first's index.
template <class V>
[[gnu::always_inline]] inline TopTwo top_two_lanes(const float* l, int vocab) {
  constexpr int L = lanes<V>, R = 4;
  using I = IntLanes<V>;
  V first[R], second[R], x;
  I index[R], at;
  for (int k = 0; k < R; ++k) {
    first[k] = second[k] = V{} - std::numeric_limits<float>::infinity();
    index[k] = I{};
  }
  for (int j = 0; j < L; ++j) at[j] = j;
  int i = 0;
  for (; i + R * L <= vocab; i += R * L)
    for (int k = 0; k < R; ++k) {
      load_lanes(x, l + i + k * L);
      top_two_into(first[k], second[k], index[k], x, at + (i + k * L));
    }
  for (; i + L <= vocab; i += L) {
    load_lanes(x, l + i);
    top_two_into(first[0], second[0], index[0], x, at + i);
  }
  // Lanes hold disjoint positions: the winner is the largest first (the lowest index among equal
  // ones), and the second the largest of every other lane's first and of every lane's second.
  TopTwo top;
  int winner = 0;
  for (int k = 0; k < R; ++k)
    for (int j = 0; j < L; ++j)
      if (first[k][j] > top.first || (first[k][j] == top.first && index[k][j] < top.index)) {
        top.first = first[k][j];
        top.index = index[k][j];
        winner = k * L + j;
      }
  for (int k = 0; k < R; ++k)
    for (int j = 0; j < L; ++j) {
      top.second = std::max(top.second, second[k][j]);
      if (k * L + j != winner) top.second = std::max(top.second, first[k][j]);
    }
  for (; i < vocab; ++i) top.take(l[i], i);
  return top;
}
//! What tempered_exps writes besides its sums, each part only where its pointer is not null.
struct Tempered {
  static constexpr int chunk = 256;     //!< terms per partial sum
  static constexpr int octaves = 128;   //!< binary orders of magnitude of a term, from 2^−127 up to 1
  static constexpr int tables = 8;      //!< one octave table per f64 lane
  double* terms = nullptr;    //!< [n]: each e^z
  double* chunks = nullptr;   //!< [⌈n / chunk⌉]: the sum of terms [chunk·c, chunk·c + chunk)
  double* octaves_of = nullptr;  //!< [tables × octaves], zeroed by the caller: table j, octave k holds
                                 //!< the mass of lane j's terms in [2^(k−127), 2^(k−126)) (k = 0 also
                                 //!< every smaller one, k = 127 the term 1); table 0 the scalar tail's
};
//! Σ e^z and Σ e^z·z in f64 over z = (l − m) · (1 / temperature): the sampling pass's
//! probabilities before they are normalised, and what `out` asks for. The total is the chunks'
//! sums in order, each summed in lanes and then across them, so a chunk computed again alone
//! (from l + chunk·c, with its length) has the same terms and the same sum. A NaN logit is a
//! −inf one: its term is 0.
template <class D>
[[gnu::always_inline]] inline ExpSums tempered_exps_lanes(const float* l, int n, float m, double temperature,
                                                          const Tempered& out) {
  constexpr int L = lanes<D>;
  static_assert(Tempered::chunk % L == 0 && L <= Tempered::tables);
  using I = IntLanes<D>;
  const double inverse = 1.0 / temperature;  // exact at T = 1; a multiply, not a divide, per token
  const auto octave = [](std::int64_t exponent) {
    return static_cast<std::size_t>(std::clamp<std::int64_t>(exponent - (1023 - Tempered::octaves + 1), 0,
                                                             Tempered::octaves - 1));
  };
  ExpSums sums;
  D weighted{};
  for (int begin = 0; begin < n; begin += Tempered::chunk) {
    const int end = std::min(n, begin + Tempered::chunk);
    D lane_sums{};
    int i = begin;
    for (; i + L <= end; i += L) {
      NarrowLanes<D> x;
      std::memcpy(&x, l + i, sizeof x);
      D z = (__builtin_convertvector(x, D) - m) * inverse;
      const I far = ~(z >= -745.0);  // e^z is 0 (and NaN is −inf): so that e^z·z is 0 too
      z = (D)(((I)z & ~far) | ((I)(D{} - 745.0) & far));
      D e = z;
      exp_nonpositive_f64(e);
      lane_sums += e;
      weighted += e * z;
      if (out.terms != nullptr) std::memcpy(out.terms + i, &e, sizeof e);
      if (out.octaves_of != nullptr) {
        const I exponent = (I)e >> 52;  // e ≥ 0
        for (int j = 0; j < L; ++j)
          out.octaves_of[static_cast<std::size_t>(j * Tempered::octaves) + octave(exponent[j])] += e[j];
      }
    }
    double sum = 0.0;
    for (int j = 0; j < L; ++j) sum += lane_sums[j];
    for (; i < end; ++i) {
      const double z = std::max((static_cast<double>(l[i]) - m) * inverse, -745.0), e = std::exp(z);
      sum += e;
      sums.weighted += e * z;
      if (out.terms != nullptr) out.terms[i] = e;
      if (out.octaves_of != nullptr) out.octaves_of[octave(std::bit_cast<std::int64_t>(e) >> 52)] += e;
    }
    if (out.chunks != nullptr) out.chunks[begin / Tempered::chunk] = sum;
    sums.sum += sum;
  }
  for (int j = 0; j < L; ++j) sums.weighted += weighted[j];
  return sums;
}
#if defined(BLOCKDIFF_AVX512_CLONE)
__attribute__((target("avx512f,avx512dq,avx512vl,avx512bw,fma"))) inline TopTwo top_two_avx512(const float* l,
                                                                                                int vocab) {
  return top_two_lanes<Vec16>(l, vocab);
}
__attribute__((target("avx512f,avx512dq,avx512vl,avx512bw,fma"))) inline ExpSums tempered_exps_avx512(
    const float* l, int n, float m, double temperature, const Tempered& out) {
  return tempered_exps_lanes<Vec8d>(l, n, m, temperature, out);
}
__attribute__((target("avx512f,avx512dq,avx512vl,avx512bw,fma"))) inline float max_avx512(const float* l, int begin,
                                                                                           int end) {
  return max_lanes<Vec16>(l, begin, end);
}
template <bool Weighted, bool Store>
__attribute__((target("avx512f,avx512dq,avx512vl,avx512bw,fma"))) inline ExpSums exp_sums_avx512(const float* l,
                                                                                                  int vocab, float m,
                                                                                                  float* out) {
  return exp_sums_lanes<Vec16, Weighted, Store>(l, vocab, m, out);
}
#endif
#if defined(BLOCKDIFF_AVX2_CLONE)
__attribute__((target("avx2,fma"))) inline TopTwo top_two_avx2(const float* l, int vocab) {
  return top_two_lanes<Vec8>(l, vocab);
}
__attribute__((target("avx2,fma"))) inline ExpSums tempered_exps_avx2(const float* l, int n, float m,
                                                                      double temperature, const Tempered& out) {
  return tempered_exps_lanes<Vec4d>(l, n, m, temperature, out);
}
__attribute__((target("avx2,fma"))) inline float max_avx2(const float* l, int begin, int end) {
  return max_lanes<Vec8>(l, begin, end);
}
template <bool Weighted, bool Store>
__attribute__((target("avx2,fma"))) inline ExpSums exp_sums_avx2(const float* l, int vocab, float m, float* out) {
  return exp_sums_lanes<Vec8, Weighted, Store>(l, vocab, m, out);
}
#endif
//! The build's own vector for these passes: its widest, or SSE's in the portable build.
using VocabVec = std::conditional_t<build_isa == Isa::portable, Vec4, BuildVec>;
//! Its f64 vector: as many lanes as fit the same registers.
using VocabVecD =
    std::conditional_t<build_isa == Isa::avx512, Vec8d, std::conditional_t<build_isa == Isa::avx2, Vec4d, Vec2d>>;
//! max of l[begin, end) (NaNs ignored; −inf when empty) in the widest vectors host_isa() allows.
inline float max_of(const float* l, int begin, int end) {
  [[maybe_unused]] const Isa isa = host_isa();
#if defined(BLOCKDIFF_AVX512_CLONE)
  if (isa == Isa::avx512) return max_avx512(l, begin, end);
#endif
#if defined(BLOCKDIFF_AVX2_CLONE)
  if (isa == Isa::avx2) return max_avx2(l, begin, end);
#endif
  return max_lanes<VocabVec>(l, begin, end);
}
//! TopTwo of a row, likewise.
inline TopTwo top_two(const float* l, int vocab) {
  [[maybe_unused]] const Isa isa = host_isa();
#if defined(BLOCKDIFF_AVX512_CLONE)
  if (isa == Isa::avx512) return top_two_avx512(l, vocab);
#endif
#if defined(BLOCKDIFF_AVX2_CLONE)
  if (isa == Isa::avx2) return top_two_avx2(l, vocab);
#endif
  return top_two_lanes<VocabVec>(l, vocab);
}
//! The tempered exponentials of a row in f64 (tempered_exps_lanes), in f64 lanes as wide as
//! host_isa() allows (two in the portable build).
inline ExpSums tempered_exps(const float* l, int n, float m, double temperature, const Tempered& out) {
  [[maybe_unused]] const Isa isa = host_isa();
#if defined(BLOCKDIFF_AVX512_CLONE)
  if (isa == Isa::avx512) return tempered_exps_avx512(l, n, m, temperature, out);
#endif
#if defined(BLOCKDIFF_AVX2_CLONE)
  if (isa == Isa::avx2) return tempered_exps_avx2(l, n, m, temperature, out);
#endif
  return tempered_exps_lanes<VocabVecD>(l, n, m, temperature, out);
}
//! Σ e^(l−m) (and, when Weighted, Σ e^(l−m)·(l−m)) over a row, likewise; with Store, each
//! e^(l−m) also goes to out[i].
template <bool Weighted, bool Store = false>
ExpSums exp_sums(const float* l, int vocab, float m, float* out = nullptr) {
  [[maybe_unused]] const Isa isa = host_isa();
#if defined(BLOCKDIFF_AVX512_CLONE)
  if (isa == Isa::avx512) return exp_sums_avx512<Weighted, Store>(l, vocab, m, out);
#endif
#if defined(BLOCKDIFF_AVX2_CLONE)
  if (isa == Isa::avx2) return exp_sums_avx2<Weighted, Store>(l, vocab, m, out);
#endif
  return exp_sums_lanes<VocabVec, Weighted, Store>(l, vocab, m, out);
}
}  // namespace detail

//! Attention on the host, one task per (row, KV head, tile of up to 64 queries): the query heads
//! that share a KV head are multiplied against its keys in one product, so that each key and
//! value is read once for the group (an AR step of a 7:1 GQA model reads its cache once, not
//! seven times). A PrefixMask bounds the keys: a tile reads none past its last query's bound
//! (half of a causal prefill's scores are never computed), and below each query's bound every key
//! is allowed; any other mask is evaluated per (query, key). The softmax's exponentials run in
//! the vocabulary pass's vectors; its normalisation is applied to the d outputs of each query,
//! not to its scores.
template <class Mask>
struct Kernel<backend::Host, op::Attention<Mask>> {
  static constexpr int query_tile = 64;

  //! q, out: [tokens, heads, head_dim]. Each row's queries attend its cache under `mask`.
  static void run(const float* q, float* out, std::span<const AttentionRow> rows, const AttentionShape& shape,
                  const Mask& mask) {
    // Tasks by row and tile, each taken by every KV head: tiles_before[r] is the tiles of rows < r.
    // The calling thread's vector, read by the workers through a reference: named inside the
    // parallel body, a thread_local would be each worker's own (empty) one.
    thread_local std::vector<std::int64_t> tiles_storage;
    std::vector<std::int64_t>& tiles_before = tiles_storage;
    tiles_before.assign(rows.size() + 1, 0);
    std::int64_t work = 0;  // query-key pairs of one head, over all rows
    for (std::size_t r = 0; r < rows.size(); ++r) {
      tiles_before[r + 1] = tiles_before[r] + (rows[r].n_q + query_tile - 1) / query_tile;
      work += static_cast<std::int64_t>(rows[r].n_q) * rows[r].kv_end;
    }
    const std::int64_t tasks = tiles_before.back() * shape.kv_heads;
    // Threads from 2^17 multiply-adds of scores on: below that (the embedded models' block
    // forward) a parallel region costs more than it saves (bench_components, at 2 threads).
    parallel_for<Schedule::dynamic>(tasks, work * shape.heads * shape.head_dim >= 1 << 17, [&](std::int64_t task) {
      const std::int64_t tile = task / shape.kv_heads;
      const auto r = static_cast<std::size_t>(std::upper_bound(tiles_before.begin(), tiles_before.end(), tile) -
                                              tiles_before.begin() - 1);
      const int begin = static_cast<int>(tile - tiles_before[r]) * query_tile;
      const AttentionRow& row = rows[r];
      tile_of_group(q, out, row, begin, std::min(row.n_q, begin + query_tile), static_cast<int>(task % shape.kv_heads),
                    shape, mask);
    });
  }

 private:
  // Queries [begin, end) of `row`, every head of KV head `kvh`.
  static void tile_of_group(const float* q, float* out, const AttentionRow& row, int begin, int end, int kvh,
                            const AttentionShape& shape, const Mask& mask) {
    using namespace detail;
    const int d = shape.head_dim, group = shape.heads / shape.kv_heads;
    const std::int64_t stride = static_cast<std::int64_t>(shape.heads) * d;
    const int n = (end - begin) * group;  // score rows, query-major: (query i, head g) is row i·group + g
    int keys = 0;                         // the keys any of the tile's queries may attend
    for (int i = begin; i < end; ++i) keys = std::max(keys, mask::key_bound(mask, row.first_slot + i, row.kv_end));

    // The group's heads of one query are adjacent in q: a tile is (end − begin) runs of group·d.
    thread_local RowMatrix queries, scores, outputs;
    queries.resize(n, d);
    for (int i = begin; i < end; ++i)
      for (int e = 0; e < group * d; ++e)
        queries.data()[static_cast<std::int64_t>(i - begin) * group * d + e] =
            q[(row.q_begin + i) * stride + static_cast<std::int64_t>(kvh) * group * d + e] * shape.scale;
    Eigen::Map<const RowMatrix> K(row.k + static_cast<std::int64_t>(kvh) * row.capacity * d, keys, d);
    Eigen::Map<const RowMatrix> V(row.v + static_cast<std::int64_t>(kvh) * row.capacity * d, keys, d);
    scores.resize(n, keys);
    scores.noalias() = queries * K.transpose();

    thread_local std::vector<float> inverse_sums;
    inverse_sums.assign(static_cast<std::size_t>(n), 0.0f);
    for (int t = 0; t < n; ++t) {
      const int slot = row.first_slot + begin + t / group;
      const int allowed = mask::key_bound(mask, slot, keys);
      float* s = scores.data() + static_cast<std::int64_t>(t) * keys;
      if constexpr (!mask::PrefixMask<Mask>)
        for (int j = 0; j < allowed; ++j)
          if (!mask.allowed(slot, j)) s[j] = -std::numeric_limits<float>::infinity();
      std::fill(s + allowed, s + keys, 0.0f);
      // A score that is not a number (from a q or k that is not) makes the query's output NaN, as
      // softmax would, where the vector passes below would skip it.
      if (std::isnan(Eigen::Map<const Eigen::ArrayXf>(s, allowed).sum())) {
        inverse_sums[static_cast<std::size_t>(t)] = std::numeric_limits<float>::quiet_NaN();
        continue;
      }
      const float mx = max_of(s, 0, allowed);
      if (mx == -std::numeric_limits<float>::infinity()) {  // no allowed key: the output is zeros
        std::fill(s, s + allowed, 0.0f);
        continue;
      }
      inverse_sums[static_cast<std::size_t>(t)] = static_cast<float>(1.0 / exp_sums<false, true>(s, allowed, mx, s).sum);
    }
    outputs.resize(n, d);
    outputs.noalias() = scores * V;
    for (int i = begin; i < end; ++i)
      for (int g = 0; g < group; ++g) {
        const int t = (i - begin) * group + g;
        float* o = out + (row.q_begin + i) * stride + static_cast<std::int64_t>(kvh * group + g) * d;
        for (int e = 0; e < d; ++e) o[e] = outputs(t, e) * inverse_sums[static_cast<std::size_t>(t)];
      }
  }
};

template <bool SecondProb, bool Entropy>
struct Kernel<backend::Host, op::VocabStats<SecondProb, Entropy>> {
  //! logits: [rows, vocab] -> stats[rows]. Softmax at temperature 1, in f32 with an f64 sum.
  static void run(const float* logits, std::int64_t rows, int vocab, PositionStats* stats) {
    parallel_for(rows, rows * vocab > 1 << 18, [&](std::int64_t r) { stats[r] = one_row(logits + r * vocab, vocab); });
  }

  static PositionStats one_row(const float* l, int vocab) {
    using namespace detail;
    const TopTwo top = top_two(l, vocab);  // one pass for the maximum, its index and the runner-up
    const float m = top.first;
    const ExpSums sums = exp_sums<Entropy>(l, vocab, m);
    PositionStats s;
    s.token = top.index;
    s.p1 = static_cast<float>(1.0 / sums.sum);
    if constexpr (SecondProb) s.p2 = static_cast<float>(std::exp(static_cast<double>(top.second) - m) / sums.sum);
    if constexpr (Entropy) s.entropy = static_cast<float>(std::log(sums.sum) - sums.weighted / sums.sum);
    return s;
  }
};

namespace detail {
//! Sorts `v` stably by key(x), an unsigned 64-bit integer, ascending: least significant byte
//! first, counting all eight bytes' digits in one pass and skipping each byte in which every key
//! agrees. `buffer` is working space.
template <class T, class Key>
void radix_sort(std::span<T> v, std::vector<T>& buffer, Key key) {
  const std::size_t n = v.size();
  std::array<std::array<std::uint32_t, 256>, 8> counts{};
  for (const T& x : v)
    for (int d = 0; d < 8; ++d) ++counts[static_cast<std::size_t>(d)][(key(x) >> (8 * d)) & 255];
  buffer.resize(n);
  T* from = v.data();
  T* to = buffer.data();
  for (int d = 0; d < 8; ++d) {
    auto& count = counts[static_cast<std::size_t>(d)];
    if (std::find(count.begin(), count.end(), n) != count.end()) continue;  // one digit for all
    std::uint32_t start = 0;
    for (auto& c : count) start += std::exchange(c, start);
    for (std::size_t i = 0; i < n; ++i) to[count[(key(from[i]) >> (8 * d)) & 255]++] = from[i];
    std::swap(from, to);
  }
  if (from != v.data()) std::copy(from, from + n, v.data());
}
}  // namespace detail

template <>
struct Kernel<backend::Host, op::Sample> {
  //! A token and its probability.
  struct Ranked {
    double p;
    int token;
  };
  //! One draw's working space.
  struct Scratch {
    std::vector<double> exps;        //!< e^((l − max) / T) of every token, with a nucleus
    std::vector<double> chunk_sums;  //!< the sums of each 256 of them
    std::vector<Ranked> nucleus;     //!< the candidates, then the nucleus in walking order
    std::vector<Ranked> sorting;     //!< the sort's working space
  };

  //! logits: [rows, vocab]; out[i] is the draw of requests[i] (op::Sample states what is drawn).
  //! Draws run on their own threads when there are several over a wide vocabulary.
  static void run(const float* logits, int vocab, std::span<const SampleRequest> requests, float temperature,
                  float top_p, PositionStats* out) {
    const auto n = static_cast<std::int64_t>(requests.size());
    parallel_for(n, vocab >= 1 << 14, [&](std::int64_t i) {
      thread_local Scratch scratch;  // each worker's own
      out[i] = one_row(logits + requests[i].row * vocab, vocab, temperature, top_p, requests[i].u, scratch);
    });
  }

  //! One draw, in f64 throughout, reading the logits a few times rather than stored f64
  //! probabilities (twice the logits' bytes) many times:
  //! 1. the largest logit and the runner-up in one pass, then every e^((l − max) / T) in f64
  //!    lanes, summed with the entropy's numerator (no logarithm per token);
  //! 2. without a nucleus, the draw finds the 256 tokens whose partial sum crosses u times the
  //!    total, and computes their terms again to walk them one at a time;
  //! 3. with one, the terms are kept and their mass summed by octave in the same pass: the
  //!    nucleus lies within the tokens of the highest octaves whose mass exceeds top_p, so only
  //!    those are sorted (the nucleus and at most the rest of one octave), not the vocabulary.
  //! A row without a finite largest logit (every logit NaN or −inf, or one +inf) has no
  //! distribution to draw from: it gives its TopTwo index with p1 = 1.
  static PositionStats one_row(const float* l, int vocab, float temperature, float top_p, double u,
                               Scratch& scratch) {
    using detail::Tempered;
    const auto at = [](std::int64_t i) { return static_cast<std::size_t>(i); };
    const detail::TopTwo top = detail::top_two(l, vocab);
    const float m = top.first;
    PositionStats s;
    s.token = top.index;
    s.p1 = 1.0f;
    if (!std::isfinite(m)) return s;
    const bool nucleus_cut = top_p < 1.0f;
    scratch.exps.resize(nucleus_cut ? at(vocab) : 0);
    scratch.chunk_sums.resize(at((vocab + Tempered::chunk - 1) / Tempered::chunk));
    std::array<double, Tempered::tables * Tempered::octaves> octaves_of{};
    Tempered out;
    out.chunks = scratch.chunk_sums.data();
    if (nucleus_cut) {
      out.terms = scratch.exps.data();
      out.octaves_of = octaves_of.data();
    }
    const detail::ExpSums sums = detail::tempered_exps(l, vocab, m, temperature, out);
    const double total = sums.sum;  // at least the largest term, 1
    s.p2 = static_cast<float>(std::exp((static_cast<double>(top.second) - m) * (1.0 / temperature)) / total);
    s.entropy = static_cast<float>(std::log(total) - sums.weighted / total);
    if (!nucleus_cut) {
      // The chunk whose partial sum crosses u·total, then its terms one at a time from there.
      const double target = u * total;
      double acc = 0.0;
      std::array<double, Tempered::chunk> terms;
      for (std::size_t c = 0; c < scratch.chunk_sums.size(); ++c) {
        if (!(target < acc + scratch.chunk_sums[c])) {
          acc += scratch.chunk_sums[c];
          continue;
        }
        const int begin = static_cast<int>(c) * Tempered::chunk, n = std::min(Tempered::chunk, vocab - begin);
        Tempered again;
        again.terms = terms.data();
        detail::tempered_exps(l + begin, n, m, temperature, again);
        for (int i = 0; i < n; ++i)
          if (target < (acc += terms[at(i)])) {
            s.token = begin + i;
            s.p1 = static_cast<float>(terms[at(i)] / total);
            return s;
          }
        // Rounding left the terms one at a time short of the chunk's sum: on from there.
      }
      // Rounding left u·total at the total: the last token.
      s.token = vocab - 1;
      const double z = std::max((static_cast<double>(l[vocab - 1]) - m) * (1.0 / temperature), -745.0);
      s.p1 = static_cast<float>(std::exp(z) / total);
      return s;
    }
    // The candidates: every token whose term is at least 2^(cut − 127), for the highest octave
    // `cut` whose tokens' mass exceeds top_p by more than the rounding of summing it in another
    // order; every token when only the lowest does, or when the sorted sum falls short after all.
    int cut = Tempered::octaves - 1;
    for (double above = 0.0; cut > 0; --cut) {
      for (int t = 0; t < Tempered::tables; ++t) above += octaves_of[at(t * Tempered::octaves + cut)];
      if (above > (top_p + 1e-9) * total) break;
    }
    const std::vector<double>& exps = scratch.exps;
    std::vector<Ranked>& nucleus = scratch.nucleus;
    nucleus.resize(at(vocab));
    std::size_t candidates = 0, kept = 0;
    double mass = 0.0;
    for (double floor = cut == 0 ? 0.0 : std::ldexp(1.0, cut - Tempered::octaves + 1);; floor = 0.0) {
      candidates = 0;
      for (std::size_t c = 0; c < scratch.chunk_sums.size(); ++c) {
        if (scratch.chunk_sums[c] < floor) continue;  // no term of the chunk is as large as its sum
        const int end = std::min(vocab, static_cast<int>(c + 1) * Tempered::chunk);
        for (int i = static_cast<int>(c) * Tempered::chunk; i < end; ++i)
          if (exps[at(i)] >= floor) nucleus[candidates++] = {exps[at(i)] / total, i};
      }
      // The walking order: by decreasing probability, the lower index first on ties. The
      // candidates are in index order, the sort is stable, and a probability's bits (≥ 0) order
      // as it does, so the key is the complement of those bits.
      detail::radix_sort(std::span(nucleus.data(), candidates), scratch.sorting,
                         [](const Ranked& r) { return ~std::bit_cast<std::uint64_t>(r.p); });
      mass = 0.0, kept = 0;
      do mass += nucleus[kept++].p;  // the first is always kept
      while (kept < candidates && !(mass > top_p));
      if (mass > top_p || floor == 0.0) break;
    }
    const double target = u * mass;
    s.token = nucleus[kept - 1].token;  // where rounding leaves the target at the kept mass
    s.p1 = static_cast<float>(nucleus[kept - 1].p / mass);
    double acc = 0.0;
    for (std::size_t i = 0; i < kept; ++i)
      if (target < (acc += nucleus[i].p)) {
        s.token = nucleus[i].token;
        s.p1 = static_cast<float>(nucleus[i].p / mass);
        break;
      }
    return s;
  }
};

}  // namespace blockdiff
