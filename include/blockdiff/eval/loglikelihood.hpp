// Log-likelihood scoring of continuations: how Fast-dLLM v2 scores multiple-choice tasks (MMLU,
// GPQA), and how an AR baseline is scored on the same requests.
//
// scoring::FirstToken<Block> is the official evaluation (v2/eval.py, get_loglikelihood;
// FASTDLLM_V2.md §3.6). It scores a continuation `target` of a context `prefix` with one forward,
// from an empty cache and under the block-causal mask that decoding uses, over the scoring view
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
// scoring::Causal is lm-eval's log-likelihood of an AR model: the sum of log p(target[i]) over
// the whole target, each from the causal logits of the position before it.
//
// Either way a scored logit sees the positions up to its own block (or its own position) and no
// further, and the blocks before that hold the prefix alone. So blockdiff runs only those: the
// shared part of the prefix once into a KV cache (once for all the choices of a question:
// consecutive requests with the same shared part share it), then each request's scored part
// against it, as the decoder prefills and runs a block; requests whose scored parts are the same
// (choices of one token, which the view masks) share that run too, each reading its own logit.
// Prefixes that begin alike (the few-shot examples before each question of a task) run what they
// share once too: a cache is reused as far as its next prefix agrees with its last, and copied
// from another that agrees further; a pool of caches (ScoreOptions::caches) keeps the examples of
// several tasks whose questions interleave, and an eval::Scorer keeps it from one call to the
// next. The padding past the scored block, which the official forward computes and never reads,
// is not run. The results are the whole view's, as the tests check against a naive forward over
// all of it.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "blockdiff/backend/kernel.hpp"
#include "blockdiff/core/error.hpp"
#include "blockdiff/decode/prompt.hpp"
#include "blockdiff/model/concept.hpp"

namespace blockdiff::eval {

//! A continuation to score after a context.
struct ScoreRequest {
  std::vector<int> prefix;  //!< the context, at least one token
  std::vector<int> target;  //!< the continuation, at least one token
};

struct ScoreOptions {
  int mask_id = -1;  //!< the model's [MASK] (FirstToken only)
  int eos_id = -1;   //!< written right after the target (FirstToken only; the official code: the tokenizer's EOS)
  int batch = 16;    //!< rows per forward: shared prefixes in a prefill, scored parts in a scoring forward
  //! What a prefill forward is worth, in positions: the price at which a batch weighs copying the
  //! K/V its prefixes share (few-shot examples) against running them again. A copy puts the rest
  //! of its prefix in a prefill forward after its source's; a batch copies every share of a block
  //! or more where the positions that saves outweigh the forwards it adds, and otherwise only the
  //! shares of min_copy tokens or more (not the first words that questions share).
  int min_copy = 64;
  //! KV caches kept from batch to batch and call to call, each with the prefix it holds: this
  //! many, or one a group of a batch (a question's choices) where that is more. More keep the
  //! examples of more tasks where questions of many tasks interleave (lm-eval orders its requests
  //! by length), at a cache's memory each; the least recently used is given up first.
  int caches = 8;
};

struct TokenScore {
  double loglikelihood = 0;  //!< the sum of the scored tokens' log-probabilities (natural log)
  int argmax = -1;           //!< the most probable token at the first scored position (the lowest id among equals)
  bool greedy = false;       //!< whether every scored token is its position's most probable
};

struct Scores {
  std::vector<TokenScore> scores;  //!< one per request, in order
  int forwards = 0;                //!< prefills and scoring forwards run
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

//! The positions that scoring `r` runs: through the end of the scored block (first-token scoring
//! at `block`), or the prefix and all of the target but its last token (causal, no block).
inline std::int64_t scored_positions(const ScoreRequest& r, std::optional<int> block) {
  const auto prefix = static_cast<std::int64_t>(r.prefix.size());
  if (!block) return prefix + static_cast<std::int64_t>(r.target.size()) - 1;
  return ((prefix - 1) / *block + 1) * *block;
}

namespace detail {
//! Refuses an empty prefix or target and ids outside the vocabulary, naming request `where`.
inline void check_ids(const ScoreRequest& r, const io::ModelConfig& config, const std::string& where) {
  require(!r.prefix.empty(), where,
          ": the prefix is empty (the first target token is predicted from the token before it)");
  require(!r.target.empty(), where, ": the target is empty");
  for (const auto* part : {&r.prefix, &r.target})
    for (std::size_t i = 0; i < part->size(); ++i)
      require((*part)[i] >= 0 && (*part)[i] < config.vocab_size, where, ": token id ", (*part)[i], " at index ", i,
              " of the ", part == &r.prefix ? "prefix" : "target", " is outside the vocabulary [0, ",
              config.vocab_size, ")");
}
}  // namespace detail

//! How a request is scored: the mask of its forwards, the part of the prefix that requests can
//! share (`shared`, prefilled once into the cache), how much of a common start of two such parts
//! has the same K/V in both (`reusable`), the tokens run after it (`scored_part`, of
//! `scored_length`), and which of their logit rows score which target tokens (`scored_tokens`
//! rows from `first_row` score target[0], target[1], ...).
namespace scoring {

//! Fast-dLLM v2's: log p(target[0]) in the scoring view, under BlockCausal<Block>.
template <int Block>
struct FirstToken {
  using mask_type = mask::BlockCausal<Block>;

  static int scored_block(const ScoreRequest& r) { return static_cast<int>((r.prefix.size() - 1) / Block); }
  //! The prefix's whole blocks before the scored one.
  static std::size_t shared(const ScoreRequest& r) { return std::size_t(scored_block(r)) * Block; }
  //! Of `common` tokens two prefixes share, those whose K/V are the same in both: whole blocks
  //! (a block's K/V depend on all of its tokens).
  static std::size_t reusable(std::size_t common) { return common / Block * Block; }
  //! The scoring view's block that holds the scored logit.
  static std::vector<int> scored_part(const ScoreRequest& r, const ScoreOptions& options) {
    const auto view = scoring_view<Block>(r, options);
    const auto begin = view.begin() + std::ptrdiff_t(shared(r));
    return std::vector<int>(begin, begin + Block);
  }
  static std::size_t scored_length(const ScoreRequest&) { return Block; }
  static std::size_t scored_tokens(const ScoreRequest&) { return 1; }
  static int first_row(const ScoreRequest& r) { return static_cast<int>(r.prefix.size() - 1 - shared(r)); }

  static void check_options(const ScoreOptions& options, const io::ModelConfig& config) {
    decode::check_token(options.mask_id, config.vocab_size, "[MASK] id");
    decode::check_token(options.eos_id, config.vocab_size, "EOS id");
    require(options.eos_id != options.mask_id, "the EOS id and the [MASK] id are both ", options.mask_id);
  }
  //! Refuses, besides detail::check_ids, the [MASK] id in a target (the view masks target[0]
  //! itself: a continuation holding it scores nothing the model could write) and a scored block
  //! past the model's context. A prefix may hold it: the pads the recipe's packing puts after
  //! each training example (few-shot examples laid out as training saw them, train::tasks::few_shot).
  static void check(const ScoreRequest& r, const ScoreOptions& options, const io::ModelConfig& config,
                    const std::string& where) {
    detail::check_ids(r, config, where);
    for (std::size_t i = 0; i < r.target.size(); ++i)
      require(r.target[i] != options.mask_id, where, ": the target holds the [MASK] id ", options.mask_id,
              " at index ", i, ": the scoring view masks with it");
    const std::int64_t end = scored_positions(r, Block);
    if (end > config.context())
      fail(where, ": a prefix of ", r.prefix.size(), " tokens is scored in the block of positions [", end - Block,
           ", ", end, "), beyond ", config.describe_context());
  }
};

//! An AR model's (lm-eval's loglikelihood): the sum of log p(target[i]) over the whole target,
//! under the causal mask.
struct Causal {
  using mask_type = mask::Causal;

  //! Every prefix token but the last, whose logit scores target[0].
  static std::size_t shared(const ScoreRequest& r) { return r.prefix.size() - 1; }
  //! A position's K/V depend on the tokens up to it: all that two prefixes share.
  static std::size_t reusable(std::size_t common) { return common; }
  static std::vector<int> scored_part(const ScoreRequest& r, const ScoreOptions&) {
    std::vector<int> run{r.prefix.back()};
    run.insert(run.end(), r.target.begin(), r.target.end() - 1);
    return run;
  }
  static std::size_t scored_length(const ScoreRequest& r) { return r.target.size(); }
  static std::size_t scored_tokens(const ScoreRequest& r) { return r.target.size(); }
  static int first_row(const ScoreRequest&) { return 0; }

  static void check_options(const ScoreOptions&, const io::ModelConfig&) {}
  static void check(const ScoreRequest& r, const ScoreOptions&, const io::ModelConfig& config,
                    const std::string& where) {
    detail::check_ids(r, config, where);
    const auto end = scored_positions(r, std::nullopt);
    if (end > config.context())
      fail(where, ": a prefix of ", r.prefix.size(), " and a target of ", r.target.size(), " tokens run ", end,
           " positions, beyond ", config.describe_context());
  }
};

}  // namespace scoring

//! Scores requests as `Scoring` does, a call at a time, keeping its KV caches from call to call:
//! what one call's prefixes left in them (a task's few-shot examples) is reused by the next as far
//! as its prefixes agree, as it is from batch to batch within a call. So a harness that scores a
//! task in calls of a few questions, to report progress, runs the task's examples about once, as do
//! questions of up to options.caches tasks asked in any order. Within a call, requests are
//! grouped by the prefix part they share, and a batch of groups at a time has its shared parts
//! prefilled (`prefill`) and its scored parts run (`score`). The model's weights must not change
//! while the caches are kept: `reset()` drops them.
template <class Scoring, LanguageModel Model>
class Scorer {
  using Backend = typename Model::backend_type;

 public:
  Scorer(Model& model, const ScoreOptions& options) : model_(model), options_(options) {
    Scoring::check_options(options, model.config());
    require(options.batch > 0, "score: the batch must be positive, got ", options.batch);
    require(options.min_copy > 0, "score: min_copy must be positive, got ", options.min_copy);
    require(options.caches >= 0, "score: caches must not be negative, got ", options.caches);
  }

  //! The log-likelihood of every request; result i is request i's.
  Scores operator()(std::span<const ScoreRequest> requests) {
    for (std::size_t i = 0; i < requests.size(); ++i)
      Scoring::check(requests[i], options_, model_.config(), ::blockdiff::detail::concat("score request ", i));
    requests_ = requests;
    groups_.clear();
    result_ = Scores{};
    group_requests();
    result_.scores.resize(requests_.size());
    const auto batch = static_cast<std::size_t>(options_.batch);
    try {
      for (std::size_t g0 = 0; g0 < groups_.size(); g0 += batch) {
        const std::span<const Group> chunk(groups_.data() + g0, std::min(batch, groups_.size() - g0));
        make_caches(chunk);
        prefill(chunk);
        score(chunk);
      }
    } catch (...) {
      reset();  // a forward that failed part-way may have written over K/V a cache is said to hold
      throw;
    }
    return std::move(result_);
  }

  //! Drops the caches (after the model's weights change, or to free their memory).
  void reset() { held_.clear(); }

 private:
  //! Consecutive requests with the same shared part, prefilled once into one cache (or with none,
  //! and the same scored part: the choices of a question shorter than its first block).
  struct Group {
    std::size_t first = 0, count = 0, shared = 0;
  };
  //! A kept cache: the shared part whose K/V it holds, and the last batch that ran in it or copied
  //! from it.
  struct Held {
    model::KvCache<Backend> cache;
    std::vector<int> tokens;
    std::uint64_t used = 0;
  };
  //! How a group's shared part gets into its cache.
  struct Prefill {
    std::size_t kept = 0;   // K/V below it are in the cache already (its last shared part agreed)
    std::size_t start = 0;  // K/V below it are there before the prefill: kept, or copied
    int source = -1;        // the kept cache it copies [kept, start) from, if any
    int level = 0;          // which prefill forward runs the rest: the first, or the one after its source's
  };
  //! A distinct scored part, run once for every request it scores.
  struct Run {
    std::size_t group;                  // whose cache it runs against
    std::vector<int> tokens;            // the scored part
    std::vector<std::size_t> requests;  // the requests its logits score
  };
  static constexpr auto none = static_cast<std::size_t>(-1);

  std::span<const int> shared_part(const Group& g) const {
    return std::span<const int>(requests_[g.first].prefix).first(g.shared);
  }
  //! The tokens of a common start of a and b whose K/V depend on that start alone.
  static std::size_t reusable(std::span<const int> a, std::span<const int> b) {
    const auto n = static_cast<std::ptrdiff_t>(std::min(a.size(), b.size()));
    return Scoring::reusable(static_cast<std::size_t>(std::mismatch(a.begin(), a.begin() + n, b.begin()).first - a.begin()));
  }
  //! Whether one scored part, run once, scores both requests: the same logit rows of the same tokens.
  static bool same_rows(const ScoreRequest& a, const ScoreRequest& b) {
    return Scoring::first_row(a) == Scoring::first_row(b) && Scoring::scored_tokens(a) == Scoring::scored_tokens(b);
  }

  void group_requests() {
    for (std::size_t i = 0; i < requests_.size(); ++i) {
      const auto& r = requests_[i];
      const std::size_t shared = Scoring::shared(r);
      const auto same = [&](const Group& g) {
        const auto& first = requests_[g.first];
        if (g.shared != shared) return false;
        if (shared > 0) return std::ranges::equal(std::span(r.prefix).first(shared), shared_part(g));
        return same_rows(first, r) && Scoring::scored_part(first, options_) == Scoring::scored_part(r, options_);
      };
      if (!groups_.empty() && same(groups_.back()))
        ++groups_.back().count;
      else
        groups_.push_back({i, 1, shared});
    }
  }

  // Gives each group of the batch a kept cache to run in, grown as needed. Most agreement first, a
  // group takes the cache that holds the most of its shared part, where it keeps at least half of
  // what that cache holds: at a task's boundary, the cache of the task's last question, wherever
  // it lay in the last batch, and not another task's that shares only its first words (unless
  // every cache left is taken this batch anyway). Otherwise it takes an empty cache, a new one
  // while fewer than options.caches are kept, or the one least recently used.
  void make_caches(std::span<const Group> chunk) {
    ++batch_;
    slot_.assign(chunk.size(), none);
    std::vector<bool> taken(held_.size());
    struct Claim {
      std::size_t agree, group, cache;
    };
    std::vector<Claim> claims;
    auto place = [&](std::size_t g, std::size_t c) {
      slot_[g] = c;
      taken[c] = true;
    };
    auto claim = [&](bool any) {
      claims.clear();
      for (std::size_t g = 0; g < chunk.size(); ++g)
        for (std::size_t c = 0; c < held_.size(); ++c)
          if (const auto n = slot_[g] == none && !taken[c] ? reusable(held_[c].tokens, shared_part(chunk[g])) : 0;
              n > 0 && (any || 2 * n >= held_[c].tokens.size()))
            claims.push_back({n, g, c});
      std::ranges::sort(claims, [](const Claim& x, const Claim& y) {  // most agreement first, then in order
        if (x.agree != y.agree) return x.agree > y.agree;
        return std::tie(x.group, x.cache) < std::tie(y.group, y.cache);
      });
      for (const auto& [n, g, c] : claims)
        if (slot_[g] == none && !taken[c]) place(g, c);
    };
    claim(false);
    // Where every cache left will be taken anyway, the rest take them by agreement alone.
    const std::size_t keep = std::max(static_cast<std::size_t>(options_.caches), chunk.size());
    if (held_.size() >= keep && std::ranges::count(taken, false) == std::ranges::count(slot_, none)) claim(true);
    const auto age = [&](std::size_t c) { return held_[c].tokens.empty() ? 0 : held_[c].used + 1; };
    for (std::size_t g = 0; g < chunk.size(); ++g) {
      int need = 1;
      for (std::size_t i = chunk[g].first; i < chunk[g].first + chunk[g].count; ++i)
        need = std::max(need, static_cast<int>(chunk[g].shared + Scoring::scored_length(requests_[i])));
      if (slot_[g] == none) {
        std::size_t lru = none;
        for (std::size_t c = 0; c < held_.size(); ++c)
          if (!taken[c] && (lru == none || age(c) < age(lru))) lru = c;
        if (lru == none || (age(lru) > 0 && held_.size() < keep)) {
          lru = held_.size();
          held_.push_back({model_.make_cache(need), {}, 0});
          taken.push_back(false);
        }
        place(g, lru);
      }
      auto& h = held_[slot_[g]];
      if (h.cache.capacity() < need) {
        auto grown = model_.make_cache(need);
        grown.copy_slots(h.cache, 0, static_cast<int>(h.tokens.size()));
        h.cache = std::move(grown);
      }
    }
    kept_.resize(chunk.size());
    for (std::size_t g = 0; g < chunk.size(); ++g) kept_[g] = reusable(held_[slot_[g]].tokens, shared_part(chunk[g]));
  }

  // How each group's shared part gets into its cache, each token run at most once a batch (a
  // prefix tree, one level a forward). A group keeps what its cache holds of its shared part, and
  // copies more from the cache that holds the most of it: before the first prefill forward, from
  // what the kept caches hold (a cache another group runs in, as far as that group keeps it);
  // after an earlier group's forward, from that group's shared part, where that saves at least
  // `least` tokens more, running the rest in the forward after its source's. Returns the plan's
  // cost: the positions it runs and options.min_copy a prefill forward.
  std::int64_t plan(std::span<const Group> chunk, std::size_t least, std::vector<Prefill>& out) const {
    out.assign(chunk.size(), Prefill{});
    std::vector<std::size_t> ready(held_.size());  // what each cache holds before the first forward
    for (std::size_t c = 0; c < held_.size(); ++c) ready[c] = held_[c].tokens.size();
    for (std::size_t g = 0; g < chunk.size(); ++g) ready[slot_[g]] = kept_[g];
    std::int64_t positions = 0;
    std::vector<bool> runs;  // whether a level runs a forward: some group has tokens left after its copy
    for (std::size_t g = 0; g < chunk.size(); ++g) {
      const auto part = shared_part(chunk[g]);
      auto& p = out[g];
      p.kept = p.start = kept_[g];
      for (std::size_t c = 0; c < held_.size(); ++c) {
        if (c == slot_[g]) continue;
        if (const auto from = std::min(reusable(held_[c].tokens, part), ready[c]); from > p.start)
          p = {p.kept, from, static_cast<int>(c), 0};
      }
      for (std::size_t j = 0; j < g; ++j) {
        const auto from = reusable(shared_part(chunk[j]), part);
        if (from < p.kept + least) continue;
        if (from > p.start || (from == p.start && out[j].level + 1 < p.level))
          p = {p.kept, from, static_cast<int>(slot_[j]), out[j].level + 1};
      }
      runs.resize(std::max(runs.size(), static_cast<std::size_t>(p.level) + 1));
      if (p.start < part.size()) runs[static_cast<std::size_t>(p.level)] = true;
      positions += static_cast<std::int64_t>(part.size() - p.start);
    }
    return positions + options_.min_copy * std::ranges::count(runs, true);
  }

  // The shared parts into the caches, as the cheaper of two plans lays them out: copies after a
  // forward of min_copy tokens or more, or of a block or more (the few-shot examples of many
  // questions, where each is shorter than min_copy but together they outweigh a forward).
  void prefill(std::span<const Group> chunk) {
    const auto fewer = plan(chunk, static_cast<std::size_t>(options_.min_copy), plan_);
    if (plan(chunk, 1, other_) < fewer) std::swap(plan_, other_);
    int levels = 0;
    for (const auto& p : plan_) levels = std::max(levels, p.level + 1);
    for (int level = 0; level < levels; ++level) {
      rows_.clear();
      for (std::size_t g = 0; g < chunk.size(); ++g) {
        const auto& p = plan_[g];
        if (p.level != level) continue;
        const auto part = shared_part(chunk[g]);
        auto& cache = held_[slot_[g]].cache;
        if (p.source >= 0)
          cache.copy_slots(held_[static_cast<std::size_t>(p.source)].cache, static_cast<int>(p.kept),
                           static_cast<int>(p.start));
        cache.set_committed(static_cast<int>(part.size()));
        if (p.start == part.size()) continue;
        model::ForwardRow<Backend> row;
        row.tokens = part.subspan(p.start);
        row.first_slot = static_cast<int>(p.start);
        row.advance = true;
        row.logits_begin = row.logits_end = 0;
        row.cache = &cache;
        rows_.push_back(row);
      }
      if (!rows_.empty()) forward();
    }
    for (std::size_t g = 0; g < chunk.size(); ++g) {
      const auto part = shared_part(chunk[g]);
      auto& h = held_[slot_[g]];
      h.tokens.assign(part.begin(), part.end());
      h.used = batch_;
      if (plan_[g].source >= 0) held_[static_cast<std::size_t>(plan_[g].source)].used = batch_;
    }
  }

  // The batch's distinct scored parts, each run once against the cache of the first group that
  // has it, for all the requests it scores: choices of one token (MMLU's " A" .. " D") have the
  // same first-token view and differ only in the logit read. Round k runs the k-th part of every
  // group with one.
  void score(std::span<const Group> chunk) {
    runs_.clear();
    for (std::size_t g = 0; g < chunk.size(); ++g)
      for (std::size_t i = chunk[g].first; i < chunk[g].first + chunk[g].count; ++i) {
        auto part = Scoring::scored_part(requests_[i], options_);
        const auto same = std::ranges::find_if(runs_, [&](const Run& other) {
          const auto& r = requests_[other.requests[0]];
          return other.tokens == part && same_rows(r, requests_[i]) &&
                 (other.group == g || std::ranges::equal(shared_part(chunk[other.group]), shared_part(chunk[g])));
        });
        if (same == runs_.end())
          runs_.push_back({g, std::move(part), {i}});
        else
          same->requests.push_back(i);
      }
    std::vector<std::vector<const Run*>> of_group(chunk.size());
    for (const auto& part : runs_) of_group[part.group].push_back(&part);
    std::size_t rounds = 0;
    for (const auto& parts : of_group) rounds = std::max(rounds, parts.size());
    std::vector<const Run*> members;  // a scoring forward's rows
    for (std::size_t k = 0; k < rounds; ++k) {
      members.clear();
      rows_.clear();
      for (std::size_t g = 0; g < chunk.size(); ++g) {
        if (k >= of_group[g].size()) continue;
        const Run& part = *of_group[g][k];
        const auto& r = requests_[part.requests[0]];
        model::ForwardRow<Backend> row;
        row.tokens = part.tokens;
        row.first_slot = static_cast<int>(chunk[g].shared);
        row.logits_begin = Scoring::first_row(r);
        row.logits_end = row.logits_begin + static_cast<int>(Scoring::scored_tokens(r));
        row.cache = &held_[slot_[g]].cache;
        rows_.push_back(row);
        members.push_back(&part);
      }
      const auto out = forward();
      read_scores(out, members);
    }
  }

  // The vocabulary statistics pass gives each row's argmax and its softmax probability p1 =
  // 1 / sum exp(x - x_max), so log p(t) = x_t - x_max + log p1 needs two logits of the row.
  template <class Logits>
  void read_scores(const Logits& out, std::span<const Run* const> members) {
    const auto& config = model_.config();
    stats_.resize(static_cast<std::size_t>(out.dim(0)));
    Kernel<Backend, op::VocabStats<false, false>>::run(out.data(), out.dim(0), config.vocab_size, stats_.data());
    auto logit = [](const float* row, int token) {
      float x = 0;
      Backend::download(&x, row + token, 1);
      return static_cast<double>(x);
    };
    for (std::size_t v = 0; v < members.size(); ++v) {
      const auto& requests = members[v]->requests;
      for (const std::size_t i : requests) result_.scores[i] = TokenScore{0.0, -1, true};
      for (std::size_t t = 0; t < Scoring::scored_tokens(requests_[requests[0]]); ++t) {
        const auto at = model_.logit_offset(v) + static_cast<std::int64_t>(t);
        const auto& st = stats_[static_cast<std::size_t>(at)];
        const float* row = out.data() + at * config.vocab_size;
        const double log_normaliser = logit(row, st.token) - std::log(static_cast<double>(st.p1));  // once a row
        for (const std::size_t i : requests) {
          const int target = requests_[i].target[t];
          auto& s = result_.scores[i];
          s.loglikelihood += logit(row, target) - log_normaliser;
          s.greedy = s.greedy && target == st.token;
          if (t == 0) s.argmax = st.token;
        }
      }
    }
  }

  auto forward() {
    for (const auto& row : rows_) result_.positions += static_cast<std::int64_t>(row.tokens.size());
    ++result_.forwards;
    return model_.template forward<typename Scoring::mask_type>(rows_);
  }

  Model& model_;
  ScoreOptions options_;
  std::span<const ScoreRequest> requests_;
  Scores result_;
  std::vector<Group> groups_;
  std::vector<Held> held_;                  // the kept caches
  std::vector<std::size_t> slot_, kept_;   // each group of the batch: the cache it runs in, what it keeps of it
  std::uint64_t batch_ = 0;                 // batches run
  std::vector<Prefill> plan_, other_;
  std::vector<Run> runs_;
  std::vector<model::ForwardRow<Backend>> rows_;
  std::vector<PositionStats> stats_;
};

//! The log-likelihood of every request as `Scoring` scores it (scoring::FirstToken<Block> or
//! scoring::Causal); result i is request i's. One call of a Scorer, whose caches go with it.
template <class Scoring, LanguageModel Model>
Scores loglikelihood(Model& model, std::span<const ScoreRequest> requests, const ScoreOptions& options) {
  return Scorer<Scoring, Model>(model, options)(requests);
}

//! Fast-dLLM v2's log p(target[0]) of every request (FASTDLLM_V2.md §3.6). `Block` is the
//! model's block (config.json's bd_size).
template <int Block, LanguageModel Model>
Scores first_token_loglikelihood(Model& model, std::span<const ScoreRequest> requests, const ScoreOptions& options) {
  return loglikelihood<scoring::FirstToken<Block>>(model, requests, options);
}

//! An AR model's log-likelihood of each whole target (lm-eval's), under the causal mask.
template <LanguageModel Model>
Scores causal_loglikelihood(Model& model, std::span<const ScoreRequest> requests, const ScoreOptions& options) {
  return loglikelihood<scoring::Causal>(model, requests, options);
}

//! A multiple-choice question scored by log-likelihood.
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

//! The choice among `choices` that `model` scores highest after `prefix` as `Scoring` scores it:
//! scoring::FirstToken<Block> as the official evaluation answers MMLU and GPQA.
template <class Scoring, LanguageModel Model>
MultipleChoice multiple_choice(Model& model, const std::vector<int>& prefix,
                               std::span<const std::vector<int>> choices, const ScoreOptions& options) {
  require(!choices.empty(), "multiple choice: no choices");
  std::vector<ScoreRequest> requests;
  for (const auto& c : choices) requests.push_back({prefix, c});
  return choose(loglikelihood<Scoring>(model, requests, options).scores);
}

}  // namespace blockdiff::eval
