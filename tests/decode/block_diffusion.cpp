// Block-diffusion decoding: the golden decodes of an independent implementation, the exactness
// of the block cache, the sub-block cache against a literal transcription of §3.3, policy
// behaviour per forward, batch == single, sampling reproducibility, and bad input.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <numeric>
#include <set>

#include "../support/check_error.hpp"
#include "../support/naive_model.hpp"
#include "../support/paths.hpp"
#include "../support/reference_decoder.hpp"
#include "../support/sample_reference.hpp"
#include "blockdiff/blockdiff.hpp"

using namespace blockdiff;
using Host = backend::Host;
using Qwen = model::Qwen2<Host>;

namespace {
Qwen& golden_model(const std::string& name, DType weights = DType::f32) {
  static std::map<std::pair<std::string, DType>, Qwen> models;
  auto it = models.find({name, weights});
  if (it == models.end()) it = models.emplace(std::pair{name, weights}, Qwen::load(test::golden(name), weights)).first;
  return it->second;
}

std::vector<int> prompt_of(int n, int seed) {
  std::vector<int> p(static_cast<std::size_t>(n));
  for (int i = 0; i < n; ++i) p[static_cast<std::size_t>(i)] = (seed + 7 * i) % 300;
  return p;
}

template <class Shape, class Policy, class Cache>
decode::GenerateResult gen(Qwen& m, const std::vector<int>& prompt, int max_new, Policy policy = {},
                           std::optional<int> eos = std::nullopt, decode::SamplingOptions sampling = {},
                           std::uint64_t seed = 0) {
  decode::BlockDiffusionDecoder<Qwen, Shape, Policy, Cache> d(m, policy);
  decode::DecodeOptions o;
  o.max_new_tokens = max_new;
  o.mask_id = *m.config().mask_token_id;
  o.eos_id = eos;
  o.sampling = sampling;
  o.seed = seed;
  return d.generate(prompt, o);
}

std::vector<std::vector<std::pair<int, int>>> committed(const decode::GenerateResult& r) {
  std::vector<std::vector<std::pair<int, int>>> out;
  for (auto& s : r.trace.steps) out.push_back(s.committed);
  return out;
}

}  // namespace

TEST_CASE("golden Fast-dLLM v2 decodes: tokens, forward counts and the committed positions of every forward") {
  int checked = 0;
  // Each BF16 golden checkpoint is decoded twice: weights widened to f32, and held in BF16.
  for (auto& g : test::read_jsonl(test::golden("generate.jsonl")))
    for (DType weights : {DType::f32, DType::bf16}) {
      const auto name = g["model"].get<std::string>();
      if (weights == DType::bf16 && name.find("bf16") == std::string::npos) continue;
      auto& m = golden_model(name, weights);
      const auto prompt = g["prompt_ids"].get<std::vector<int>>();
      const int block = g["block"], sub = g["sub_block"], max_new = g["max_new_tokens"];
      const float thr = g["threshold"];
      const std::string cache = g["cache"];
      INFO(name, " weights ", name_of(weights), " block ", block, "/", sub, " thr ", thr, " cache ", cache, " P ", prompt.size());
      decode::GenerateResult r;
      auto run = [&]<class Shape>() {
        const unmask::Threshold policy{thr};
        if (cache == "none") r = gen<Shape, unmask::Threshold, cache::None<>>(m, prompt, max_new, policy, g["eos_id"].get<int>());
        if (cache == "block") r = gen<Shape, unmask::Threshold, cache::Block<>>(m, prompt, max_new, policy, g["eos_id"].get<int>());
        if (cache == "hierarchical")
          r = gen<Shape, unmask::Threshold, cache::Hierarchical<>>(m, prompt, max_new, policy, g["eos_id"].get<int>());
      };
      if (block == 32 && sub == 8) run.template operator()<BlockShape<32, 8>>();
      else if (block == 16 && sub == 4) run.template operator()<BlockShape<16, 4>>();
      else if (block == 16 && sub == 8) run.template operator()<BlockShape<16, 8>>();
      else if (block == 8 && sub == 2) run.template operator()<BlockShape<8, 2>>();
      else FAIL("golden shape not covered");
      CHECK(r.tokens == g["tokens"].get<std::vector<int>>());
      // Every forward commits what the golden trace says; the golden trace may hold one more
      // commit forward (of the last block, whose next token lies beyond max_new_tokens).
      const auto& trace = g["trace"];
      REQUIRE(r.trace.steps.size() <= trace.size());
      CHECK(trace.size() - r.trace.steps.size() <= 1);
      for (std::size_t i = 0; i < r.trace.steps.size(); ++i) {
        CHECK(std::string(decode::name_of(r.trace.steps[i].kind)) == trace[i][0].get<std::string>());
        std::vector<std::pair<int, int>> want;
        for (auto& pt : trace[i][1]) want.emplace_back(pt[0].get<int>(), pt[1].get<int>());
        CHECK(r.trace.steps[i].committed == want);
      }
      CHECK(r.trace.count(decode::ForwardKind::prefill) == g["nfe"]["prefill"].get<int>());
      CHECK(r.trace.count(decode::ForwardKind::block) == g["nfe"]["block"].get<int>());
      CHECK(r.trace.count(decode::ForwardKind::sub_block) == g["nfe"]["sub_block"].get<int>());
      ++checked;
    }
  CHECK(checked == 36 + 18);
}

TEST_CASE("the block cache is exact: Block and None commit the same tokens at the same positions, for every policy") {
  auto& m = golden_model("model-f32-tied");
  auto same = [&]<class Policy>(Policy policy) {
    for (int len : {3, 8, 13, 17}) {
      const auto p = prompt_of(len, len);
      auto a = gen<BlockShape<8, 4>, Policy, cache::Block<>>(m, p, 21, policy, 318);
      auto b = gen<BlockShape<8, 4>, Policy, cache::None<>>(m, p, 21, policy, 318);
      INFO(Policy::name, " prompt ", len);
      CHECK(a.tokens == b.tokens);
      CHECK(committed(a) == committed(b));
    }
  };
  same(unmask::Threshold{0.9f});
  same(unmask::Threshold{0.5f});
  same(unmask::TopK{2});
  same(unmask::Scheduled<schedule::Cosine>{4});
  same(unmask::Margin{0.7f});
  same(unmask::Entropy{0.5f});
  same(unmask::EntropyBounded{0.5f});
  same(unmask::Factor{1.0f});
  same(unmask::Random{2});
}

namespace {
// Forwards to the golden model and keeps, for every forward, its tokens and the logit rows it
// asked for; `Fixed` says whether it wants the same logit rows at every step of a sub-block.
template <bool Fixed>
struct RecordingModel {
  using backend_type = Host;
  static constexpr bool fixed_logit_rows = Fixed;
  struct Request {
    std::vector<int> tokens;
    int logits_begin, logits_end;
  };
  Qwen& m;
  std::vector<Request> requests;

  const io::ModelConfig& config() const { return m.config(); }
  std::int64_t logit_offset(std::size_t i) const { return m.logit_offset(i); }
  auto make_cache(int capacity) const { return m.make_cache(capacity); }
  template <class Mask>
  TensorView<const float> forward(std::span<model::ForwardRow<Host>> rows) {
    for (auto& row : rows) requests.push_back({{row.tokens.begin(), row.tokens.end()}, row.logits_begin, row.logits_end});
    return m.template forward<Mask>(rows);
  }
};
static_assert(LanguageModel<RecordingModel<false>>);
static_assert(!decode::fixed_logit_rows<Qwen>());
}  // namespace

TEST_CASE("logit rows: the span of the active sub-block's masked positions, or the whole sub-block where asked") {
  auto& m = golden_model("model-f32-tied");
  const int mask_id = *m.config().mask_token_id;
  constexpr int B = 8, S = 4;
  auto check = [&]<bool Fixed, class Cache>(float threshold) {
    RecordingModel<Fixed> rec{m, {}};
    decode::BlockDiffusionDecoder<RecordingModel<Fixed>, BlockShape<B, S>, unmask::Threshold, Cache> d(
        rec, unmask::Threshold{threshold});
    decode::DecodeOptions o;
    o.max_new_tokens = 29;
    o.mask_id = mask_id;
    const auto p = prompt_of(11, 5);
    const auto result = d.generate(p, o);
    const auto plain = gen<BlockShape<B, S>, unmask::Threshold, Cache>(m, p, 29, unmask::Threshold{threshold});
    INFO(Cache::name, " threshold ", threshold, " fixed ", Fixed);
    CHECK(result.tokens == plain.tokens);
    CHECK(committed(result) == committed(plain));
    int denoising = 0, narrower = 0;
    for (auto& q : rec.requests) {
      const int n = static_cast<int>(q.tokens.size());
      if (std::count(q.tokens.begin(), q.tokens.end(), mask_id) == 0) continue;  // prefill or commit
      ++denoising;
      // The positions the forward can unmask: a sub-block forward holds its sub-block alone
      // (from an unmasked first position); a block forward ends with the block, whose first
      // sub-block with a [MASK] is the active one.
      const bool sub_block = n == S;
      const int begin = sub_block ? 0 : n - B;
      int lo = begin;
      if (!sub_block)
        while (std::count(q.tokens.begin() + lo, q.tokens.begin() + lo + S, mask_id) == 0) lo += S;
      int first = -1, last = -1;
      for (int j = lo; j < lo + S; ++j)
        if (q.tokens[static_cast<std::size_t>(j)] == mask_id) {
          if (first < 0) first = j;
          last = j;
        }
      INFO("forward of ", n, " tokens");
      REQUIRE(first > begin);  // a block's first token is never masked
      // Position j is predicted by the output at j - 1.
      if (Fixed) {
        CHECK(q.logits_begin == std::max(lo - 1, begin));
        CHECK(q.logits_end == lo + S - 1);
      } else {
        CHECK(q.logits_begin == first - 1);
        CHECK(q.logits_end == last);
        narrower += q.logits_end - q.logits_begin < lo + S - 1 - std::max(lo - 1, begin);
      }
    }
    CHECK(denoising == result.trace.denoising_forwards());
    CHECK(static_cast<int>(rec.requests.size()) == result.trace.total_forwards());  // one row a forward
    return narrower;
  };
  int narrower = 0;
  for (float thr : {0.9f, 0.5f}) {
    narrower += check.template operator()<false, cache::None<>>(thr);
    narrower += check.template operator()<false, cache::Block<>>(thr);
    narrower += check.template operator()<false, cache::Hierarchical<>>(thr);
    check.template operator()<true, cache::None<>>(thr);
    check.template operator()<true, cache::Block<>>(thr);
    check.template operator()<true, cache::Hierarchical<>>(thr);
  }
  CHECK(narrower > 0);  // later steps of a sub-block ask for fewer rows than its first
}

TEST_CASE("the decoder matches a literal transcription of §3.3 on the naive model, with and without the sub-block cache") {
  // Greedy, and sampled (T = 1.5; T = 1 with top-p 0.9): the paper's decode with its sampling.
  const std::optional<decode::SamplingOptions> samplings[] = {std::nullopt, decode::SamplingOptions{1.5f, 1.0f},
                                                              decode::SamplingOptions{1.0f, 0.9f}};
  constexpr std::uint64_t seed = 5;
  int sampled_apart = 0;  // sampled decodes whose tokens are not the greedy decode's
  for (const char* name : {"model-f32-tied", "model-bf16-untied"}) {
    auto& m = golden_model(name);
    test::NaiveQwen2 naive(m);
    for (int len : {1, 7, 8, 9, 16, 19}) {
      const auto p = prompt_of(len, 3 * len + 1);
      for (float thr : {0.9f, 0.6f}) {
        std::vector<int> greedy;
        for (const auto& sampling : samplings) {
          const auto s = sampling.value_or(decode::SamplingOptions{});
          INFO(name, " prompt ", len, " thr ", thr, " T ", s.temperature, " top-p ", s.top_p);
          std::optional<test::ReferenceSampling> ref_sampling;
          if (sampling) ref_sampling = test::ReferenceSampling{s.temperature, s.top_p, seed};
          auto h = gen<BlockShape<8, 4>, unmask::Threshold, cache::Hierarchical<>>(m, p, 19, unmask::Threshold{thr}, 318,
                                                                                   s, seed);
          auto ref_h = test::reference_generate(naive, p, 8, 4, thr, true, 319, 318, 19, ref_sampling);
          CHECK(h.tokens == ref_h.tokens);
          CHECK(h.trace.count(decode::ForwardKind::block) == ref_h.block);
          CHECK(h.trace.count(decode::ForwardKind::sub_block) == ref_h.sub_block);
          CHECK(h.trace.count(decode::ForwardKind::commit) == ref_h.commit);
          if (!sampling) greedy = h.tokens;
          sampled_apart += sampling && h.tokens != greedy;
          auto b = gen<BlockShape<8, 4>, unmask::Threshold, cache::Block<>>(m, p, 19, unmask::Threshold{thr}, 318, s, seed);
          auto ref_b = test::reference_generate(naive, p, 8, 4, thr, false, 319, 318, 19, ref_sampling);
          CHECK(b.tokens == ref_b.tokens);
          CHECK(b.trace.count(decode::ForwardKind::block) == ref_b.block);
          CHECK(b.trace.count(decode::ForwardKind::prefill) == ref_b.prefill);
        }
      }
    }
  }
  CHECK(sampled_apart > 24);  // of 48: sampling is what most of these decodes exercise
}

TEST_CASE("an EOS in the prompt ends nothing: the stop reads the generated tokens only, as §3.3's x[L0:]") {
  // A chat prompt holds the EOS (Qwen's <|im_end|> closes every turn), often in the tail that
  // opens the first generation block. The transcription of §3.3 is the reference.
  auto& m = golden_model("model-f32-tied");
  test::NaiveQwen2 naive(m);
  constexpr int eos = 318;
  for (int len : {1, 5, 8, 13}) {
    for (int at : std::set<int>{0, len / 2, len - 1}) {  // a one-token prompt is its own start and end
      auto p = prompt_of(len, 2 * len + at);
      p[static_cast<std::size_t>(at)] = eos;
      INFO("prompt ", len, " with the EOS at ", at);
      for (bool dualcache : {true, false}) {
        const auto ref = test::reference_generate(naive, p, 8, 4, 0.9, dualcache, 319, eos, 21);
        const auto got = dualcache ? gen<BlockShape<8, 4>, unmask::Threshold, cache::Hierarchical<>>(m, p, 21, {0.9f}, eos)
                                   : gen<BlockShape<8, 4>, unmask::Threshold, cache::Block<>>(m, p, 21, {0.9f}, eos);
        CHECK(got.tokens == ref.tokens);
        CHECK(!ref.tokens.empty());  // the prompt's EOS did not end the reference either
      }
    }
  }
}

TEST_CASE("threshold 1 commits one token per denoising forward, threshold 0 a whole sub-block, TopK min(k, masked)") {
  auto& m = golden_model("model-bf16-untied");
  const auto p = prompt_of(5, 2);
  auto one = gen<BlockShape<16, 4>, unmask::Threshold, cache::Block<>>(m, p, 40, unmask::Threshold{1.0f});
  for (auto& s : one.trace.steps)
    if (s.kind == decode::ForwardKind::block) CHECK(s.committed.size() == 1);
  auto all = gen<BlockShape<16, 4>, unmask::Threshold, cache::Block<>>(m, p, 40, unmask::Threshold{0.0f});
  for (auto& s : all.trace.steps)
    if (s.kind == decode::ForwardKind::block) {
      // Each forward fills the masked positions of one sub-block: all of them.
      const int lo = s.committed.front().first / 4 * 4;
      for (auto& [pos, tok] : s.committed) CHECK(pos / 4 * 4 == lo);
      // Offset 0 of a block holds the token of the commit forward; the first block, the prompt.
      if (lo >= 16) CHECK(s.committed.size() == (lo % 16 == 0 ? 3u : 4u));
    }
  CHECK(all.trace.denoising_forwards() <= 40 / 4 + 2);
  auto topk = gen<BlockShape<16, 4>, unmask::TopK, cache::Block<>>(m, p, 40, unmask::TopK{3});
  // Per sub-block of 4 masked positions: 3 then 1.
  for (auto& s : topk.trace.steps)
    if (s.kind == decode::ForwardKind::block) CHECK((s.committed.size() == 3 || s.committed.size() == 1 || s.committed.size() == 2));
  CHECK(one.tokens.size() == 40);
  CHECK(one.trace.denoising_forwards() == 40 - one.trace.count(decode::ForwardKind::commit));
}

TEST_CASE("batch == single, for every row, with prompts of lengths B-1, B, B+1, 2B and 1, for each cache") {
  auto& m = golden_model("model-f32-tied");
  constexpr int B = 8;
  std::vector<std::vector<int>> prompts;
  for (int len : {B - 1, B, B + 1, 2 * B, 1}) prompts.push_back(prompt_of(len, len * 5 + 2));
  auto check_cache = [&]<class Cache>() {
    decode::BlockDiffusionDecoder<Qwen, BlockShape<B, 4>, unmask::Threshold, Cache> d(m, unmask::Threshold{0.8f});
    decode::DecodeOptions o;
    o.max_new_tokens = 21;
    o.mask_id = 319;
    o.eos_id = 318;
    auto batch = d.generate(prompts, o);
    for (std::size_t r = 0; r < prompts.size(); ++r) {
      auto alone = d.generate(prompts[r], o);
      INFO(Cache::name, " row ", r);
      CHECK(batch[r].tokens == alone.tokens);
      CHECK(committed(batch[r]) == committed(alone));
      CHECK(batch[r].trace.forwards == alone.trace.forwards);
    }
  };
  check_cache.template operator()<cache::None<>>();
  check_cache.template operator()<cache::Block<>>();
  check_cache.template operator()<cache::Hierarchical<>>();
  check_cache.template operator()<cache::Block<Commit::reuse>>();
}

TEST_CASE("streaming: each row's pieces arrive block by block, in order, and join to its tokens") {
  auto& m = golden_model("model-f32-tied");
  constexpr int B = 8;
  std::vector<std::vector<int>> prompts{prompt_of(B - 1, 3), prompt_of(B, 4), prompt_of(2 * B + 3, 5)};
  auto check = [&]<class Cache>(std::optional<int> eos) {
    decode::BlockDiffusionDecoder<Qwen, BlockShape<B, 4>, unmask::Threshold, Cache> d(m, unmask::Threshold{0.8f});
    decode::DecodeOptions o;
    o.max_new_tokens = 29;
    o.mask_id = 319;
    o.eos_id = eos;
    std::vector<std::vector<std::vector<int>>> pieces(prompts.size());
    o.on_tokens = [&](std::size_t row, std::span<const int> t) { pieces.at(row).emplace_back(t.begin(), t.end()); };
    const auto results = d.generate(prompts, o);
    for (std::size_t r = 0; r < prompts.size(); ++r) {
      INFO(Cache::name, " row ", r, " eos ", eos.value_or(-1));
      std::vector<int> joined;
      for (auto& piece : pieces[r]) {
        CHECK(!piece.empty());
        CHECK(piece.size() <= std::size_t(B));  // never more than one block's worth at a time
        joined.insert(joined.end(), piece.begin(), piece.end());
      }
      CHECK(joined == results[r].tokens);
      // One piece per block the output touches, at least (a short first block included).
      CHECK(pieces[r].size() >= (results[r].tokens.size() + B - 1) / B);
    }
  };
  check.template operator()<cache::Block<>>(std::nullopt);
  check.template operator()<cache::Hierarchical<>>(std::nullopt);
  check.template operator()<cache::Block<Commit::reuse>>(std::nullopt);
  // An EOS that occurs: the piece that holds it is the last.
  const auto plain = gen<BlockShape<B, 4>, unmask::Threshold, cache::Block<>>(m, prompts[2], 29, unmask::Threshold{0.8f});
  REQUIRE(plain.tokens.size() > 12);
  check.template operator()<cache::Block<>>(plain.tokens[11]);
}

TEST_CASE("max_new_tokens is exact and a shorter run is a prefix of a longer one") {
  auto& m = golden_model("model-bf16-untied");
  const auto p = prompt_of(6, 9);
  auto longer = gen<BlockShape<8, 4>, unmask::Threshold, cache::Block<>>(m, p, 30, unmask::Threshold{0.9f});
  CHECK(longer.tokens.size() == 30);
  for (int n : {1, 2, 5, 10, 17}) {
    auto shorter = gen<BlockShape<8, 4>, unmask::Threshold, cache::Block<>>(m, p, n, unmask::Threshold{0.9f});
    CHECK(shorter.tokens == std::vector<int>(longer.tokens.begin(), longer.tokens.begin() + n));
  }
  CHECK(gen<BlockShape<8, 4>, unmask::Threshold, cache::Block<>>(m, p, 0).tokens.empty());
  // Ending on a block boundary: the last block is complete at the limit, and nothing follows it to
  // need its commit forward. Blocks [8, 16) and [16, 24) after a prompt of 8: one commit, between them.
  const auto exact = gen<BlockShape<8, 4>, unmask::Threshold, cache::Block<>>(m, prompt_of(8, 9), 16, {0.9f});
  CHECK(exact.tokens.size() == 16);
  CHECK(exact.trace.count(decode::ForwardKind::commit) == 1);
}

TEST_CASE("Scheduled counts the positions of a sub-block masked at its start, and its steps") {
  // At step s of n a Scheduled<Cosine> sub-block has revealed ceil(m · cos(π/2 · (1 − (s+1)/n)))
  // of the m positions masked when it began (at least one a step, the rest at the last), with
  // n = steps / sub-blocks. A block's first sub-block holds the token the forward before it
  // carried over, so S - 1 of its S positions start masked; the second, S. With sub-blocks of 4
  // and n = 2 every count but the first is forced; with 8 and n = 4, steps 1 and 2 reveal two
  // positions each, as the schedule says, where a step count stuck at 0 would reveal one.
  auto& m = golden_model("model-f32-tied");
  const auto check = [&]<class Shape>(int steps, int n) {
    constexpr int B = Shape::block, S = Shape::sub_block;
    const auto r = gen<Shape, unmask::Scheduled<schedule::Cosine>, cache::Block<>>(
        m, prompt_of(B, 8), 2 * B, unmask::Scheduled<schedule::Cosine>{steps});
    std::map<int, std::vector<int>> per_step;  // sub-block -> positions committed by each of its steps
    for (const auto& step : r.trace.steps)
      if (step.kind == decode::ForwardKind::block || step.kind == decode::ForwardKind::sub_block)
        per_step[step.committed.front().first / S].push_back(static_cast<int>(step.committed.size()));
    REQUIRE(per_step.size() == 2 * B / S);  // the sub-blocks of positions B to 3B
    for (const auto& [sub, counts] : per_step) {
      CAPTURE(B);
      CAPTURE(sub);
      const int masked = std::accumulate(counts.begin(), counts.end(), 0);
      CHECK(masked == (sub % (B / S) == 0 ? S - 1 : S));
      CHECK(static_cast<int>(counts.size()) <= n);
      int revealed = 0;
      for (std::size_t s = 0; s < counts.size(); ++s) {
        const double frac = std::cos(1.5707963267948966 * (1.0 - double(s + 1) / n));
        const int target = int(s) + 1 >= n ? masked : int(std::ceil(masked * frac - 1e-4));
        CHECK(counts[s] == std::clamp(target - revealed, 1, masked - revealed));
        revealed += counts[s];
      }
    }
  };
  check.template operator()<BlockShape<8, 4>>(4, 2);
  check.template operator()<BlockShape<16, 8>>(8, 4);
}

TEST_CASE("EOS: generation stops once an EOS is committed with nothing masked before it; the EOS is kept") {
  auto& m = golden_model("model-bf16-untied");
  // The last golden case stops on EOS 5 inside its first block, with no commit forward.
  auto r = gen<BlockShape<16, 8>, unmask::Threshold, cache::Hierarchical<>>(m, {25, 32, 39}, 29, unmask::Threshold{0.9f}, 5);
  CHECK(r.tokens == std::vector<int>{111, 105, 262, 262, 5});
  CHECK(r.trace.count(decode::ForwardKind::commit) == 0);
}

TEST_CASE("commit reuse skips the commit forward and stays close to the paper's decode") {
  auto& m = golden_model("model-f32-tied");
  const auto p = prompt_of(5, 4);
  auto fwd = gen<BlockShape<8, 4>, unmask::Threshold, cache::Block<>>(m, p, 27, unmask::Threshold{0.9f});
  auto reuse = gen<BlockShape<8, 4>, unmask::Threshold, cache::Block<Commit::reuse>>(m, p, 27, unmask::Threshold{0.9f});
  CHECK(reuse.trace.count(decode::ForwardKind::commit) == 0);
  CHECK(fwd.trace.count(decode::ForwardKind::commit) > 0);
  CHECK(reuse.tokens.size() == 27);
  // The first block is decoded identically (its next token comes from the last denoising forward).
  CHECK(std::equal(reuse.tokens.begin(), reuse.tokens.begin() + 3, fwd.tokens.begin()));
}

TEST_CASE("commit reuse: the next block's first token is the last denoising forward's prediction past the block") {
  // Block 0 holds a 5-token prompt and 3 new tokens. Its last denoising forward saw the block with
  // the positions it committed still masked; that forward's last logit row (position 7) predicts
  // position 8, the first token of block 1, which reuse takes instead of running a commit forward.
  auto& m = golden_model("model-f32-tied");
  test::NaiveQwen2 naive(m);
  constexpr int B = 8, mask = 319;
  const auto p = prompt_of(5, 4);
  const auto reuse = gen<BlockShape<B, 4>, unmask::Threshold, cache::Block<Commit::reuse>>(m, p, 12, unmask::Threshold{0.9f});
  REQUIRE(reuse.tokens.size() == 12);
  std::vector<int> seen = p;  // the block as its last denoising forward saw it
  seen.resize(B, mask);
  std::size_t last = 0;
  for (std::size_t s = 0; s < reuse.trace.steps.size(); ++s)
    if (!reuse.trace.steps[s].committed.empty() && reuse.trace.steps[s].committed.front().first < B) last = s;
  for (std::size_t s = 0; s < last; ++s)
    for (auto [pos, token] : reuse.trace.steps[s].committed)
      if (pos < B) seen[static_cast<std::size_t>(pos)] = token;
  REQUIRE(std::count(seen.begin(), seen.end(), mask) > 0);
  const auto logits = naive.forward(seen, [](int q, int k) { return k / B <= q / B; });
  const auto& row = logits[B - 1];
  const auto argmax = static_cast<int>(std::max_element(row.begin(), row.end()) - row.begin());
  CHECK(reuse.tokens[static_cast<std::size_t>(B) - p.size()] == argmax);
}

TEST_CASE("sampling is reproducible with a seed, and greedy output does not depend on the seed") {
  auto& m = golden_model("model-f32-tied");
  const auto p = prompt_of(4, 1);
  const decode::SamplingOptions hot{1.0f, 0.9f};
  auto a = gen<BlockShape<8, 4>, unmask::Threshold, cache::Block<>>(m, p, 24, unmask::Threshold{0.9f}, std::nullopt, hot, 7);
  auto b = gen<BlockShape<8, 4>, unmask::Threshold, cache::Block<>>(m, p, 24, unmask::Threshold{0.9f}, std::nullopt, hot, 7);
  CHECK(a.tokens == b.tokens);
  bool differs = false;
  for (std::uint64_t seed = 8; seed < 12 && !differs; ++seed)
    differs = gen<BlockShape<8, 4>, unmask::Threshold, cache::Block<>>(m, p, 24, unmask::Threshold{0.9f}, std::nullopt, hot, seed).tokens != a.tokens;
  CHECK(differs);
  auto g1 = gen<BlockShape<8, 4>, unmask::Threshold, cache::Block<>>(m, p, 24, unmask::Threshold{0.9f}, std::nullopt, {}, 1);
  auto g2 = gen<BlockShape<8, 4>, unmask::Threshold, cache::Block<>>(m, p, 24, unmask::Threshold{0.9f}, std::nullopt, {}, 99);
  CHECK(g1.tokens == g2.tokens);
}

namespace {
// Commits the leftmost masked position: a decision that reads no statistics, so that what a
// position gets depends only on the draw.
struct LeftToRight {
  using policy_kind = kind::unmasking;
  static constexpr const char* name = "left-to-right";
  static constexpr bool needs_second_prob = false, needs_entropy = false;
  void validate() const {}
  void select(const Candidate*, int n, StepContext&, bool* out) const {
    if (n > 0) out[0] = true;
  }
};

//! Block diffusion as §3.3 runs it with an exact cache, one position a denoising forward, on
//! the naive model: at each forward the active sub-block's masked positions, left to right, each
//! take a uniform number from the row's generator when sampling; then `random` picks one of them
//! with the same generator (unmask::Random{1}), or the leftmost is taken; it gets the draw
//! (op::Sample's rule, test::SampleDistribution) or the argmax of the logit row before it. A
//! finished block's commit forward appends the argmax of its last row. Returns the new tokens.
std::vector<int> reference_one_a_forward(const test::NaiveQwen2& naive, std::vector<int> x, int B, int S, int mask,
                                         int max_new, std::uint64_t seed, std::optional<decode::SamplingOptions> sampling,
                                         bool random) {
  Rng rng(seed);
  const int P = static_cast<int>(x.size()), limit = P + max_new;
  const auto argmax = [](const std::vector<double>& v) {
    return static_cast<int>(std::max_element(v.begin(), v.end()) - v.begin());
  };
  const auto logits = [&](int end) {
    return naive.forward(std::vector<int>(x.begin(), x.begin() + end), [B](int q, int k) { return k / B <= q / B; });
  };
  if (P >= B && P % B == 0) x.push_back(argmax(logits(P)[static_cast<std::size_t>(P - 1)]));
  while (static_cast<int>(x.size()) < limit) {
    const int c = static_cast<int>(x.size()) / B * B;
    x.resize(static_cast<std::size_t>(c + B), mask);
    while (true) {
      const auto first = std::find(x.begin() + c, x.end(), mask) - x.begin();
      if (first >= std::min(limit, c + B)) break;  // every position below the limit is committed
      const int lo = c + static_cast<int>(first - c) / S * S;
      std::vector<int> candidates;
      for (int j = lo; j < lo + S; ++j)
        if (x[static_cast<std::size_t>(j)] == mask) candidates.push_back(j);
      std::vector<double> u;
      if (sampling)
        for (std::size_t i = 0; i < candidates.size(); ++i) u.push_back(rng.uniform_double());
      const std::size_t pick = random ? rng.below(candidates.size()) : 0;
      const int j = candidates[pick];
      const std::vector<double> row = logits(c + B)[static_cast<std::size_t>(j - 1)];
      x[static_cast<std::size_t>(j)] =
          sampling ? test::SampleDistribution(std::vector<float>(row.begin(), row.end()), sampling->temperature,
                                              sampling->top_p)
                         .draw(u[pick])
                   : argmax(row);
    }
    if (c + B >= limit) break;
    x.push_back(argmax(logits(c + B)[static_cast<std::size_t>(c + B - 1)]));
  }
  return std::vector<int>(x.begin() + P, x.begin() + limit);
}
}  // namespace

TEST_CASE("sampled and random decodes: each draw from the row before its position, with the row's generator in order") {
  // Against reference_one_a_forward: positions read the logit row before them, each masked
  // position of the sub-block takes its uniform number in order, unmask::Random draws from the
  // generator the sampling advanced and its row keeps what it drew, from forward to forward.
  // Rows of lengths 5, 11 and 16 (a prompt tail, a partial prefill, a prefill whose last row
  // gives the first new token) decode as a batch, with the block cache and without a cache.
  auto& m = golden_model("model-f32-tied");
  test::NaiveQwen2 naive(m);
  constexpr int B = 8, S = 4;
  const int mask = *m.config().mask_token_id, max_new = 11;
  const std::vector<std::vector<int>> prompts{prompt_of(5, 3), prompt_of(11, 6), prompt_of(16, 2)};
  const auto run = [&]<class Policy, class Cache>(Policy policy, std::optional<decode::SamplingOptions> sampling,
                                                 bool random) {
    decode::BlockDiffusionDecoder<Qwen, BlockShape<B, S>, Policy, Cache> d(m, policy);
    decode::DecodeOptions o;
    o.max_new_tokens = max_new;
    o.mask_id = mask;
    o.sampling = sampling.value_or(decode::SamplingOptions{});
    o.seed = 41;
    const auto out = d.generate(prompts, o);
    for (std::size_t r = 0; r < prompts.size(); ++r) {
      INFO(std::string(Policy::name), " ", std::string(Cache::name), " T ", o.sampling.temperature, " top-p ",
           o.sampling.top_p, " prompt ", prompts[r].size());
      CHECK(out[r].tokens == reference_one_a_forward(naive, prompts[r], B, S, mask, max_new, o.seed, sampling, random));
    }
    return out;
  };
  std::vector<std::vector<decode::GenerateResult>> left_to_right;
  for (const auto sampling : {std::optional<decode::SamplingOptions>{}, std::optional{decode::SamplingOptions{3.0f, 1.0f}},
                              std::optional{decode::SamplingOptions{2.0f, 0.9f}}}) {
    left_to_right.push_back(run.template operator()<LeftToRight, cache::Block<>>(LeftToRight{}, sampling, false));
    run.template operator()<unmask::Random, cache::Block<>>(unmask::Random{1}, sampling, true);
    run.template operator()<unmask::Random, cache::None<>>(unmask::Random{1}, sampling, true);
  }
  // The draws are not the argmax everywhere: sampling is what these decodes exercise.
  for (std::size_t r = 0; r < prompts.size(); ++r) {
    CHECK(left_to_right[1][r].tokens != left_to_right[0][r].tokens);
    CHECK(left_to_right[2][r].tokens != left_to_right[0][r].tokens);
  }
}

TEST_CASE("op::Sample: top-p keeps the smallest nucleus and the confidence is renormalised") {
  // probabilities 0.5, 0.3, 0.2 (logits are their logs): top-p 0.6 keeps {0, 1}.
  std::vector<float> l{std::log(0.5f), std::log(0.3f), std::log(0.2f)};
  Rng rng(3);
  Kernel<backend::Host, op::Sample>::Scratch scratch;
  int seen[3] = {};
  for (int i = 0; i < 2000; ++i) {
    auto s = Kernel<backend::Host, op::Sample>::one_row(l.data(), 3, 1.0f, 0.6f, rng.uniform_double(), scratch);
    ++seen[s.token];
    CHECK(s.p1 == doctest::Approx(s.token == 0 ? 0.625 : 0.375).epsilon(1e-4));
  }
  CHECK(seen[2] == 0);
  CHECK(std::abs(seen[0] / 2000.0 - 0.625) < 0.05);
  // The nucleus must exceed top-p: four equal tokens (0.25 each, exact) at top-p 0.5 keep three,
  // since two only reach 0.5; u in each third draws that token, at 1/3.
  const std::vector<float> even(4, 0.0f);
  for (const auto& [u, token] : std::initializer_list<std::pair<double, int>>{{0.1, 0}, {0.5, 1}, {0.99, 2}}) {
    const auto s = Kernel<backend::Host, op::Sample>::one_row(even.data(), 4, 1.0f, 0.5f, u, scratch);
    CHECK(s.token == token);
    CHECK(s.p1 == doctest::Approx(1.0 / 3.0));
  }
  // u = 0 draws the first token that can be drawn, never one of probability 0 before it.
  const float inf = std::numeric_limits<float>::infinity();
  const std::vector<float> banned_first{-inf, -inf, 0.0f, 0.0f};
  for (const float top_p : {1.0f, 0.9f})
    CHECK(Kernel<backend::Host, op::Sample>::one_row(banned_first.data(), 4, 1.0f, top_p, 0.0, scratch).token == 2);
}

TEST_CASE("bad decoding input is a clear error") {
  auto& m = golden_model("model-f32-tied");
  decode::BlockDiffusionDecoder<Qwen, BlockShape<8, 4>, unmask::Threshold, cache::Block<>> d(m);
  decode::DecodeOptions o;
  o.max_new_tokens = 8;
  o.mask_id = 319;
  CHECK_ERROR(d.generate(std::vector<int>{}, o), "prompt is empty");
  CHECK_ERROR(d.generate(std::vector<int>{1, 319}, o), "contains the mask id 319 at index 1");
  CHECK_ERROR(d.generate(std::vector<int>{1, 400}, o), "outside the vocabulary");
  o.max_new_tokens = 4095;
  CHECK_ERROR(d.generate(std::vector<int>{1, 2}, o), "beyond the context of 4096");
  o.max_new_tokens = -1;
  CHECK_ERROR(d.generate(std::vector<int>{1, 2}, o), "max_new_tokens must be >= 0, got -1");
  o.max_new_tokens = 8;
  o.mask_id = 320;
  CHECK_ERROR(d.generate(std::vector<int>{1}, o), "mask id 320 is outside the vocabulary");
  o.mask_id = -1;
  CHECK_ERROR(d.generate(std::vector<int>{1}, o), "mask id is not set");
  o.mask_id = 319;
  o.eos_id = 1000;
  CHECK_ERROR(d.generate(std::vector<int>{1}, o), "EOS id 1000");
  o.eos_id = 319;
  CHECK_ERROR(d.generate(std::vector<int>{1}, o), "the EOS id and the mask id are both 319");
  o.eos_id = std::nullopt;
  d.policy().tau = 2.0f;
  CHECK_ERROR(d.generate(std::vector<int>{1}, o), "threshold 2 is outside [0, 1]");
  CHECK_ERROR((decode::BlockDiffusionDecoder<Qwen, BlockShape<8, 4>, unmask::TopK>(m, unmask::TopK{0})), "k must be >= 1");
  d.policy().tau = 0.9f;
  o.sampling.top_p = 0.0f;
  CHECK_ERROR(d.generate(std::vector<int>{1}, o), "top-p");
  o.sampling.top_p = 1.0f;
  o.sampling.temperature = std::numeric_limits<float>::infinity();
  CHECK_ERROR(d.generate(std::vector<int>{1}, o), "temperature must be finite and >= 0, got inf");
}

namespace {
// A user policy that never commits anything: the decoder names it instead of looping forever.
struct Lazy {
  using policy_kind = kind::unmasking;
  static constexpr const char* name = "lazy";
  static constexpr bool needs_second_prob = false, needs_entropy = false;
  void validate() const {}
  void select(const Candidate*, int, StepContext&, bool*) const {}
};
}  // namespace

TEST_CASE("the context must hold the prompt, the new tokens and the last block's padding") {
  // The last block of a decode always runs whole: a request whose new tokens fit the context but
  // whose last block does not is refused before any forward; one whose blocks end exactly at the
  // context's end runs.
  const auto load = [](int context) {
    auto dir = test::temp_dir("decode-context-" + std::to_string(context));
    auto cfg = model::preset_config("tiny");
    cfg.max_position_embeddings = context;
    model::write_random_checkpoint(dir, cfg, 5, DType::f32);
    return Qwen::load(dir);
  };
  auto twenty = load(20), twenty_four = load(24);
  using Decoder = decode::BlockDiffusionDecoder<Qwen, BlockShape<8, 4>, unmask::Threshold, cache::Block<>>;
  decode::DecodeOptions o;
  o.mask_id = 319;
  o.max_new_tokens = 6;  // blocks through 16
  CHECK(Decoder(twenty).generate(std::vector<int>(10, 3), o).tokens.size() == 6);
  o.max_new_tokens = 8;  // 18 positions, in blocks through 24
  CHECK_ERROR(Decoder(twenty).generate(std::vector<int>(10, 3), o),
              "prompt of 10 tokens plus max_new_tokens 8 (and 6 slots of block padding) needs 24 positions, beyond the "
              "context of 20 positions");
  o.max_new_tokens = 14;  // blocks through 24: the whole context
  CHECK(Decoder(twenty_four).generate(std::vector<int>(10, 3), o).tokens.size() == 14);
}

TEST_CASE("a policy that makes no progress is reported by name") {
  auto& m = golden_model("model-f32-tied");
  decode::BlockDiffusionDecoder<Qwen, BlockShape<8, 4>, Lazy> d(m);
  decode::DecodeOptions o;
  o.max_new_tokens = 4;
  o.mask_id = 319;
  CHECK_ERROR(d.generate(std::vector<int>{1, 2}, o), "unmasking policy \"lazy\" committed no position");
}
