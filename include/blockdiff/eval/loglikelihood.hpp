// First-token log-likelihood: how Fast-dLLM v2 scores multiple-choice tasks (MMLU, GPQA).
//
// The official evaluation (v2/eval.py, get_loglikelihood; FASTDLLM_V2.md §3.6) scores a
// continuation `target` of a context `prefix` with one forward, from an empty cache and under the
// block-causal mask that decoding uses, over the scoring view
//
//     prefix   [MASK]   target[1:]   EOS   [MASK] ... [MASK]
//              ^ target[0]           ^ position prefix + target
//
// padded with [MASK] to the next multiple of the block strictly past prefix + target: where they
// end on a block boundary a whole block of padding follows, so the EOS is always there. The score
// is log p(target[0]) read, as token shift says, from the logits of the position before it.
// Only the first target token is scored, but the rest of the target is in the view: where it lies
// in the scored position's block, which attends both ways, it conditions the score. Where the
// prefix ends on a block boundary the scored position is the last of its block and sees the
// prefix alone, so continuations that begin with the same token tie. Multiple-choice prompts
// (MMLU's " A", " B", ...) give choices of one token each.
//
// Under the block-causal mask that logit sees the view's blocks up to its own and no further, and
// the blocks before its own hold the prefix alone. So blockdiff runs only those: the prefix's
// whole blocks once into a KV cache (once for all the choices of a question: consecutive requests
// with the same prefix share it), then the scored block against it, as the decoder prefills and
// runs a block. The padding past the scored block, which the official forward computes and never
// reads, is not run. The result is the view's, as the tests check against a forward over all of it.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "blockdiff/core/error.hpp"
#include "blockdiff/decode/prompt.hpp"
#include "blockdiff/model/concept.hpp"

namespace blockdiff::eval {

//! A continuation to score after a context.
struct ScoreRequest {
  std::vector<int> prefix;  //!< the context, at least one token
  std::vector<int> target;  //!< the continuation, at least one token; target[0] is scored
};

struct ScoreOptions {
  int mask_id = -1;  //!< the model's [MASK]
  int eos_id = -1;   //!< written right after the target (the official code: the tokenizer's EOS)
  int batch = 16;    //!< rows per forward: prefixes in a prefill, scored blocks in a block forward
};

struct TokenScore {
  double loglikelihood = 0;  //!< log p(target[0]) in the scoring view (natural log, computed in f64)
  int argmax = -1;           //!< the most probable token there (the lowest id among equals)
  bool greedy = false;       //!< whether target[0] is that token
};

struct Scores {
  std::vector<TokenScore> scores;  //!< one per request, in order
  int forwards = 0;                //!< prefills and block forwards run
  std::int64_t positions = 0;      //!< tokens those forwards ran, summed over rows
};

//! The scoring view of `r`: prefix, [MASK] for target[0], target[1:], EOS, then [MASK] up to the
//! next multiple of `Block` strictly past prefix + target.
template <int Block>
std::vector<int> scoring_view(const ScoreRequest& r, const ScoreOptions& options) {
  static_assert(Block > 0, "the block must be positive");
  require(!r.prefix.empty() && !r.target.empty(), "scoring view: the prefix and the target need a token each");
  std::vector<int> view = r.prefix;
  view.insert(view.end(), r.target.begin(), r.target.end());
  view[r.prefix.size()] = options.mask_id;
  const std::size_t padded = (view.size() / Block + 1) * Block;
  view.push_back(options.eos_id);
  view.resize(padded, options.mask_id);
  return view;
}

//! The block of the scoring view that holds the scored logit (position prefix - 1).
template <int Block>
int scored_block(const ScoreRequest& r) {
  return static_cast<int>((r.prefix.size() - 1) / Block);
}

//! Refuses what the scoring view cannot hold, naming request `index`: an empty prefix (target[0]
//! would be read from the placeholder logit of position 0) or target, an id outside the
//! vocabulary, the [MASK] id (the view could not tell it from the masks it adds), a scored block
//! past the model's context.
template <int Block>
void check_request(const ScoreRequest& r, const ScoreOptions& options, const io::ModelConfig& config,
                   std::size_t index) {
  const auto where = ::blockdiff::detail::concat("score request ", index);
  require(!r.prefix.empty(), where,
          ": the prefix is empty (the first target token is predicted from the token before it)");
  require(!r.target.empty(), where, ": the target is empty");
  for (const auto* part : {&r.prefix, &r.target}) {
    const char* name = part == &r.prefix ? "prefix" : "target";
    for (std::size_t i = 0; i < part->size(); ++i) {
      const int id = (*part)[i];
      require(id >= 0 && id < config.vocab_size, where, ": token id ", id, " at index ", i, " of the ", name,
              " is outside the vocabulary [0, ", config.vocab_size, ")");
      require(id != options.mask_id, where, ": the ", name, " holds the [MASK] id ", id, " at index ", i,
              ": the scoring view masks with it");
    }
  }
  const std::int64_t end = (std::int64_t(scored_block<Block>(r)) + 1) * Block;
  if (end > config.context())
    fail(where, ": a prefix of ", r.prefix.size(), " tokens is scored in the block of positions [",
          end - Block, ", ", end, "), beyond ", config.describe_context());
}

//! log p(target[0]) of every request (FASTDLLM_V2.md §3.6); result i is request i's. `Block` is
//! the model's block (config.json's bd_size).
template <int Block, LanguageModel Model>
Scores first_token_loglikelihood(Model& model, std::span<const ScoreRequest> requests, const ScoreOptions& options) {
  using Backend = typename Model::backend_type;
  const auto& config = model.config();
  decode::check_token(options.mask_id, config.vocab_size, "[MASK] id");
  decode::check_token(options.eos_id, config.vocab_size, "EOS id");
  require(options.eos_id != options.mask_id, "the EOS id and the [MASK] id are both ", options.mask_id);
  require(options.batch > 0, "score: the batch must be positive, got ", options.batch);
  for (std::size_t i = 0; i < requests.size(); ++i) check_request<Block>(requests[i], options, config, i);

  // Groups of consecutive requests that share the prefix's whole blocks before the scored one (a
  // request scored in block 0 shares nothing, and is a group of its own).
  struct Group {
    std::size_t first = 0, count = 0;
    int block = 0;  // the scored block; blocks [0, block) are the shared prefill
  };
  auto shared = [](const ScoreRequest& a, const ScoreRequest& b) {
    const int block = scored_block<Block>(a);
    return block > 0 && block == scored_block<Block>(b) &&
           std::equal(a.prefix.begin(), a.prefix.begin() + std::ptrdiff_t(block) * Block, b.prefix.begin());
  };
  std::vector<Group> groups;
  for (std::size_t i = 0; i < requests.size(); ++i) {
    if (!groups.empty() && shared(requests[groups.back().first], requests[i]))
      ++groups.back().count;
    else
      groups.push_back({i, 1, scored_block<Block>(requests[i])});
  }

  const auto vocab = static_cast<std::size_t>(config.vocab_size);
  const auto batch = static_cast<std::size_t>(options.batch);
  Scores result;
  result.scores.resize(requests.size());
  std::vector<model::KvCache<Backend>> caches;  // one a group of the chunk, kept and grown as needed
  std::vector<std::vector<int>> views;
  std::vector<model::ForwardRow<Backend>> rows;
  std::vector<std::size_t> scored;  // the request of each row of a block forward
  std::vector<float> logits(vocab);
  auto run = [&](auto&& add_rows) {
    rows.clear();
    add_rows();
    if (rows.empty()) return TensorView<const float>{};
    for (const auto& row : rows) result.positions += static_cast<std::int64_t>(row.tokens.size());
    ++result.forwards;
    return model.template forward<mask::BlockCausal<Block>>(rows);
  };
  for (std::size_t g0 = 0; g0 < groups.size(); g0 += batch) {
    const std::span<const Group> chunk(groups.data() + g0, std::min(batch, groups.size() - g0));
    for (std::size_t g = 0; g < chunk.size(); ++g) {
      const int need = (chunk[g].block + 1) * Block;
      if (g == caches.size())
        caches.push_back(model.make_cache(need));
      else if (caches[g].capacity() < need)
        caches[g] = model.make_cache(need);
    }
    // The prefix's whole blocks before the scored one, once a group, into its cache.
    run([&] {
      for (std::size_t g = 0; g < chunk.size(); ++g) {
        if (chunk[g].block == 0) continue;
        model::ForwardRow<Backend> row;
        row.tokens = std::span<const int>(requests[chunk[g].first].prefix).first(std::size_t(chunk[g].block) * Block);
        row.advance = true;
        row.logits_begin = row.logits_end = 0;
        row.cache = &caches[g];
        rows.push_back(row);
      }
    });
    // Round k scores the k-th request of every group with one, its scored block against the cache.
    std::size_t rounds = 0;
    for (const auto& g : chunk) rounds = std::max(rounds, g.count);
    for (std::size_t k = 0; k < rounds; ++k) {
      views.clear();
      scored.clear();
      for (std::size_t g = 0; g < chunk.size(); ++g)
        if (k < chunk[g].count) {
          scored.push_back(chunk[g].first + k);
          views.push_back(scoring_view<Block>(requests[scored.back()], options));
        }
      const auto out = run([&] {
        std::size_t v = 0;
        for (std::size_t g = 0; g < chunk.size(); ++g) {
          if (k >= chunk[g].count) continue;
          const int begin = chunk[g].block * Block;
          model::ForwardRow<Backend> row;
          row.tokens = std::span<const int>(views[v]).subspan(std::size_t(begin), Block);
          row.first_slot = begin;
          row.logits_begin = static_cast<int>(requests[scored[v]].prefix.size()) - 1 - begin;
          row.logits_end = row.logits_begin + 1;
          row.cache = &caches[g];
          rows.push_back(row);
          ++v;
        }
      });
      for (std::size_t r = 0; r < scored.size(); ++r) {
        Backend::download(logits.data(), out.data() + model.logit_offset(r) * static_cast<std::int64_t>(vocab), vocab);
        const auto top = std::max_element(logits.begin(), logits.end());
        double sum = 0;
        for (float x : logits) sum += std::exp(static_cast<double>(x) - *top);
        const int target = requests[scored[r]].target[0];
        auto& s = result.scores[scored[r]];
        s.argmax = static_cast<int>(top - logits.begin());
        s.loglikelihood = static_cast<double>(logits[static_cast<std::size_t>(target)]) - *top - std::log(sum);
        s.greedy = target == s.argmax;
      }
    }
  }
  return result;
}

//! A multiple-choice question scored by first-token log-likelihood.
struct MultipleChoice {
  std::vector<TokenScore> scores;  //!< one per choice
  int chosen = -1;                 //!< the choice of highest log-likelihood (the first among equals)
  bool tied = false;               //!< whether another choice scored the same (the same scored block)
};

//! The choice of highest log-likelihood among `scores`, one per choice: lm-eval's argmax.
inline MultipleChoice choose(std::span<const TokenScore> scores) {
  require(!scores.empty(), "multiple choice: no choices");
  MultipleChoice mc;
  mc.scores.assign(scores.begin(), scores.end());
  mc.chosen = 0;
  for (std::size_t i = 1; i < scores.size(); ++i)
    if (scores[i].loglikelihood > scores[static_cast<std::size_t>(mc.chosen)].loglikelihood) mc.chosen = int(i);
  const double best = scores[static_cast<std::size_t>(mc.chosen)].loglikelihood;
  for (std::size_t i = 0; i < scores.size(); ++i)
    mc.tied = mc.tied || (int(i) != mc.chosen && scores[i].loglikelihood == best);
  return mc;
}

//! The choice among `choices` that `model` scores highest after `prefix`, as the official
//! evaluation answers MMLU and GPQA.
template <int Block, LanguageModel Model>
MultipleChoice multiple_choice(Model& model, const std::vector<int>& prefix,
                               std::span<const std::vector<int>> choices, const ScoreOptions& options) {
  require(!choices.empty(), "multiple choice: no choices");
  std::vector<ScoreRequest> requests;
  for (const auto& c : choices) requests.push_back({prefix, c});
  return choose(first_token_loglikelihood<Block>(model, requests, options).scores);
}

}  // namespace blockdiff::eval
