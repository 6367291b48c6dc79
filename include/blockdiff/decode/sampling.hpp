// Sampling at temperature T with top-p, as the official code does (§3.3).
//
// softmax(logits / T); keep the smallest prefix of tokens, by decreasing probability, whose
// cumulative probability exceeds p (the first is always kept); renormalise; draw one. The
// confidence the unmasking policy sees is the renormalised probability of the drawn token. The
// second probability and the entropy are those of the tempered distribution.
#pragma once

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "blockdiff/backend/kernel.hpp"
#include "blockdiff/core/rng.hpp"

namespace blockdiff::decode {

struct SamplingOptions {
  float temperature = 0.0f;  //!< 0 means greedy
  float top_p = 1.0f;
};

//! Draws one token from `logits` and returns its statistics.
inline PositionStats sample_token(const float* logits, int vocab, const SamplingOptions& options, Rng& rng,
                                  std::vector<double>& probs, std::vector<int>& order) {
  probs.resize(static_cast<std::size_t>(vocab));
  const float m = *std::max_element(logits, logits + vocab);
  double sum = 0.0;
  for (int i = 0; i < vocab; ++i) sum += probs[static_cast<std::size_t>(i)] = std::exp((static_cast<double>(logits[i]) - m) / options.temperature);
  double entropy = 0.0;
  for (auto& p : probs) {
    p /= sum;
    if (p > 0) entropy -= p * std::log(p);
  }
  order.resize(static_cast<std::size_t>(vocab));
  std::iota(order.begin(), order.end(), 0);
  int kept = vocab;
  double mass = 1.0;
  if (options.top_p < 1.0f) {
    // The nucleus: sort a chunk at a time until the cumulative mass exceeds top_p.
    auto by_prob = [&](int a, int b) {
      const double pa = probs[static_cast<std::size_t>(a)], pb = probs[static_cast<std::size_t>(b)];
      return pa != pb ? pa > pb : a < b;
    };
    kept = 0;
    mass = 0.0;
    int sorted = 0;
    while (kept < vocab) {
      if (kept == sorted) {
        const int next = std::min(vocab, std::max(64, 2 * sorted));
        std::partial_sort(order.begin() + sorted, order.begin() + next, order.end(), by_prob);
        sorted = next;
      }
      mass += probs[static_cast<std::size_t>(order[static_cast<std::size_t>(kept)])];
      ++kept;
      if (mass > options.top_p) break;
    }
  }
  double first = -1.0, second = 0.0;
  for (double p : probs) {
    if (p > first) {
      second = std::max(second, first);
      first = p;
    } else if (p > second) {
      second = p;
    }
  }
  PositionStats s;
  s.p2 = static_cast<float>(second);
  s.entropy = static_cast<float>(entropy);
  const double u = rng.uniform_double() * mass;
  double acc = 0.0;
  int pick = order[static_cast<std::size_t>(kept - 1)];
  for (int i = 0; i < kept; ++i) {
    acc += probs[static_cast<std::size_t>(order[static_cast<std::size_t>(i)])];
    if (u < acc) {
      pick = order[static_cast<std::size_t>(i)];
      break;
    }
  }
  s.token = pick;
  s.p1 = static_cast<float>(probs[static_cast<std::size_t>(pick)] / mass);
  return s;
}

}  // namespace blockdiff::decode
