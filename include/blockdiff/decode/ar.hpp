// The autoregressive baseline: greedy decoding with the KV cache.
//
// Every speed-up of block diffusion is measured against this. A batch of prompts of different
// lengths is prefilled in one forward (token-causal mask), then every active row advances one
// token per forward; a row stops at EOS (kept) or after max_new_tokens, and leaves the batch,
// freeing its cache. The first new token comes from the prefill, so n new tokens cost one prefill
// and n - 1 decode forwards.
#pragma once

#include <algorithm>
#include <chrono>
#include <optional>
#include <span>
#include <vector>

#include "blockdiff/backend/host.hpp"
#include "blockdiff/core/error.hpp"
#include "blockdiff/decode/prompt.hpp"
#include "blockdiff/model/concept.hpp"

namespace blockdiff::decode {

struct ArOptions {
  int max_new_tokens = 128;
  std::optional<int> eos_id;  //!< stop token; none means run to max_new_tokens
};

struct ArResult {
  std::vector<int> tokens;  //!< new tokens only, the EOS included when it was produced
  int prefill_forwards = 0;
  int decode_forwards = 0;
  double seconds = 0;
};

//! Greedy AR decoding of every prompt; row r of the result is what prompt r gives alone.
template <LanguageModel M>
std::vector<ArResult> ar_generate(M& model, std::span<const std::vector<int>> prompts, const ArOptions& options) {
  using Backend = typename M::backend_type;
  const auto& config = model.config();
  require(options.max_new_tokens >= 0, "max_new_tokens must be >= 0, got ", options.max_new_tokens);
  if (options.eos_id) check_token(*options.eos_id, config.vocab_size, "EOS id");
  for (std::size_t r = 0; r < prompts.size(); ++r)
    check_prompt(prompts[r], options.max_new_tokens, config, r, prompts.size());

  const auto start = std::chrono::steady_clock::now();
  struct Row {
    std::size_t index;
    std::vector<int> seq;
    model::KvCache<Backend> cache;
    int produced = 0;
  };
  std::vector<ArResult> results(prompts.size());
  std::vector<Row> active;
  for (std::size_t r = 0; r < prompts.size(); ++r) {
    if (options.max_new_tokens == 0) continue;
    active.push_back({r, prompts[r], model.make_cache(static_cast<int>(prompts[r].size()) + options.max_new_tokens), 0});
  }
  std::vector<model::ForwardRow<Backend>> rows;
  std::vector<PositionStats> stats;
  bool prefill = true;
  while (!active.empty()) {
    rows.clear();
    for (auto& a : active) {
      const int n = static_cast<int>(a.seq.size());
      const int first = prefill ? 0 : n - 1;
      model::ForwardRow<Backend> row;
      row.tokens = std::span<const int>(a.seq).subspan(static_cast<std::size_t>(first));
      row.first_slot = first;
      row.advance = true;
      row.logits_begin = n - 1 - first;
      row.cache = &a.cache;
      rows.push_back(row);
    }
    auto logits = model.template forward<mask::Causal>(rows);
    stats.resize(static_cast<std::size_t>(logits.dim(0)));
    Kernel<Backend, op::VocabStats<false, false>>::run(logits.data(), logits.dim(0), config.vocab_size, stats.data());
    std::vector<Row> still;
    for (std::size_t i = 0; i < active.size(); ++i) {
      auto& a = active[i];
      auto& res = results[a.index];
      (prefill ? res.prefill_forwards : res.decode_forwards) += 1;
      const int token = stats[static_cast<std::size_t>(model.logit_offset(i))].token;
      a.seq.push_back(token);
      res.tokens.push_back(token);
      ++a.produced;
      const bool stop = (options.eos_id && token == *options.eos_id) || a.produced >= options.max_new_tokens;
      if (!stop) still.push_back(std::move(a));
    }
    active = std::move(still);
    prefill = false;
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  for (auto& r : results) r.seconds = seconds;
  return results;
}

//! Greedy AR decoding of one prompt.
template <LanguageModel M>
ArResult ar_generate(M& model, const std::vector<int>& prompt, const ArOptions& options) {
  return ar_generate(model, std::span<const std::vector<int>>(&prompt, 1), options).front();
}

}  // namespace blockdiff::decode
