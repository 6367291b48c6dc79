// Kernel<Host, op::Sample>: a token drawn from softmax(l / temperature), within the nucleus of
// top-p mass, in f64; each row's draw from its own uniform number.
#pragma once

#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <numeric>
#include <span>
#include <utility>
#include <vector>

#include "blockdiff/backend/host/row_passes.hpp"
#include "blockdiff/backend/kernel.hpp"
#include "blockdiff/core/threads.hpp"

namespace blockdiff {

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
      std::array<double, Tempered::chunk> terms;
      const auto terms_of = [&](std::size_t c) {  // chunk c's terms into `terms`: its first token and size
        const int begin = static_cast<int>(c) * Tempered::chunk, n = std::min(Tempered::chunk, vocab - begin);
        Tempered again;
        again.terms = terms.data();
        detail::tempered_exps(l + begin, n, m, temperature, again);
        return std::pair{begin, n};
      };
      const auto drawn = [&](int begin, int i) {
        s.token = begin + i;
        s.p1 = static_cast<float>(terms[at(i)] / total);
        return s;
      };
      const double target = u * total;
      double acc = 0.0;
      for (std::size_t c = 0; c < scratch.chunk_sums.size(); ++c) {
        if (!(target < acc + scratch.chunk_sums[c])) {
          acc += scratch.chunk_sums[c];
          continue;
        }
        const auto [begin, n] = terms_of(c);
        for (int i = 0; i < n; ++i)
          if (target < (acc += terms[at(i)])) return drawn(begin, i);
        // Rounding left the terms one at a time short of the chunk's sum: on from there.
      }
      // Rounding left u·total at the total: the last token that can be drawn, in the last chunk
      // with any mass (the largest logit's term, 1, is in one).
      std::size_t c = scratch.chunk_sums.size() - 1;
      while (!(scratch.chunk_sums[c] > 0.0)) --c;
      const auto [begin, n] = terms_of(c);
      int i = n - 1;
      while (!(terms[at(i)] > 0.0)) --i;
      return drawn(begin, i);
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
