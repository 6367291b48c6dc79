// Fast-dLLM v2 decoding written as a literal transcription of the pseudo-code of §3.3 (Threshold,
// greedy or sampled), on the naive double-precision model, with the fixes of DESIGN.md (prefill
// when P >= B, exact max_new_tokens). It shares no code with blockdiff's decoder; the tests
// compare the two, the sub-block (DualCache) path above all. Sampling draws each masked position
// of the sub-block, left to right, at a uniform number from a generator seeded as a decode row's
// (op::Sample's rule, sample_reference.hpp), and its confidence is the drawn token's probability
// within the nucleus.
#pragma once

#include <algorithm>
#include <cstdint>
#include <optional>
#include <vector>

#include "blockdiff/core/rng.hpp"
#include "naive_model.hpp"
#include "sample_reference.hpp"

namespace blockdiff::test {

struct ReferenceResult {
  std::vector<int> tokens;
  int prefill = 0, block = 0, sub_block = 0, commit = 0;
};

struct ReferenceSampling {
  float temperature = 1.0f, top_p = 1.0f;
  std::uint64_t seed = 0;
};

inline ReferenceResult reference_generate(const NaiveQwen2& model, std::vector<int> x, int B, int S, double thr,
                                          bool dualcache, int mask, std::optional<int> eos, int max_new,
                                          std::optional<ReferenceSampling> sampling = std::nullopt) {
  ReferenceResult res;
  Rng rng(sampling ? sampling->seed : 0);
  const int P = static_cast<int>(x.size()), limit = P + max_new;
  auto bc = [B](int q, int k) { return k / B <= q / B; };
  auto full = [](int, int) { return true; };
  auto argmax = [](const std::vector<double>& v) { return static_cast<int>(std::max_element(v.begin(), v.end()) - v.begin()); };
  auto store = model.make_store();
  if (P >= B) {
    const int n = P / B * B;
    auto lg = model.forward(std::vector<int>(x.begin(), x.begin() + n), 0, store, n, bc);
    ++res.prefill;
    if (P % B == 0) x.push_back(argmax(lg[static_cast<std::size_t>(n - 1)]));
  }
  auto finished = [&] {
    if (static_cast<int>(x.size()) >= limit) return true;
    return eos && std::find(x.begin() + P, x.end(), *eos) != x.end();
  };
  while (!finished()) {
    const int c = static_cast<int>(x.size()) / B * B, L0 = static_cast<int>(x.size());
    x.resize(static_cast<std::size_t>(c + B), mask);
    bool blk_valid = false;
    bool next_block = false;
    while (!next_block) {
      // EOS committed with nothing masked before it: the block (and the generation) ends.
      bool eos_done = false;
      for (int j = L0; j < c + B; ++j) {
        if (x[static_cast<std::size_t>(j)] == mask) break;
        if (eos && x[static_cast<std::size_t>(j)] == *eos) eos_done = true;
        if (eos_done) break;
      }
      bool below_limit_done = limit <= c + B;
      for (int j = L0; j < std::min(limit, c + B); ++j) below_limit_done &= x[static_cast<std::size_t>(j)] != mask;
      if (eos_done || below_limit_done) goto done;
      if (std::find(x.begin() + c, x.end(), mask) == x.end()) {
        auto lg = model.forward(std::vector<int>(x.begin() + c, x.end()), c, store, c + B, bc);
        ++res.commit;
        x.push_back(argmax(lg[static_cast<std::size_t>(B - 1)]));
        next_block = true;
        continue;
      }
      int s = 0;
      while (std::find(x.begin() + c + s * S, x.begin() + c + s * S + S, mask) == x.begin() + c + s * S + S) ++s;
      const int lo = s * S, hi = lo + S;
      std::vector<std::vector<double>> pred(static_cast<std::size_t>(B));  // pred[j]: logits predicting offset j
      if (dualcache && blk_valid && x[static_cast<std::size_t>(c + lo)] != mask) {
        auto lg = model.forward(std::vector<int>(x.begin() + c + lo, x.begin() + c + hi), c + lo, store, c + B, full);
        ++res.sub_block;
        for (int j = lo + 1; j < hi; ++j) pred[static_cast<std::size_t>(j)] = lg[static_cast<std::size_t>(j - lo - 1)];
      } else {
        auto lg = model.forward(std::vector<int>(x.begin() + c, x.end()), c, store, c + B, bc);
        ++res.block;
        blk_valid = dualcache;
        for (int j = 1; j < B; ++j) pred[static_cast<std::size_t>(j)] = lg[static_cast<std::size_t>(j - 1)];
      }
      double best = -1;
      int best_j = -1;
      std::vector<int> sel;
      std::vector<int> tok(static_cast<std::size_t>(B));
      for (int j = lo; j < hi; ++j) {
        if (x[static_cast<std::size_t>(c + j)] != mask) continue;
        const auto& l = pred[static_cast<std::size_t>(j)];
        double conf;
        if (sampling) {
          const SampleDistribution dist(std::vector<float>(l.begin(), l.end()), sampling->temperature, sampling->top_p);
          const int t = dist.draw(rng.uniform_double());
          tok[static_cast<std::size_t>(j)] = t;
          conf = dist.p[static_cast<std::size_t>(t)] / dist.mass;
        } else {
          const double m = *std::max_element(l.begin(), l.end());
          double z = 0;
          for (double v : l) z += std::exp(v - m);
          conf = 1.0 / z;
          tok[static_cast<std::size_t>(j)] = argmax(l);
        }
        if (conf > thr) sel.push_back(j);
        if (conf > best) best = conf, best_j = j;
      }
      if (std::find(sel.begin(), sel.end(), best_j) == sel.end()) sel.push_back(best_j);
      for (int j : sel) x[static_cast<std::size_t>(c + j)] = tok[static_cast<std::size_t>(j)];
    }
  }
done:
  for (int p = P; p < std::min<int>(limit, static_cast<int>(x.size())); ++p) {
    if (x[static_cast<std::size_t>(p)] == mask) break;
    res.tokens.push_back(x[static_cast<std::size_t>(p)]);
    if (eos && x[static_cast<std::size_t>(p)] == *eos) break;
  }
  return res;
}

}  // namespace blockdiff::test
