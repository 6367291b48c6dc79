// Fast-dLLM v2 block-diffusion decoding (§3.3 of the notes, with the fixes of DESIGN.md).
//
// A sequence is decoded block by block; blocks are aligned to absolute multiples of B. Every
// complete block of the prompt is prefilled (block-causal); when the prompt ends on a block
// boundary the prefill's last logit gives the first new token. The current block is the prompt
// tail (or that token) followed by [MASK]s. Its sub-blocks are decoded strictly left to right:
// each denoising forward runs the block (or, with the sub-block cache, just the sub-block),
// position j is predicted from the output at j - 1 (token shift), and the unmasking policy
// commits a subset of the sub-block's masked positions. A finished block is re-encoded by the
// commit forward, which appends its K/V to the cache and whose last logit is the next block's
// first token (always greedy). The block stops early once an EOS has been committed with no
// [MASK] before it, and once every position below prompt + max_new_tokens is committed.
//
// Everything a paper ablates is a type: BlockShape<B, S>, the UnmaskingPolicy, the
// CacheStrategy (and its commit mode). Each row of a batch runs its own state machine; one
// batched forward per step serves every row, whatever kind of forward each needs, because all
// of them are block-causal in absolute positions. So a row gets exactly what it gets alone.
#pragma once

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "blockdiff/backend/host.hpp"
#include "blockdiff/backend/kernel.hpp"
#include "blockdiff/core/error.hpp"
#include "blockdiff/core/rng.hpp"
#include "blockdiff/decode/prompt.hpp"
#include "blockdiff/decode/sampling.hpp"
#include "blockdiff/decode/trace.hpp"
#include "blockdiff/model/concept.hpp"
#include "blockdiff/policy/block_shape.hpp"
#include "blockdiff/policy/cache.hpp"
#include "blockdiff/policy/unmask.hpp"

namespace blockdiff::decode {

struct DecodeOptions {
  int max_new_tokens = 128;
  int mask_id = -1;            //!< the [MASK] token; required
  std::optional<int> eos_id;   //!< stop token; none means run to max_new_tokens
  SamplingOptions sampling{};  //!< temperature 0 = greedy
  std::uint64_t seed = 0;      //!< every row samples from its own generator seeded with this
  bool trace = true;           //!< record what each forward committed
  //! Streaming: called with a row's index and its next final tokens, each time a block is fully
  //! decoded (and once more when the row ends). The pieces of a row, in order, are its `tokens`.
  std::function<void(std::size_t row, std::span<const int> tokens)> on_tokens;
};

struct GenerateResult {
  std::vector<int> tokens;  //!< new tokens, cut after the first EOS (kept) and at max_new_tokens
  Trace trace;
  double seconds = 0;  //!< wall time of the whole generate call

  //! New tokens per denoising forward (the paper's parallelism measure).
  double tokens_per_forward() const {
    const int n = trace.denoising_forwards();
    return n ? static_cast<double>(tokens.size()) / n : 0.0;
  }
};

//! Whether a denoising forward asks for the logits of its whole sub-block, so that every step
//! of a sub-block repeats one shape (what a backend that records forwards by shape wants, as the
//! CUDA graphs do), rather than only for the span of the positions still masked (the host). A
//! model may decide it by declaring `static constexpr bool fixed_logit_rows`.
template <class M>
constexpr bool fixed_logit_rows() {
  if constexpr (requires { M::fixed_logit_rows; })
    return M::fixed_logit_rows;
  else
    return M::backend_type::Replay::records;
}

//! Rejects options that no prompt could make right (the mask and EOS ids, max_new_tokens, the
//! sampling), naming what is wrong: what generate() checks before it reads a prompt, for a caller
//! that wants to know before it has one (an interactive session, before its first turn).
inline void check_options(const DecodeOptions& options, const io::ModelConfig& config) {
  require(options.mask_id >= 0, "mask id is not set (give --mask-id or mask_token_id in config.json)");
  check_token(options.mask_id, config.vocab_size, "mask id");
  if (options.eos_id) check_token(*options.eos_id, config.vocab_size, "EOS id");
  require(options.eos_id != options.mask_id, "the EOS id and the mask id are both ", options.mask_id);
  require(options.max_new_tokens >= 0, "max_new_tokens must be >= 0, got ", options.max_new_tokens);
  require(options.sampling.temperature >= 0.0f && std::isfinite(options.sampling.temperature),
          "temperature must be finite and >= 0, got ", options.sampling.temperature);
  require(options.sampling.top_p > 0.0f && options.sampling.top_p <= 1.0f, "top-p must be in (0, 1], got ",
          options.sampling.top_p);
}

namespace detail {

//! The decoder's types, as the values that the bookkeeping of a decode needs.
struct BlockLayout {
  int block = 0, sub_block = 0;
  bool block_cache = true, sub_block_cache = false, commit_forward = true, fixed_logit_rows = false;

  int round_up(int n) const { return (n + block - 1) / block * block; }
};

//! Everything of block-diffusion decoding that does not depend on the decoder's types, only on
//! the backend: checking a request, each row's state machine (which forward it needs next, what
//! a forward commits), streaming and the output. BlockDiffusionDecoder adds the forward, the
//! statistics pass and the unmasking policy, so that a program with many decoders compiles this
//! once per backend. Its larger steps are kept out of line ([[gnu::noinline]]), so that one copy
//! serves every decoder rather than one inlined into each; they run once per row and forward.
template <class Backend>
class BlockDecoding {
 public:
  enum class Phase { start, block };

  struct Row {
    std::size_t index = 0;
    int prompt_len = 0;
    int limit = 0;           // prompt_len + max_new_tokens: positions at or past it are never output
    std::vector<int> x;      // committed tokens [0, c), then the current block [c, c + B)
    model::KvCache<Backend> cache;
    Rng rng{0};
    Phase phase = Phase::start;
    int c = 0;               // first slot of the current block
    int gen_begin = 0;       // first generated offset of the current block
    bool scratch_valid = false;  // the block's K/V were saved by a full-block forward
    int sub = -1;            // the active sub-block
    int step = 0;            // denoising steps taken in it
    int masked_at_sub_start = 0;
    int next_token = -1;     // commit::reuse: the next block's first token, from the last forward
    ForwardKind kind = ForwardKind::block;
    int logits_first_pos = 0;  // block offset predicted by the first requested logit row
    model::ForwardRow<Backend> request;
    Trace trace;
    int streamed_end = 0;    // positions before it were passed to on_tokens
    bool done = false, finished = false;
  };

  explicit BlockDecoding(BlockLayout layout) : l_(layout) {}

  const BlockLayout& layout() const { return l_; }

  //! Rejects a request the decoder cannot serve, naming what is wrong.
  [[gnu::noinline]] void check(std::span<const std::vector<int>> prompts, const DecodeOptions& options, const io::ModelConfig& config) const {
    check_options(options, config);
    for (std::size_t r = 0; r < prompts.size(); ++r) {
      const int limit = static_cast<int>(prompts[r].size()) + options.max_new_tokens;
      check_prompt(prompts[r], options.max_new_tokens, config, r, prompts.size(), l_.round_up(limit) - limit);
      for (std::size_t i = 0; i < prompts[r].size(); ++i)
        require(prompts[r][i] != options.mask_id, prompts.size() > 1 ? ::blockdiff::detail::concat("prompt ", r) : "prompt",
                " contains the mask id ", options.mask_id, " at index ", i);
    }
  }

  //! Row `index` of a batch, decoding `prompt`; `make_cache(slots)` gives its KV cache.
  template <class MakeCache>
  Row start(std::size_t index, const std::vector<int>& prompt, const DecodeOptions& o, MakeCache&& make_cache) const {
    Row row;
    row.index = index;
    row.prompt_len = static_cast<int>(prompt.size());
    row.limit = row.prompt_len + o.max_new_tokens;
    row.x = prompt;
    row.streamed_end = row.prompt_len;
    row.rng = Rng(o.seed);
    if (o.max_new_tokens == 0)
      row.done = true;
    else
      row.cache = make_cache(l_.round_up(row.limit));
    return row;
  }

  //! Decides the row's next forward (its `request`), or that it is done.
  [[gnu::noinline]] void plan(Row& r, const DecodeOptions& o) {
    const int B = l_.block, S = l_.sub_block;
    auto& q = r.request;
    q = {};
    q.cache = &r.cache;
    if (r.phase == Phase::start) {
      const int n = r.prompt_len / B * B;
      if (n > 0) {
        r.kind = ForwardKind::prefill;
        q.tokens = std::span<const int>(r.x).first(static_cast<std::size_t>(n));
        q.first_slot = 0;
        q.advance = true;
        const bool boundary = r.prompt_len % B == 0;
        q.logits_begin = boundary ? n - 1 : n;
        q.logits_end = n;
        return;
      }
      open_block(r, 0, o);
    }
    while (true) {
      const int hi_limit = std::min(B, r.limit - r.c);  // offsets at or past it are never output
      if (eos_done(r, o) || (!has_mask(r, r.gen_begin, hi_limit, o.mask_id) && r.limit <= r.c + B)) {
        r.done = true;
        return;
      }
      if (!has_mask(r, 0, B, o.mask_id)) {
        stream(r, r.c + B, o);
        if (l_.commit_forward) {
          r.kind = ForwardKind::commit;
          set_block_tokens(r);
          q.advance = true;
          q.logits_begin = (l_.block_cache ? 0 : r.c) + B - 1;
          q.logits_end = q.logits_begin + 1;
          return;
        }
        // Keep the last denoising forward's K/V and its last-row prediction.
        r.cache.set_committed(r.c + B);
        r.x.resize(static_cast<std::size_t>(r.c + B));
        append_next_token(r, r.next_token, o);
        if (r.done) return;
        open_block(r, r.c + B, o);
        continue;
      }
      // The first sub-block with a [MASK] is the active one.
      int s = 0;
      while (!has_mask(r, s * S, s * S + S, o.mask_id)) ++s;
      if (s != r.sub) {
        r.sub = s;
        r.step = 0;
        r.masked_at_sub_start = 0;
        for (int j = s * S; j < s * S + S; ++j) r.masked_at_sub_start += block(r)[j] == o.mask_id;
      }
      const int lo = s * S, hi = lo + S;
      const bool want_last = !l_.commit_forward && hi == B;
      // A sub-block forward (S queries against [committed ; saved block K/V], rows overwritten)
      // needs the sub-block's first token; otherwise the whole block runs.
      const bool sub_block_forward = l_.sub_block_cache && r.scratch_valid && block(r)[lo] != o.mask_id;
      // Block offsets whose prediction this forward needs, [first, end): position j is read from
      // the logit row of j - 1. Narrowed to the masked span unless the model wants fixed shapes.
      int first = sub_block_forward ? lo + 1 : std::max(lo, 1), end = want_last ? B + 1 : hi;
      if (!l_.fixed_logit_rows) {
        while (first + 1 < hi && block(r)[first] != o.mask_id) ++first;
        if (!want_last)
          while (end - 1 > first && block(r)[end - 1] != o.mask_id) --end;
      }
      r.logits_first_pos = first;
      if (sub_block_forward) {
        r.kind = ForwardKind::sub_block;
        q.tokens = std::span<const int>(r.x).subspan(static_cast<std::size_t>(r.c + lo), static_cast<std::size_t>(S));
        q.first_slot = r.c + lo;
        q.kv_end = r.c + B;
        q.logits_begin = first - 1 - lo;
        q.logits_end = end - 1 - lo;
      } else {
        r.kind = ForwardKind::block;
        set_block_tokens(r);
        const int base = l_.block_cache ? 0 : r.c;
        q.logits_begin = base + first - 1;
        q.logits_end = base + end - 1;
        if (l_.sub_block_cache) r.scratch_valid = true;
      }
      return;
    }
  }

  //! After a prefill or commit forward: opens the next block, with its first token from the
  //! statistics of the row's one logit row when the forward asked for one (a prefill asks only
  //! when the prompt ends on a block boundary).
  [[gnu::noinline]] void take_next_token(Row& r, std::span<const PositionStats> stats, TraceStep& step,
                                         const DecodeOptions& o) {
    const int B = l_.block;
    if (r.kind == ForwardKind::prefill) {
      const int n = r.prompt_len / B * B;
      if (r.prompt_len % B == 0) {
        step.committed.emplace_back(n, stats.front().token);
        append_next_token(r, stats.front().token, o);
      }
      if (!r.done) open_block(r, n, o);
    } else {
      step.committed.emplace_back(r.c + B, stats.front().token);
      append_next_token(r, stats.front().token, o);
      if (!r.done) open_block(r, r.c + B, o);
    }
  }

  //! Whether the row's forward is a denoising one (its logits choose positions of the block).
  static bool denoising(const Row& r) { return r.kind == ForwardKind::block || r.kind == ForwardKind::sub_block; }

  //! When sampling, after a denoising forward whose logit rows start at `first_row`: one draw
  //! for each masked position of the active sub-block, in the order `candidates` visits them,
  //! each with its uniform number from the row's generator.
  [[gnu::noinline]] void sample_requests(Row& r, std::int64_t first_row, const DecodeOptions& o,
                                         std::vector<SampleRequest>& out) const {
    for_each_masked(r, o, [&](int j) { out.push_back({first_row + j - r.logits_first_pos, r.rng.uniform_double()}); });
  }

  //! After a denoising forward: the masked positions of the active sub-block, each with the
  //! statistics of the logit row before it (`stats` from the row's first logit row on), or with
  //! its draw from `sampled` (one per position, from sample_requests) when sampling. Returns how many.
  [[gnu::noinline]] int candidates(Row& r, std::span<const PositionStats> stats, const PositionStats* sampled,
                                   const DecodeOptions& o, Candidate* cand) {
    int n = 0;
    for_each_masked(r, o, [&](int j) {
      cand[n].offset = j;
      cand[n].stats = sampled ? sampled[n] : stats[static_cast<std::size_t>(j - r.logits_first_pos)];
      ++n;
    });
    const int lo = r.sub * l_.sub_block, hi = lo + l_.sub_block;
    require(n > 0 || !has_mask(r, lo, hi, o.mask_id), "internal: position 0 of a block is masked");
    if (!l_.commit_forward && hi == l_.block)
      r.next_token = stats[static_cast<std::size_t>(l_.block - r.logits_first_pos)].token;
    return n;
  }

  //! What the policy sees of the row's sub-block.
  StepContext context(Row& r) const { return {r.step, l_.block / l_.sub_block, r.masked_at_sub_start, &r.rng}; }

  //! Commits the chosen candidates; `policy` names the policy in the error when it chose none.
  [[gnu::noinline]] void commit(Row& r, const Candidate* cand, int n, const bool* chosen, TraceStep& step, const char* policy) {
    int committed = 0;
    for (int i = 0; i < n; ++i) {
      if (!chosen[i]) continue;
      block(r)[cand[i].offset] = cand[i].stats.token;
      step.committed.emplace_back(r.c + cand[i].offset, cand[i].stats.token);
      ++committed;
    }
    require(committed > 0, "unmasking policy \"", policy,
            "\" committed no position; a policy must commit at least one masked position per forward");
    ++r.step;
  }

  //! Collects the row's output: tokens after the prompt, cut after the first EOS and at the limit.
  [[gnu::noinline]] void finish(Row& r, GenerateResult& out, const DecodeOptions& o) {
    stream(r, r.limit, o);
    const int end = std::min<int>(r.limit, static_cast<int>(r.x.size()));
    for (int p = r.prompt_len; p < end; ++p) {
      const int t = r.x[static_cast<std::size_t>(p)];
      if (t == o.mask_id) break;
      out.tokens.push_back(t);
      if (o.eos_id && t == *o.eos_id) break;
    }
    out.trace = std::move(r.trace);
    r.cache = {};
    r.finished = true;
  }

 private:
  int* block(Row& r) const { return r.x.data() + r.c; }

  //! Calls f(j) for each masked position j of the active sub-block (position 0 is never masked).
  template <class F>
  void for_each_masked(const Row& r, const DecodeOptions& o, F&& f) const {
    const int lo = r.sub * l_.sub_block, hi = lo + l_.sub_block;
    for (int j = std::max(lo, 1); j < hi; ++j)
      if (r.x[static_cast<std::size_t>(r.c + j)] == o.mask_id) f(j);
  }

  bool has_mask(const Row& r, int from, int to, int mask_id) const {
    for (int j = from; j < to; ++j)
      if (r.x[static_cast<std::size_t>(r.c + j)] == mask_id) return true;
    return false;
  }

  //! True once an EOS is committed in the block's generated part with no [MASK] before it.
  bool eos_done(const Row& r, const DecodeOptions& o) const {
    if (!o.eos_id) return false;
    for (int j = r.gen_begin; j < l_.block; ++j) {
      const int t = r.x[static_cast<std::size_t>(r.c + j)];
      if (t == o.mask_id) return false;
      if (t == *o.eos_id) return true;
    }
    return false;
  }

  //! Opens the block that starts at slot `c`: tokens already in x, then [MASK]s.
  void open_block(Row& r, int c, const DecodeOptions& o) const {
    r.c = c;
    r.gen_begin = static_cast<int>(r.x.size()) - c;
    r.x.resize(static_cast<std::size_t>(c + l_.block), o.mask_id);
    r.scratch_valid = false;
    r.sub = -1;
    r.phase = Phase::block;
  }

  //! Appends a committed token after the finished block (prefill or commit); may end the row.
  void append_next_token(Row& r, int token, const DecodeOptions& o) const {
    r.x.push_back(token);
    if ((o.eos_id && token == *o.eos_id) || static_cast<int>(r.x.size()) >= r.limit) r.done = true;
  }

  //! The block forward's tokens: the block alone (block cache) or the whole sequence (none).
  void set_block_tokens(Row& r) const {
    auto& q = r.request;
    if (l_.block_cache) {
      q.tokens = std::span<const int>(r.x).subspan(static_cast<std::size_t>(r.c), static_cast<std::size_t>(l_.block));
      q.first_slot = r.c;
    } else {
      q.tokens = std::span<const int>(r.x).first(static_cast<std::size_t>(r.c + l_.block));
      q.first_slot = 0;
    }
    q.kv_end = r.c + l_.block;
  }

  //! Passes the row's final tokens before `upto` to on_tokens, by the rules of finish().
  void stream(Row& r, int upto, const DecodeOptions& o) const {
    if (!o.on_tokens) return;
    const int end = std::min({upto, r.limit, static_cast<int>(r.x.size())});
    int p = r.streamed_end;
    bool eos = false;
    while (p < end && !eos) {
      const int t = r.x[static_cast<std::size_t>(p)];
      if (t == o.mask_id) break;
      ++p;
      eos = o.eos_id && t == *o.eos_id;
    }
    if (p > r.streamed_end)
      o.on_tokens(r.index, std::span<const int>(r.x).subspan(static_cast<std::size_t>(r.streamed_end),
                                                             static_cast<std::size_t>(p - r.streamed_end)));
    r.streamed_end = eos ? r.limit : p;  // nothing after an EOS
  }

  BlockLayout l_;
};

}  // namespace detail

template <LanguageModel M, class Shape, class Unmask, class Cache = cache::Block<>>
class BlockDiffusionDecoder {
  static_assert(Policy<Shape> && PolicyOfKind<Shape, kind::block_shape>,
                "BlockDiffusionDecoder: the Shape parameter must be a BlockShape<Block, SubBlock>");
  static_assert(Policy<Unmask>, "BlockDiffusionDecoder: the Unmask parameter is not a policy "
                                "(it must declare `using policy_kind = blockdiff::kind::unmasking;`)");
  static_assert(PolicyOfKind<Unmask, kind::unmasking>,
                "BlockDiffusionDecoder: the Unmask slot takes an unmasking policy (unmask::Threshold, TopK, ...), "
                "but this policy is of another kind");
  static_assert(UnmaskingPolicy<Unmask>, "BlockDiffusionDecoder: Unmask declares kind::unmasking but lacks "
                                         "needs_second_prob, needs_entropy, name, validate() or select(...)");
  static_assert(PolicyOfKind<Cache, kind::cache>,
                "BlockDiffusionDecoder: the Cache slot takes a cache strategy (cache::None, Block, Hierarchical)");
  static_assert(CacheStrategy<Cache>);

 public:
  using backend_type = typename M::backend_type;
  static constexpr int B = Shape::block;
  static constexpr int S = Shape::sub_block;
  static constexpr int sub_blocks = B / S;
  using Mask = mask::BlockCausal<B>;

  explicit BlockDiffusionDecoder(M& model, Unmask policy = {})
      : model_(model),
        policy_(policy),
        rows_({B, S, Cache::block_cache, Cache::sub_block_cache, Cache::commit == Commit::forward, fixed_logit_rows<M>()}) {
    policy_.validate();
  }

  const Unmask& policy() const { return policy_; }
  Unmask& policy() { return policy_; }

  //! Decodes one prompt.
  GenerateResult generate(const std::vector<int>& prompt, const DecodeOptions& options) {
    return std::move(generate(std::span<const std::vector<int>>(&prompt, 1), options).front());
  }

  //! Decodes a batch; row r of the result is exactly what prompt r gives alone.
  std::vector<GenerateResult> generate(std::span<const std::vector<int>> prompts, const DecodeOptions& options) {
    policy_.validate();
    const auto& config = model_.config();
    rows_.check(prompts, options, config);

    const auto start = std::chrono::steady_clock::now();
    std::vector<GenerateResult> results(prompts.size());
    std::vector<Row> active;
    active.reserve(prompts.size());
    for (std::size_t r = 0; r < prompts.size(); ++r)
      active.push_back(rows_.start(r, prompts[r], options, [&](int slots) { return model_.make_cache(slots); }));

    std::vector<model::ForwardRow<backend_type>> forward_rows;
    std::vector<Row*> stepping;
    while (true) {
      // Each row advances to its next forward (or finishes).
      forward_rows.clear();
      stepping.clear();
      for (auto& row : active) {
        if (row.done) continue;
        rows_.plan(row, options);
        if (row.done) continue;
        forward_rows.push_back(row.request);
        stepping.push_back(&row);
      }
      // Finished rows leave the batch and free their cache.
      for (auto& row : active)
        if (row.done && !row.finished) rows_.finish(row, results[row.index], options);
      if (stepping.empty()) break;

      const auto t0 = std::chrono::steady_clock::now();
      auto logits = model_.template forward<Mask>(forward_rows);
      // One pass over the vocabulary for every logit row, computing what the policy needs.
      const std::int64_t n_rows = logits.dim(0);
      stats_.resize(static_cast<std::size_t>(n_rows));
      Kernel<backend_type, op::VocabStats<Unmask::needs_second_prob, Unmask::needs_entropy>>::run(
          logits.data(), n_rows, config.vocab_size, stats_.data());
      const bool sampling = options.sampling.temperature > 0;
      if (sampling) draw(stepping, logits.data(), options);
      const auto stats_of = [&](std::size_t i) {
        return std::span<const PositionStats>(stats_).subspan(static_cast<std::size_t>(model_.logit_offset(i)));
      };
      decide(stepping, stats_of, sampling, options);
      const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      const UnmaskRow* decision = unmask_rows_.data();
      for (std::size_t i = 0; i < stepping.size(); ++i) {
        Row& row = *stepping[i];
        const std::size_t kind = static_cast<std::size_t>(row.kind);
        row.trace.forwards[kind] += 1;
        row.trace.seconds[kind] += dt;
        consume(row, stats_of(i), rows_.denoising(row) ? decision++ : nullptr, options);
      }
      std::erase_if(active, [](const Row& r) { return r.finished; });
    }
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    for (auto& r : results) r.seconds = seconds;
    return results;
  }

 private:
  using Row = typename detail::BlockDecoding<backend_type>::Row;

  //! When sampling: one draw for each masked position of the stepping rows' denoising forwards,
  //! on the backend; row i's draws start at samples_[first_request_[i]].
  void draw(const std::vector<Row*>& stepping, const float* logits, const DecodeOptions& o) {
    requests_.clear();
    first_request_.clear();
    for (std::size_t i = 0; i < stepping.size(); ++i) {
      first_request_.push_back(requests_.size());
      if (rows_.denoising(*stepping[i])) rows_.sample_requests(*stepping[i], model_.logit_offset(i), o, requests_);
    }
    samples_.resize(requests_.size());
    Kernel<backend_type, op::Sample>::run(logits, model_.config().vocab_size, requests_, o.sampling.temperature,
                                          o.sampling.top_p, samples_.data());
  }

  //! The policy's decisions for every denoising row of the forward, in one op::Unmask call:
  //! each row's candidates (from its logit rows' statistics, or its draws when sampling) and
  //! context go to unmask_rows_, in stepping order, and the flags to chosen_.
  template <class StatsOf>
  void decide(const std::vector<Row*>& stepping, StatsOf&& stats_of, bool sampling, const DecodeOptions& o) {
    unmask_rows_.clear();
    candidates_.clear();
    for (std::size_t i = 0; i < stepping.size(); ++i) {
      Row& row = *stepping[i];
      if (!rows_.denoising(row)) continue;
      UnmaskRow u;
      u.first = static_cast<int>(candidates_.size());
      candidates_.resize(candidates_.size() + B);
      u.n = rows_.candidates(row, stats_of(i), sampling ? samples_.data() + first_request_[i] : nullptr, o,
                             candidates_.data() + u.first);
      candidates_.resize(static_cast<std::size_t>(u.first + u.n));
      u.context = rows_.context(row);
      u.rng = row.rng;
      unmask_rows_.push_back(u);
    }
    chosen_.resize(::blockdiff::Shape{static_cast<std::int64_t>(candidates_.size())});
    Kernel<backend_type, op::Unmask<Unmask>>::run(policy_, candidates_.data(), unmask_rows_, chosen_.data());
  }

  //! Commits what the forward decided for `r`: from its logit rows' statistics after a prefill
  //! or commit forward, or as `decision` (its row of the op::Unmask call) says after a
  //! denoising one.
  void consume(Row& r, std::span<const PositionStats> stats, const UnmaskRow* decision, const DecodeOptions& o) {
    TraceStep step{r.kind, {}};
    if (!rows_.denoising(r)) {
      rows_.take_next_token(r, stats, step, o);
    } else {
      r.rng = decision->rng;  // as the policy left it
      rows_.commit(r, candidates_.data() + decision->first, decision->n, chosen_.data() + decision->first, step,
                   Unmask::name);
    }
    if (o.trace) r.trace.steps.push_back(std::move(step));
  }

  M& model_;
  Unmask policy_;
  detail::BlockDecoding<backend_type> rows_;
  std::vector<PositionStats> stats_;
  std::vector<SampleRequest> requests_;     // sampling: the draws of a forward,
  std::vector<std::size_t> first_request_;  // where each stepping row's draws start,
  std::vector<PositionStats> samples_;      // and what they drew
  std::vector<Candidate> candidates_;       // the denoising rows' candidates,
  std::vector<UnmaskRow> unmask_rows_;      // each row's share of them,
  Buffer<bool> chosen_;                     // and which the policy chose
};

}  // namespace blockdiff::decode
