// Kernel<Host, op::VocabStats<SecondProb, Entropy>>: the statistics an unmasking policy reads of
// each position's distribution, computing the second probability and the entropy only when the
// policy's traits ask for them.
#pragma once

#include <cmath>
#include <cstdint>

#include "blockdiff/backend/host/row_passes.hpp"
#include "blockdiff/backend/kernel.hpp"
#include "blockdiff/core/threads.hpp"

namespace blockdiff {

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
    PositionStats s;
    s.token = top.index;
    if (!std::isfinite(m)) {  // no distribution (op::VocabStats)
      s.p1 = 1.0f;
      return s;
    }
    const ExpSums sums = exp_sums<Entropy>(l, vocab, m);
    s.p1 = static_cast<float>(1.0 / sums.sum);
    if constexpr (SecondProb) s.p2 = static_cast<float>(std::exp(static_cast<double>(top.second) - m) / sums.sum);
    if constexpr (Entropy) s.entropy = static_cast<float>(std::log(sums.sum) - sums.weighted / sums.sum);
    return s;
  }
};

}  // namespace blockdiff
