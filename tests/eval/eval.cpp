// Scoring: accuracy by exact answer, and the throughput figures' definitions.
#include <doctest/doctest.h>

#include "../support/check_error.hpp"
#include "blockdiff/eval/eval.hpp"
#include "blockdiff/model/init.hpp"

#include <optional>

using namespace blockdiff;
namespace tasks = blockdiff::train::tasks;

TEST_CASE("eval: exact-answer accuracy and the per-forward figures") {
  const auto vocab = tasks::vocabulary();
  const auto examples = tasks::make("mix", tasks::Split::held_out, 10);
  int calls = 0;
  // An oracle that answers every other prompt right, in 3 denoising forwards plus 2 others.
  auto oracle = [&](std::span<const std::vector<int>> prompts) {
    std::vector<eval::RowOutput> out;
    for (auto& p : prompts) {
      const std::string prompt = vocab.decode(p);
      std::string response;
      for (auto& e : examples)
        if (e.prompt == prompt) response = e.response;
      const std::size_t i = std::size_t(calls) * 4 + out.size();
      if (i % 2 == 1) response = response.substr(0, response.size() - 1) + (response.back() == '0' ? "1" : "0");
      auto ids = vocab.encode(response);
      ids.push_back(vocab.eos_id());
      out.push_back({ids, 3, 5});
    }
    ++calls;
    return out;
  };
  std::vector<int> progress;
  const auto r = eval::evaluate(examples, vocab, 4, oracle, [&](int done, int) { progress.push_back(done); });
  CHECK(calls == 3);
  CHECK(progress == std::vector<int>{4, 8, 10});
  CHECK(r.n == 10);
  CHECK(r.correct == 5);
  CHECK(r.accuracy() == doctest::Approx(0.5));
  std::int64_t tokens = 0;
  for (auto& e : examples) tokens += std::int64_t(e.response.size()) + 1;
  CHECK(r.new_tokens == tokens);
  CHECK(r.denoising_forwards == 30);
  CHECK(r.total_forwards == 50);
  CHECK(r.tokens_per_forward() == doctest::Approx(double(tokens) / 30));
  CHECK(r.forwards_per_token() == doctest::Approx(50.0 / double(tokens)));
  CHECK(r.seconds > 0);
}

TEST_CASE("eval: a response with a stray [MASK] or EOS, or a missing answer, is wrong") {
  const auto vocab = tasks::vocabulary();
  const auto examples = tasks::make("arith", tasks::Split::held_out, 3);
  auto broken = [&](std::span<const std::vector<int>> prompts) {
    std::vector<eval::RowOutput> out;
    for (std::size_t i = 0; i < prompts.size(); ++i) {
      auto ids = vocab.encode(examples[i].response);
      if (i == 0) ids.insert(ids.begin(), vocab.mask_id());        // answer intact, but a mask left in
      else if (i == 1) ids.insert(ids.begin(), vocab.eos_id());    // answer intact, after an EOS
      else ids = vocab.encode(examples[i].response.substr(0, 2));  // no '#': no answer
      out.push_back({ids, 1, 1});
    }
    return out;
  };
  CHECK(eval::evaluate(examples, vocab, 3, broken).correct == 0);
  CHECK_ERROR(eval::evaluate(examples, vocab, 0, broken), "eval: the batch must be positive, got 0");
  // A decoder that answers with another number of rows than it was asked is named.
  auto extra = [&](std::span<const std::vector<int>> prompts) {
    auto out = broken(prompts);
    out.push_back(out.back());
    return out;
  };
  CHECK_ERROR(eval::evaluate(examples, vocab, 3, extra), "eval: the decoder returned 4 rows for 3 prompts");
}

TEST_CASE("eval: the decoder adapters pass on what the decoders did, with the vocabulary's mask and EOS") {
  const auto vocab = tasks::vocabulary();
  auto m = model::random_model<backend::Host>(model::preset_config("tasks"), 7);
  const auto examples = tasks::make("mix", tasks::Split::held_out, 3);
  std::vector<std::vector<int>> prompts;
  for (auto& e : examples) prompts.push_back(vocab.encode(e.prompt));
  const int max_new = 12;

  decode::ArOptions ar_options;
  ar_options.max_new_tokens = max_new;
  ar_options.eos_id = vocab.eos_id();
  const auto ar = decode::ar_generate(m, prompts, ar_options);
  const auto ar_rows = eval::ar_decoder(m, vocab, max_new)(prompts);
  REQUIRE(ar_rows.size() == prompts.size());
  for (std::size_t r = 0; r < prompts.size(); ++r) {
    CHECK(ar_rows[r].tokens == ar[r].tokens);
    CHECK(ar_rows[r].denoising_forwards == ar[r].decode_forwards);
    CHECK(ar_rows[r].total_forwards == ar[r].prefill_forwards + ar[r].decode_forwards);
  }

  decode::BlockDiffusionDecoder<model::Qwen2<backend::Host>, BlockShape<8, 4>, unmask::Threshold, cache::Hierarchical<>>
      decoder(m, {0.5f});
  decode::DecodeOptions o;
  o.max_new_tokens = max_new;
  o.mask_id = 1;
  o.eos_id = 0;
  CHECK(vocab.mask_id() == 1);
  CHECK(vocab.eos_id() == 0);
  // What the adapter decodes with (a random model may never reach an EOS, so say it directly).
  const auto adapted = eval::decode_options(vocab, max_new);
  CHECK(adapted.max_new_tokens == max_new);
  CHECK(adapted.mask_id == 1);
  CHECK(adapted.eos_id == std::optional<int>(0));
  const auto direct = decoder.generate(prompts, o);
  const auto rows = eval::diffusion_decoder(decoder, vocab, max_new)(prompts);
  REQUIRE(rows.size() == prompts.size());
  for (std::size_t r = 0; r < prompts.size(); ++r) {
    CHECK(rows[r].tokens == direct[r].tokens);
    CHECK(rows[r].denoising_forwards == direct[r].trace.denoising_forwards());
    CHECK(rows[r].total_forwards == direct[r].trace.total_forwards());
    CHECK(rows[r].total_forwards > rows[r].denoising_forwards);  // a prefill or a commit forward ran
  }
}

TEST_CASE("eval: multiple choice takes each question's most likely choice, batched") {
  const auto vocab = tasks::vocabulary();
  const auto questions = tasks::make_choices("mix", tasks::Split::held_out, 7, 3);
  // A scorer that knows the answers: the right choice scores highest on even questions, a wrong
  // one on odd questions, and on question 4 two choices tie at the top (the first of them wins).
  int calls = 0;
  auto scorer = [&](std::span<const eval::ScoreRequest> requests) {
    eval::Scores s;
    for (const auto& r : requests) {
      std::size_t q = 0;
      while (vocab.encode(questions[q].prompt) != r.prefix) ++q;
      const auto& right = questions[q].choices[std::size_t(questions[q].answer)];
      const bool is_right = vocab.encode(right) == r.target;
      double ll = is_right ? (q % 2 == 0 ? -1.0 : -3.0) : -2.0;
      if (q == 4) ll = -1.0;  // every choice ties
      s.scores.push_back({ll, 0, false});
    }
    s.forwards = 2;
    s.positions = std::int64_t(requests.size());
    ++calls;
    return s;
  };
  std::vector<int> progress;
  const auto r = eval::evaluate_choices(questions, vocab, 3, scorer, [&](int done, int) { progress.push_back(done); });
  CHECK(calls == 3);
  CHECK(progress == std::vector<int>{3, 6, 7});
  CHECK(r.n == 7);
  // Right: questions 0, 2, 6 and question 4 where its answer is the first choice.
  CHECK(r.correct == 3 + (questions[4].answer == 0));
  CHECK(r.tied == 1 + 3);  // question 4, and the odd ones' two wrong choices tie at -2
  CHECK(r.forwards == 6);
  CHECK(r.positions == 21);
  CHECK(r.accuracy() == doctest::Approx(r.correct / 7.0));
  CHECK_ERROR(eval::evaluate_choices(questions, vocab, 0, scorer), "the batch must be positive");
  // A scorer that answers with another number of scores than it was asked is named.
  auto extra = [&](std::span<const eval::ScoreRequest> requests) {
    auto s = scorer(requests);
    s.scores.push_back(s.scores.back());
    return s;
  };
  CHECK_ERROR(eval::evaluate_choices(questions, vocab, 3, extra), "eval: the scorer returned 10 scores for 9 requests");
}

TEST_CASE("eval: multiple choice asks each question after its context") {
  const auto vocab = tasks::vocabulary();
  auto questions = tasks::make_choices("mix", tasks::Split::held_out, 5, 2);
  tasks::add_shots(questions, 1, vocab, 8);
  std::vector<eval::ScoreRequest> seen;
  auto scorer = [&](std::span<const eval::ScoreRequest> requests) {
    seen.insert(seen.end(), requests.begin(), requests.end());
    return eval::Scores{std::vector<eval::TokenScore>(requests.size()), 1, 1};
  };
  eval::evaluate_choices(questions, vocab, 2, scorer);
  REQUIRE(seen.size() == 10);
  for (std::size_t i = 0; i < seen.size(); ++i) {
    const auto& q = questions[i / 2];
    CAPTURE(q.prompt);
    // The example of the question's task, with EOS and [MASK] ids no text encodes, then the prompt.
    auto prefix = tasks::few_shot(tasks::task_of(q.prompt), 1, vocab, 8);
    REQUIRE(prefix.size() % 8 == 0);
    for (int id : vocab.encode(q.prompt)) prefix.push_back(id);
    CHECK(seen[i].prefix == prefix);
    CHECK(seen[i].target == vocab.encode(q.choices[i % 2]));
  }
}
