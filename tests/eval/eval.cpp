// Scoring: accuracy by exact answer, and the throughput figures' definitions.
#include <doctest/doctest.h>

#include "blockdiff/eval/eval.hpp"

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

TEST_CASE("eval: a response with a stray [MASK] or a missing answer is wrong") {
  const auto vocab = tasks::vocabulary();
  const auto examples = tasks::make("arith", tasks::Split::held_out, 2);
  auto broken = [&](std::span<const std::vector<int>> prompts) {
    std::vector<eval::RowOutput> out;
    for (std::size_t i = 0; i < prompts.size(); ++i) {
      auto ids = vocab.encode(examples[i].response);
      if (i == 0) ids.insert(ids.begin(), vocab.mask_id());        // answer intact, but a mask left in
      else ids = vocab.encode(examples[i].response.substr(0, 2));  // no '#': no answer
      out.push_back({ids, 1, 1});
    }
    return out;
  };
  CHECK(eval::evaluate(examples, vocab, 2, broken).correct == 0);
}
