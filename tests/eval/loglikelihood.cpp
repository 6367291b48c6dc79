// Log-likelihood scoring against a naive double-precision forward: Fast-dLLM v2's first-token
// score (FASTDLLM_V2.md §3.6) over the view spelled out from the spec, and an AR model's causal
// score over the whole target; and both embedded models on their tasks as multiple choice.
#include <doctest/doctest.h>

#include <cctype>
#include <cmath>
#include <filesystem>

#include "../support/check_error.hpp"
#include "../support/naive_model.hpp"
#include "../support/paths.hpp"
#include "blockdiff/eval/loglikelihood.hpp"
#include "blockdiff/model/init.hpp"
#include "blockdiff/train/tasks.hpp"

using namespace blockdiff;
using Qwen = model::Qwen2<backend::Host>;

namespace {

// log p(target[0]) by the naive model: the view written out as §3.6 says (the official
// _forward_process: mask target[0], append block - L % block masks, EOS at L), one forward under
// (q / B >= k / B), log-softmax of row P - 1 in f64.
template <int B>
double naive_loglikelihood(const test::NaiveQwen2& naive, const eval::ScoreRequest& r, int mask, int eos) {
  std::vector<int> seq = r.prefix;
  seq.insert(seq.end(), r.target.begin(), r.target.end());
  const std::size_t L = seq.size(), P = r.prefix.size();
  seq[P] = mask;
  for (std::size_t i = 0; i < B - L % B; ++i) seq.push_back(mask);
  seq[L] = eos;
  const auto logits = naive.forward(seq, [](int q, int k) { return q / B >= k / B; });
  const auto& row = logits[P - 1];
  double top = row[0], sum = 0;
  for (double x : row) top = std::max(top, x);
  for (double x : row) sum += std::exp(x - top);
  return row[static_cast<std::size_t>(r.target[0])] - top - std::log(sum);
}

// Sum of log p(target[i]) by the naive model under the causal mask, row P - 1 + i.
double naive_causal(const test::NaiveQwen2& naive, const eval::ScoreRequest& r) {
  std::vector<int> seq = r.prefix;
  seq.insert(seq.end(), r.target.begin(), r.target.end() - 1);
  const auto logits = naive.forward(seq, [](int q, int k) { return k <= q; });
  double sum = 0;
  for (std::size_t i = 0; i < r.target.size(); ++i) {
    const auto& row = logits[r.prefix.size() - 1 + i];
    double top = row[0], z = 0;
    for (double x : row) top = std::max(top, x);
    for (double x : row) z += std::exp(x - top);
    sum += row[static_cast<std::size_t>(r.target[i])] - top - std::log(z);
  }
  return sum;
}

// The f32 forward is held to 1e-5 of the largest logit against the naive model (tests/model); a
// log-probability is the difference of a logit and the log-normaliser, each within that, and the
// golden model's logits reach 48: 1e-3 per scored token.
constexpr double kTol = 1e-3;

std::vector<int> ids(int n, int seed, int vocab) {
  std::vector<int> t;
  for (int i = 0; i < n; ++i) t.push_back((seed * 37 + i * 11 + i * i * 5) % (vocab - 3));
  return t;
}

std::vector<int> join(std::vector<int> a, const std::vector<int>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

// The golden model, throwing from its `fail_at`-th forward after running it: a forward that
// failed part-way, its K/V written (as a device error reported after the kernels would leave it).
struct FailingModel {
  using backend_type = backend::Host;
  Qwen& model;
  int fail_at = -1, forwards = 0;

  const io::ModelConfig& config() const { return model.config(); }
  template <class Mask>
  TensorView<const float> forward(std::span<model::ForwardRow<backend::Host>> rows) {
    const auto out = model.forward<Mask>(rows);
    if (++forwards == fail_at) throw Error("the forward failed");
    return out;
  }
  std::int64_t logit_offset(std::size_t r) const { return model.logit_offset(r); }
  auto make_cache(int capacity) const { return model.make_cache(capacity); }
};

}  // namespace

TEST_CASE("loglikelihood: the scoring view is §3.6's, a whole block of padding on a boundary") {
  const eval::ScoreOptions o{.mask_id = 1, .eos_id = 2};
  // prefix + target = 5 tokens: [MASK] for target[0], EOS at 5, masks to 8.
  CHECK(eval::scoring_view<4>({{5, 6, 7}, {8, 9}}, o) == std::vector<int>{5, 6, 7, 1, 9, 2, 1, 1});
  // 4 tokens end on a boundary: the official code appends a whole block (4 - 4 % 4 = 4).
  CHECK(eval::scoring_view<4>({{5, 6}, {8, 9}}, o) == std::vector<int>{5, 6, 1, 9, 2, 1, 1, 1});
  CHECK(eval::scoring_view<4>({{5, 6, 7}, {8}}, o) == std::vector<int>{5, 6, 7, 1, 2, 1, 1, 1});
  CHECK_ERROR(eval::scoring_view<4>({{}, {8}}, o), "scoring view: the prefix and the target need a token each");
  CHECK_ERROR(eval::scoring_view<4>({{5}, {}}, o), "scoring view: the prefix and the target need a token each");
}

TEST_CASE("loglikelihood: equals a naive f64 forward over the view, in batches of any size") {
  auto m = Qwen::load(test::golden("model-f32-tied"));
  const test::NaiveQwen2 naive(m);
  const int V = m.config().vocab_size, mask = *m.config().mask_token_id, eos = *m.config().eos_token_id;
  // Targets of one and several tokens; prefixes ending inside a block, on its last position (the
  // scored logit then lies in the block before target[0]'s), and past one block.
  std::vector<eval::ScoreRequest> requests;
  for (auto [p, t] : {std::pair{3, 1}, {7, 1}, {8, 3}, {5, 6}, {11, 2}, {1, 4}, {16, 1}})
    requests.push_back({ids(p, p + 3 * t, V), ids(t, 7 * p + t, V)});
  requests[2].target[0] = requests[0].target[0];  // repeat a scored token across requests

  auto check_block = [&]<int B>() {
    CAPTURE(B);
    const eval::ScoreOptions one{.mask_id = mask, .eos_id = eos, .batch = 1};
    const auto scores = eval::first_token_loglikelihood<B>(m, requests, one).scores;
    REQUIRE(scores.size() == requests.size());
    for (std::size_t i = 0; i < requests.size(); ++i) {
      CAPTURE(i);
      const double want = naive_loglikelihood<B>(naive, requests[i], mask, eos);
      CHECK(std::fabs(scores[i].loglikelihood - want) < kTol);
      CHECK(scores[i].loglikelihood < 0);
      CHECK(scores[i].greedy == (scores[i].argmax == requests[i].target[0]));
    }
    for (int batch : {3, 16}) {
      const eval::ScoreOptions o{.mask_id = mask, .eos_id = eos, .batch = batch};
      const auto batched = eval::first_token_loglikelihood<B>(m, requests, o).scores;
      for (std::size_t i = 0; i < requests.size(); ++i) {
        CHECK(batched[i].loglikelihood == doctest::Approx(scores[i].loglikelihood).epsilon(1e-5));
        CHECK(batched[i].argmax == scores[i].argmax);
      }
    }
  };
  check_block.template operator()<4>();
  check_block.template operator()<8>();
}

TEST_CASE("loglikelihood: choices of one prefix share its prefill, and only the scored block runs") {
  auto m = Qwen::load(test::golden("model-f32-tied"));
  const test::NaiveQwen2 naive(m);
  const int mask = *m.config().mask_token_id, eos = *m.config().eos_token_id;
  const auto prefix = ids(20, 4, 320);
  const std::vector<std::vector<int>> choices{{7, 8, 9}, {10}, {11, 12}, {13, 14, 15, 16, 17, 18, 19, 20, 21, 22}};
  std::vector<eval::ScoreRequest> requests;
  for (auto& c : choices) requests.push_back({prefix, c});
  requests.push_back({ids(5, 9, 320), {30}});                    // scored in block 0: no prefill
  requests.push_back({ids(20, 5, 320), {31}});                   // another prefix: its own prefill
  const eval::ScoreOptions o{.mask_id = mask, .eos_id = eos, .batch = 16};
  const auto s = eval::first_token_loglikelihood<8>(m, requests, o);
  // Groups: the four choices (blocks 0-1 prefilled, scored in block 2), the 5-token prefix, the
  // other 20-token prefix. One prefill of two rows (16 + 16 tokens), then four rounds of scored
  // blocks: three rows, then one each.
  CHECK(s.forwards == 5);
  CHECK(s.positions == 32 + 6 * 8);
  for (std::size_t i = 0; i < requests.size(); ++i)
    CHECK(std::fabs(s.scores[i].loglikelihood - naive_loglikelihood<8>(naive, requests[i], mask, eos)) < kTol);
  // Requests scored in their first block share no prefill: one forward scores them all.
  const std::vector<eval::ScoreRequest> first_block{{{3, 4}, {5}}, {{3, 4, 6}, {5}}, {{7}, {8, 9}}};
  const auto f = eval::first_token_loglikelihood<8>(m, first_block, o);
  CHECK(f.forwards == 1);
  CHECK(f.positions == 3 * 8);
  // One prefix row a forward: the same scores.
  const auto narrow = eval::first_token_loglikelihood<8>(m, requests, {.mask_id = mask, .eos_id = eos, .batch = 1});
  CHECK(narrow.forwards == 2 + 6);
  for (std::size_t i = 0; i < requests.size(); ++i)
    CHECK(narrow.scores[i].loglikelihood == doctest::Approx(s.scores[i].loglikelihood).epsilon(1e-5));

  // Choices of one token have the same view (target[0] is masked): their scored block runs once
  // and each reads its own logit. So do the one-token choices of questions scored in block 0,
  // which share no prefill, where their prefixes are the same.
  const std::vector<eval::ScoreRequest> letters{{prefix, {40}}, {prefix, {41}}, {prefix, {42}}, {prefix, {43, 44}},
                                                {{3, 4}, {40}},   {{3, 4}, {41}},   {{3, 5}, {41}}};
  const auto l = eval::first_token_loglikelihood<8>(m, letters, o);
  CHECK(l.forwards == 1 + 2);  // the prefill; round 1: three distinct blocks; round 2: {43, 44}'s
  CHECK(l.positions == 16 + 4 * 8);
  for (std::size_t i = 0; i < letters.size(); ++i)
    CHECK(std::fabs(l.scores[i].loglikelihood - naive_loglikelihood<8>(naive, letters[i], mask, eos)) < kTol);
  CHECK(l.scores[0].argmax == l.scores[1].argmax);
  CHECK(l.scores[0].loglikelihood != l.scores[1].loglikelihood);
  // A question's choices need not come together: a later group of the batch with the same shared
  // part copies its K/V from the first's cache after the prefill, and the scored block run for the
  // first serves it too.
  const std::vector<eval::ScoreRequest> apart{{prefix, {40}}, {ids(20, 5, 320), {40}}, {prefix, {41}}};
  const auto ap = eval::first_token_loglikelihood<8>(m, apart, o);
  CHECK(ap.forwards == 2);
  CHECK(ap.positions == 2 * 16 + 2 * 8);
  for (std::size_t i = 0; i < apart.size(); ++i)
    CHECK(std::fabs(ap.scores[i].loglikelihood - naive_loglikelihood<8>(naive, apart[i], mask, eos)) < kTol);

  // Scored blocks of the same tokens that score different positions are two runs, each read at
  // its own row: a prefix may hold [MASK]s and the EOS (few-shot examples packed as training packs
  // them), and here the second's spells out the first's view up to its own scored position.
  const std::vector<eval::ScoreRequest> lookalikes{{{3}, {5}}, {{3, mask, eos, mask, mask, mask, mask}, {6}}};
  const auto view_a = eval::scoring_view<8>(lookalikes[0], o), view_b = eval::scoring_view<8>(lookalikes[1], o);
  REQUIRE(std::equal(view_a.begin(), view_a.begin() + 8, view_b.begin()));
  const auto a = eval::first_token_loglikelihood<8>(m, lookalikes, o);
  CHECK(a.forwards == 1);
  CHECK(a.positions == 2 * 8);
  for (std::size_t i = 0; i < lookalikes.size(); ++i)
    CHECK(std::fabs(a.scores[i].loglikelihood - naive_loglikelihood<8>(naive, lookalikes[i], mask, eos)) < kTol);

  // A question scored in its first block prefills nothing: its choices of one token are one group,
  // so a batch of two groups is two such questions, in one forward (a group a choice: six forwards).
  std::vector<eval::ScoreRequest> short_questions;
  for (int q = 0; q < 4; ++q)
    for (int c : {40, 41, 42}) short_questions.push_back({ids(5, 60 + q, 320), {c}});
  const auto sq = eval::first_token_loglikelihood<8>(m, short_questions, {.mask_id = mask, .eos_id = eos, .batch = 2});
  CHECK(sq.forwards == 2);
  CHECK(sq.positions == 4 * 8);
  for (std::size_t i = 0; i < short_questions.size(); ++i)
    CHECK(std::fabs(sq.scores[i].loglikelihood - naive_loglikelihood<8>(naive, short_questions[i], mask, eos)) < kTol);
}

TEST_CASE("loglikelihood: few-shot prefixes run what they share once, across questions and batches") {
  auto m = Qwen::load(test::golden("model-f32-tied"));
  const test::NaiveQwen2 naive(m);
  const int mask = *m.config().mask_token_id, eos = *m.config().eos_token_id;
  // Three questions after the same 24-token few-shot header (three blocks of 8), with three
  // one-token choices each. Their shared parts (the prefix's whole blocks before the scored one)
  // are 32, 32 and 40 tokens, and agree on the header's 24.
  const auto header = ids(24, 2, 320);
  std::vector<eval::ScoreRequest> requests;
  for (auto [n, seed] : {std::pair{10, 10}, {13, 11}, {20, 12}})
    for (auto c : std::vector<std::vector<int>>{{40 + seed}, {50 + seed}, {60 + seed, 7}})
      requests.push_back({join(header, ids(n, seed, 320)), c});
  auto check_scores = [&](const eval::Scores& s) {
    REQUIRE(s.scores.size() == requests.size());
    for (std::size_t i = 0; i < requests.size(); ++i) {
      CAPTURE(i);
      CHECK(std::fabs(s.scores[i].loglikelihood - naive_loglikelihood<8>(naive, requests[i], mask, eos)) < kTol);
    }
  };
  // Copies of a block or more (the default asks 64 tokens of a copy: headers of few-shot
  // examples, not a question's first words).
  auto score = [&](int batch, int min_copy = 8) {
    return eval::first_token_loglikelihood<8>(m, requests,
                                              {.mask_id = mask, .eos_id = eos, .batch = batch, .min_copy = min_copy});
  };
  // Every batch runs the header once and each question's own blocks once: 32 + 8 + 16 prefilled,
  // then two scored blocks a question, the one-token choices' and the other's (without the
  // sharing, 104 prefilled).
  const std::int64_t positions = 32 + 8 + 16 + 3 * 2 * 8;
  // One batch: the first question's prefill, then the others' rest after copying the header from
  // its cache (two prefill forwards), and two rounds of three scored blocks.
  const auto wide = score(16);
  check_scores(wide);
  CHECK(wide.forwards == 2 + 2);
  CHECK(wide.positions == positions);
  // A question a batch: each keeps the header its cache held from the last one.
  const auto narrow = score(1);
  check_scores(narrow);
  CHECK(narrow.forwards == 3 * (1 + 2));
  CHECK(narrow.positions == positions);
  // Two a batch: a copy within the first, the header kept in the second.
  const auto two = score(2);
  check_scores(two);
  CHECK(two.forwards == (2 + 2) + (1 + 2));
  CHECK(two.positions == positions);
  // A Scorer keeps its caches from call to call: a question a call runs the header once, as a
  // question a batch does in one call; after reset() the next call runs it again.
  {
    eval::Scorer<eval::scoring::FirstToken<8>, Qwen> scorer(m, {.mask_id = mask, .eos_id = eos, .batch = 1});
    eval::Scores calls;
    for (std::size_t q = 0; q < 3; ++q) {
      const auto s = scorer(std::span(requests).subspan(3 * q, 3));
      for (std::size_t c = 0; c < 3; ++c) {
        CAPTURE(q);
        CHECK(std::fabs(s.scores[c].loglikelihood - naive_loglikelihood<8>(naive, requests[3 * q + c], mask, eos)) < kTol);
      }
      calls.forwards += s.forwards;
      calls.positions += s.positions;
    }
    CHECK(calls.forwards == narrow.forwards);
    CHECK(calls.positions == positions);
    scorer.reset();
    CHECK(scorer(std::span(requests).subspan(6, 3)).positions == 40 + 2 * 8);
    CHECK_ERROR(scorer(std::vector<eval::ScoreRequest>{{{1, 2}, {mask}}}), "score request 0: the target holds the [MASK] id");
    CHECK(scorer(std::span(requests).subspan(6, 3)).positions == 2 * 8);  // a refused call leaves the caches as they were
  }
  // A call whose forward fails drops the caches: its prefill wrote over the K/V of the last
  // question's own block, which a kept cache would still claim to hold.
  {
    FailingModel failing{m};
    eval::Scorer<eval::scoring::FirstToken<8>, FailingModel> scorer(failing, {.mask_id = mask, .eos_id = eos, .batch = 1});
    const auto first = std::span(requests).subspan(0, 3), second = std::span(requests).subspan(3, 3);
    scorer(first);
    failing.fail_at = failing.forwards + 1;  // the second question's prefill of its own block
    CHECK_ERROR(scorer(second), "the forward failed");
    const auto again = scorer(first);
    CHECK(again.positions == 32 + 2 * 8);  // the header and its block run again, from empty caches
    for (std::size_t c = 0; c < 3; ++c)
      CHECK(std::fabs(again.scores[c].loglikelihood - naive_loglikelihood<8>(naive, requests[c], mask, eos)) < kTol);
  }
  // Copies of at least 64 tokens: one batch runs each header in one prefill forward; a question
  // a batch still keeps what its cache holds.
  const auto no_copy = score(16, 64);
  check_scores(no_copy);
  CHECK(no_copy.forwards == 1 + 2);
  CHECK(no_copy.positions == 32 + 32 + 40 + 3 * 2 * 8);
  CHECK(score(1, 64).positions == positions);

  // Two tasks in one batch whose headers share 11 tokens, of which only the first block's K/V
  // agree: the second task's first question copies that block from the first task's, and its
  // second question copies the whole header from it, a forward later.
  const auto common = ids(11, 5, 320);
  const auto task_a = join(common, ids(13, 3, 320)), task_b = join(common, ids(13, 4, 320));
  requests.clear();
  for (const auto* task : {&task_a, &task_b})
    for (int q : {20, 21})
      for (int c : {7, 9}) requests.push_back({join(*task, ids(10, q + (task == &task_b ? 2 : 0), 320)), {c}});
  const auto tasks = score(16);
  check_scores(tasks);
  CHECK(tasks.forwards == 3 + 1);
  CHECK(tasks.positions == (32 + 8 + 24 + 8) + 4 * 8);

  // Two tasks' questions interleaved across batches of two, [A, B] then [B, A]: each group of the
  // second batch takes the cache that holds its own task's header, wherever it lay in the first,
  // and prefills its question's block alone (by position, each would run its header again: 160).
  // The headers end in [MASK] pads, as few-shot examples laid out as training packed them do.
  const auto header_a = join(ids(21, 13, 320), {mask, mask, mask}), header_b = join(ids(20, 14, 320), {mask, mask, mask, mask});
  requests.clear();
  for (auto [header, q] : {std::pair{&header_a, 40}, {&header_b, 41}, {&header_b, 42}, {&header_a, 43}})
    for (int c : {7, 9}) requests.push_back({join(*header, ids(10, q, 320)), {c}});
  const auto interleaved = score(2, 64);
  check_scores(interleaved);
  CHECK(interleaved.forwards == 2 * (1 + 1));
  CHECK(interleaved.positions == (2 * 32 + 2 * 8) + (2 * 8 + 2 * 8));

  // Headers shorter than min_copy: a batch copies them where, all questions together, the
  // positions saved outweigh the prefill forward added (min_copy positions a forward). Questions
  // of 10 tokens after a 16-token header (ending in pads): shared parts of 24, 16 of them common.
  const auto short_header = join(ids(13, 15, 320), {mask, mask, mask});
  for (int questions : {5, 6}) {
    CAPTURE(questions);
    requests.clear();
    for (int q = 0; q < questions; ++q)
      for (int c : {7, 9}) requests.push_back({join(short_header, ids(10, 50 + q, 320)), {c}});
    const auto s = score(16, 64);
    check_scores(s);
    // Without copies: 24 a question in one prefill forward. With them: 24, then 8 a question a
    // forward later. Five questions tie (120 + 64 against 56 + 2 * 64: no copies); six do not.
    const std::int64_t prefill = questions == 5 ? 5 * 24 : 24 + 5 * 8;
    CHECK(s.positions == prefill + questions * 8);
    CHECK(s.forwards == (questions == 5 ? 1 : 2) + 1);
  }

  // Causal scoring shares any common start, not whole blocks only.
  requests.clear();
  const auto context = ids(9, 6, 320);
  for (int q : {30, 31, 32})
    for (auto t : std::vector<std::vector<int>>{{4, 5}, {6}}) requests.push_back({join(context, ids(3 + q % 2, q, 320)), t});
  for (int batch : {1, 16}) {
    CAPTURE(batch);
    const auto causal = eval::causal_loglikelihood(m, requests, {.batch = batch, .min_copy = 1});
    for (std::size_t i = 0; i < requests.size(); ++i)
      CHECK(std::fabs(causal.scores[i].loglikelihood - naive_causal(naive, requests[i])) < 2 * kTol);
    // Shared parts of 11, 12 and 11 tokens (all but the last prefix token), 9 of them common;
    // then six scored runs of a target's length.
    CHECK(causal.positions == (11 + 3 + 2) + 3 * (2 + 1));
    CHECK(causal.forwards == (batch == 16 ? 2 + 2 : 3 * (1 + 2)));
  }
}

TEST_CASE("loglikelihood: kept caches hold the examples of interleaved tasks, the least recently used given up") {
  auto m = Qwen::load(test::golden("model-f32-tied"));
  const test::NaiveQwen2 naive(m);
  const int mask = *m.config().mask_token_id, eos = *m.config().eos_token_id;
  // Tasks with 24-token headers (three blocks of 8); A's and B's share their first block. A
  // question is 10 tokens with two one-token choices: its shared part is the header and its own
  // first block (32 tokens), then one scored block.
  const auto common = ids(8, 70, 320);
  const auto a = join(common, ids(16, 71, 320)), b = join(common, ids(16, 72, 320)), c = ids(24, 73, 320),
             d = ids(24, 74, 320);
  auto score = [&](std::vector<const std::vector<int>*> tasks, int batch, int caches) {
    std::vector<eval::ScoreRequest> requests;
    int q = 80;
    for (const auto* task : tasks) {
      ++q;
      for (int choice : {7, 9}) requests.push_back({join(*task, ids(10, q, 320)), {choice}});
    }
    const auto s = eval::first_token_loglikelihood<8>(
        m, requests, {.mask_id = mask, .eos_id = eos, .batch = batch, .min_copy = 8, .caches = caches});
    REQUIRE(s.scores.size() == requests.size());
    for (std::size_t i = 0; i < requests.size(); ++i)
      CHECK(std::fabs(s.scores[i].loglikelihood - naive_loglikelihood<8>(naive, requests[i], mask, eos)) < kTol);
    CHECK(s.forwards == 2 * int(tasks.size()) / batch);  // a prefill and a scoring forward a batch
    return s.positions - 8 * std::int64_t(tasks.size());  // the prefill's
  };

  // A, B, A, B a question a batch. One cache (caches 0: one a group of a batch): each question
  // keeps the first block, which all four share, and runs the rest.
  CHECK(score({&a, &b, &a, &b}, 1, 0) == 32 + 3 * 24);
  // Two: each task keeps its own cache. B takes a new one rather than A's, of which it would keep
  // a quarter, and copies the common block from A's (no forward added); then each question runs
  // its own block alone.
  CHECK(score({&a, &b, &a, &b}, 1, 2) == 32 + 24 + 2 * 8);
  // Two caches, three tasks (C and D share nothing): a task new to the caches takes the one used
  // least recently. After A, C, A that is C's, and A keeps its header; after A, C it is A's, and A
  // runs its header again.
  CHECK(score({&a, &c, &a, &d, &a}, 1, 2) == 32 + 32 + 8 + 32 + 8);
  CHECK(score({&a, &c, &d, &a}, 1, 2) == 4 * 32);
  // Three caches: one that a group copies from counts as used. After A, C, and B (which copies the
  // common block from A's), D gives up C's, the least recently used, and A keeps its header.
  CHECK(score({&a, &c, &b, &d, &a}, 1, 3) == 32 + 32 + 24 + 32 + 8);
  // Two a batch, caches 0: [A, C] then [D, B]. Both caches are taken again by the second batch,
  // so B takes A's, keeping the first block, though that is less than half of what A's holds.
  CHECK(score({&a, &c, &d, &b}, 2, 0) == 2 * 32 + 32 + 24);
}

TEST_CASE("loglikelihood: argmax and greedy are the scored row's") {
  auto m = Qwen::load(test::golden("model-f32-tied"));
  const test::NaiveQwen2 naive(m);
  const int mask = *m.config().mask_token_id, eos = *m.config().eos_token_id;
  const eval::ScoreRequest r{ids(6, 2, 320), {5}};
  std::vector<int> view = eval::scoring_view<8>(r, {.mask_id = mask, .eos_id = eos});
  const auto row = naive.forward(view, [](int q, int k) { return q / 8 >= k / 8; })[5];
  const int best = int(std::max_element(row.begin(), row.end()) - row.begin());
  const eval::ScoreOptions o{.mask_id = mask, .eos_id = eos};
  std::vector<eval::ScoreRequest> both{r, {r.prefix, {best}}};
  const auto s = eval::first_token_loglikelihood<8>(m, both, o).scores;
  CHECK(s[0].argmax == best);
  CHECK(s[1].argmax == best);
  CHECK(s[0].greedy == (best == 5));
  CHECK(s[1].greedy);
  CHECK(s[1].loglikelihood >= s[0].loglikelihood);
}

TEST_CASE("loglikelihood: bad requests are named") {
  auto m = Qwen::load(test::golden("model-f32-tied"));
  const eval::ScoreOptions o{.mask_id = 319, .eos_id = 318};
  auto score = [&](std::vector<eval::ScoreRequest> r, eval::ScoreOptions opt) {
    return eval::first_token_loglikelihood<32>(m, r, opt).scores;
  };
  CHECK_ERROR(score({{{1, 2}, {3}}, {{}, {3}}}, o), "score request 1: the prefix is empty");
  CHECK_ERROR(score({{{1, 2}, {}}}, o), "score request 0: the target is empty");
  CHECK_ERROR(score({{{1, 320}, {3}}}, o), "token id 320 at index 1 of the prefix is outside the vocabulary [0, 320)");
  CHECK_ERROR(score({{{1, 2}, {4, 319}}}, o), "the target holds the [MASK] id 319 at index 1");
  // Position prefix - 1 is scored: its block must fit the context (the target's need not).
  CHECK_ERROR(score({{std::vector<int>(4097, 5), {3}}}, o),
              "score request 0: a prefix of 4097 tokens is scored in the block of positions [4096, 4128), beyond the "
              "context of 4096 positions");
  CHECK(score({{std::vector<int>(4096, 5), {3, 4}}}, o).size() == 1);
  CHECK_ERROR(score({{{1, 2}, {3}}}, {.mask_id = 319, .eos_id = 320}), "EOS id 320 is outside the vocabulary");
  CHECK_ERROR(score({{{1, 2}, {3}}}, {.mask_id = 319, .eos_id = 319}), "the EOS id and the [MASK] id are both 319");
  CHECK_ERROR(score({{{1, 2}, {3}}}, {.mask_id = 319, .eos_id = 318, .batch = 0}), "the batch must be positive");
  CHECK_ERROR(score({{{1, 2}, {3}}}, {.mask_id = 319, .eos_id = 318, .min_copy = 0}), "min_copy must be positive, got 0");
  CHECK_ERROR(score({{{1, 2}, {3}}}, {.mask_id = 319, .eos_id = 318, .caches = -1}),
              "caches must not be negative, got -1");
  CHECK_ERROR(eval::multiple_choice<eval::scoring::FirstToken<32>>(m, {1, 2}, {}, o), "multiple choice: no choices");
}

TEST_CASE("loglikelihood: the embedded model answers its tasks as multiple choice") {
  // Each held-out prompt against its response and three whose first character differs: the
  // embedded Fast-dLLM v2 model, trained at block 8, should put the right first token first.
  const auto dir = std::filesystem::path(BLOCKDIFF_TEST_DATA).parent_path().parent_path() / "models" / "tasks-fdllm2";
  auto m = Qwen::load(dir);
  REQUIRE(m.config().bd_size == 8);
  const auto vocab = train::tasks::vocabulary();
  const eval::ScoreOptions o{.mask_id = vocab.mask_id(), .eos_id = vocab.eos_id()};
  int correct = 0, n = 0, tied = 0;
  for (const auto& e : train::tasks::make("mix", train::tasks::Split::held_out, 60)) {
    const char first = e.response[0];
    const std::string pool = std::isdigit(static_cast<unsigned char>(first)) ? "0123456789" : "abcdefghij";
    std::vector<std::vector<int>> choices{vocab.encode(e.response)};
    for (char c : pool)
      if (c != first && choices.size() < 4) {
        std::string other = e.response;
        other[0] = c;
        choices.push_back(vocab.encode(other));
      }
    const auto mc = eval::multiple_choice<eval::scoring::FirstToken<8>>(m, vocab.encode(e.prompt), choices, o);
    REQUIRE(mc.scores.size() == 4);
    correct += mc.chosen == 0;
    tied += mc.tied;
    ++n;
  }
  CHECK(tied == 0);
  CHECK(correct >= n * 9 / 10);
  MESSAGE("multiple choice on the embedded model: ", correct, " of ", n);
}

TEST_CASE("loglikelihood: causal scoring sums the whole target, as lm-eval scores an AR model") {
  auto m = Qwen::load(test::golden("model-f32-tied"));
  const test::NaiveQwen2 naive(m);
  std::vector<eval::ScoreRequest> requests;
  const auto shared = ids(9, 3, 320);
  for (auto& t : std::vector<std::vector<int>>{{4}, {5, 6, 7}, {8, 9}}) requests.push_back({shared, t});
  requests.push_back({{12}, {13, 14}});         // nothing to share: the prefix is the scored row
  requests.push_back({ids(30, 8, 320), ids(6, 1, 320)});
  requests.push_back({{319, 318}, {319}});      // the [MASK] and EOS ids are tokens like others here
  for (int batch : {1, 2, 16}) {
    CAPTURE(batch);
    const auto s = eval::causal_loglikelihood(m, requests, {.batch = batch});
    for (std::size_t i = 0; i < requests.size(); ++i) {
      CAPTURE(i);
      CHECK(std::fabs(s.scores[i].loglikelihood - naive_causal(naive, requests[i])) < kTol * double(requests[i].target.size()));
    }
    if (batch == 16) {
      // One prefill (the shared 8 tokens, the 29 of the long prefix, the last request's 1), then
      // three rounds: the shared prefix's three targets, the others beside the first.
      CHECK(s.forwards == 4);
      CHECK(s.positions == (8 + 29 + 1) + (1 + 2 + 6 + 1) + 3 + 2);
    }
  }
  // greedy: every target token is its row's argmax. Build the greedy continuation from the naive
  // model and score it, a one-token change of its end, and a changed first token followed by
  // the greedy continuation of that (the change alone is not its row's argmax).
  auto continue_greedily = [&](std::vector<int> target, int n) {
    std::vector<int> seq = join(ids(5, 2, 320), target);
    for (int i = 0; i < n; ++i) {
      const auto row = naive.forward(seq, [](int q, int k) { return k <= q; }).back();
      const int best = int(std::max_element(row.begin(), row.end()) - row.begin());
      target.push_back(best);
      seq.push_back(best);
    }
    return target;
  };
  const auto greedy_target = continue_greedily({}, 3);
  auto changed = greedy_target;
  changed[2] = (changed[2] + 1) % 317;
  const auto late = continue_greedily({(greedy_target[0] + 1) % 317}, 2);
  const std::vector<eval::ScoreRequest> g{
      {ids(5, 2, 320), greedy_target}, {ids(5, 2, 320), changed}, {ids(5, 2, 320), late}};
  const auto gs = eval::causal_loglikelihood(m, g, {});
  CHECK(gs.scores[0].greedy);
  CHECK_FALSE(gs.scores[1].greedy);
  CHECK_FALSE(gs.scores[2].greedy);
  CHECK(gs.scores[2].argmax == greedy_target[0]);
  CHECK(gs.scores[0].argmax == greedy_target[0]);
  CHECK(gs.scores[0].loglikelihood > gs.scores[1].loglikelihood);
  // The last position run must fit the context: prefix + target - 1 positions.
  CHECK(eval::causal_loglikelihood(m, std::vector<eval::ScoreRequest>{{std::vector<int>(4000, 5), ids(97, 1, 320)}}, {})
            .scores.size() == 1);
  CHECK_ERROR(eval::causal_loglikelihood(m, std::vector<eval::ScoreRequest>{{std::vector<int>(4000, 5), ids(98, 1, 320)}}, {}),
              "score request 0: a prefix of 4000 and a target of 98 tokens run 4097 positions, beyond the context of 4096");
  CHECK_ERROR(eval::causal_loglikelihood(m, std::vector<eval::ScoreRequest>{{{1}, {}}}, {}), "the target is empty");
}

TEST_CASE("loglikelihood: the embedded AR model answers its tasks as multiple choice, scored causally") {
  // The same questions as the Fast-dLLM v2 model's, the whole response scored: the AR base.
  const auto dir = std::filesystem::path(BLOCKDIFF_TEST_DATA).parent_path().parent_path() / "models" / "tasks-ar";
  auto m = Qwen::load(dir);
  const auto vocab = train::tasks::vocabulary();
  int correct = 0, greedy = 0, n = 0;
  for (const auto& e : train::tasks::make("mix", train::tasks::Split::held_out, 60)) {
    auto right = vocab.encode(e.response);
    right.push_back(vocab.eos_id());
    std::vector<std::vector<int>> choices{right};
    // The response with one digit or letter changed, at each of its first three.
    for (std::size_t i = 0; i < e.response.size() && choices.size() < 4; ++i) {
      const char was = e.response[i];
      const std::string pool = std::isdigit(static_cast<unsigned char>(was)) ? "0123456789" : "abcdefghij";
      if (pool.find(was) == std::string::npos) continue;  // ',' and '#'
      auto wrong = right;
      wrong[i] = vocab.encode(std::string(1, pool[(pool.find(was) + 3) % pool.size()]))[0];
      choices.push_back(wrong);
    }
    REQUIRE(choices.size() == 4);
    const auto mc = eval::multiple_choice<eval::scoring::Causal>(m, vocab.encode(e.prompt), choices, {});
    correct += mc.chosen == 0;
    greedy += mc.scores[0].greedy;
    ++n;
  }
  CHECK(correct >= n * 9 / 10);
  CHECK(greedy >= n * 9 / 10);  // the AR base decodes these answers greedily (the study: 100%)
  MESSAGE("causal multiple choice on the embedded AR model: ", correct, " of ", n, "; greedy ", greedy);
}
