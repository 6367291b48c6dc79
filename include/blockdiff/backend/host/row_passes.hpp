// Passes over a row of logits or scores, in the CPU's widest vectors: the maximum, the top two
// with the first's index, Σ e^(l−m) (and Σ e^(l−m)·(l−m)) in f32 lanes summed into f64, and
// sampling's tempered exponentials in f64 lanes. The unmasking statistics, sampling and
// attention's softmax all run on them.
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

#include "blockdiff/backend/host/vectors.hpp"

namespace blockdiff {

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
//! written to `out` (which may be `l`: a softmax's numerators in place). A −inf or NaN logit is a
//! term of 0, in both sums: a banned token (−inf) leaves the entropy finite.
template <class V, bool Weighted, bool Store>
[[gnu::always_inline]] inline ExpSums exp_sums_lanes(const float* l, int vocab, float m, float* out) {
  using I = IntLanes<V>;
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
      sum += e;  // e is 0 where z is below −87, −inf or NaN
      if constexpr (Weighted) weighted += (V)((I)(e * z) & (e > 0.0f));  // not 0·(−inf) or 0·NaN
      if constexpr (Store) std::memcpy(out + i, &e, sizeof e);
    }
    for (int j = 0; j < L; ++j) {
      sums.sum += sum[j];
      if constexpr (Weighted) sums.weighted += weighted[j];
    }
  }
  for (; i < vocab; ++i) {
    const double z = static_cast<double>(l[i]) - m, e = z >= -745.0 ? std::exp(z) : 0.0;  // as in the lanes
    sums.sum += e;
    if constexpr (Weighted) sums.weighted += e > 0.0 ? e * z : 0.0;
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
    for (; i < end; ++i) {  // as in the lanes: a NaN or −inf logit is a term of 0
      const double z = (static_cast<double>(l[i]) - m) * inverse, e = z >= -745.0 ? std::exp(z) : 0.0;
      sum += e;
      sums.weighted += e > 0.0 ? e * z : 0.0;
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

}  // namespace blockdiff
