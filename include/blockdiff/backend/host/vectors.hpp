// The host kernels' vectors: SIMD lanes in GCC/Clang vector extensions (no intrinsics, no CPU
// requirement), loads that widen BF16, e^z lane-wise in f32 and f64, horizontal sums; and the
// choice of ISA: the build's own vectors, the CPU's (detected once), and host_isa(), the widest
// that both allow under backend::Host::max_isa().
#pragma once

#include <Eigen/Core>
#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>

#include "blockdiff/backend/kernel.hpp"
#include "blockdiff/core/dtype.hpp"

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

using Isa = backend::Host::Isa;

// The build's own vectors: the widest that this translation unit is compiled for.
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

// Each host kernel's body is compiled again for wider vectors than the build's, and the form to
// run is chosen at run time (host_isa), so that a portable build still runs AVX-512 or AVX2 code
// on such a CPU: the SSE build of the few-row kernel runs about nine times slower than the
// AVX-512 one. These say which wider forms this translation unit compiles.
#if !defined(__AVX512F__)
#define BLOCKDIFF_AVX512_CLONE 1
#endif
#if !defined(__AVX2__) || !defined(__FMA__)
#define BLOCKDIFF_AVX2_CLONE 1
#endif
#else
inline Isa cpu_isa() { return build_isa; }
#endif

//! The vectors the host kernels run in: the widest the CPU has under backend::Host::max_isa(),
//! and never narrower than the build's own.
inline Isa host_isa() { return std::max(build_isa, std::min(cpu_isa(), backend::Host::max_isa())); }
}  // namespace detail

}  // namespace blockdiff
