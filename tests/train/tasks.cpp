// The synthetic tasks: answers checked by an independent reading of each prompt, disjoint
// splits, and the character vocabulary's tokenizer.json round trip.
#include <doctest/doctest.h>

#include <cctype>
#include <set>
#include <sstream>

#include "../support/check_error.hpp"
#include "../support/paths.hpp"
#include "blockdiff/train/tasks.hpp"

using namespace blockdiff;
namespace tasks = blockdiff::train::tasks;

TEST_CASE("train/tasks: every response is the right answer to its prompt") {
  for (const auto& e : tasks::make("mix", tasks::Split::train, 600, 3)) {
    CAPTURE(e.prompt);
    CAPTURE(e.response);
    REQUIRE(e.prompt.size() > 3);
    CHECK(e.prompt.back() == '=');
    const std::string body = e.prompt.substr(2, e.prompt.size() - 3);
    if (e.prompt[0] == 'a') {
      // Read "47+8-5+9" left to right; the response lists every running total, then "#total".
      std::istringstream in(body);
      int total = 0;
      in >> total;
      std::string expect;
      char op;
      int d;
      bool first = true;
      while (in >> op >> d) {
        total += op == '+' ? d : -d;
        CHECK(total >= 0);
        CHECK(total <= 99);
        if (!first) expect += ',';
        expect += std::to_string(total);
        first = false;
      }
      expect += '#';
      expect += std::to_string(total);
      CHECK(e.response == expect);
      CHECK(tasks::answer_of(e.prompt, e.response) == std::to_string(total));
    } else if (e.prompt[0] == 's') {
      std::multiset<char> digits(body.begin(), body.end());
      CHECK(e.response == std::string(digits.begin(), digits.end()));
    } else {
      REQUIRE(e.prompt[0] == 'r');
      CHECK(e.response == std::string(body.rbegin(), body.rend()));
    }
  }
  CHECK_ERROR(tasks::make("gsm8k", tasks::Split::train, 1), "unknown task \"gsm8k\"");
  CHECK_ERROR(tasks::make("sort", tasks::Split::held_out, -1), "task sort: negative example count -1");
  CHECK(tasks::make("sort", tasks::Split::train, 0).empty());
}

TEST_CASE("train/tasks: the held-out split covers each task's whole range") {
  // arith: running totals from 0 to 99 (a 0 is about one example in 500), two to four steps; sort
  // and reverse: four to eight items.
  std::set<int> totals, steps;
  std::set<std::size_t> sorted_lengths, reversed_lengths;
  for (const auto& task : {"arith", "sort", "reverse"})
    for (const auto& e : tasks::make(task, tasks::Split::held_out, 1000)) {
      if (e.prompt[0] != 'a') {
        (e.prompt[0] == 's' ? sorted_lengths : reversed_lengths).insert(e.response.size());
        continue;
      }
      int n = 0;  // the running totals: "55,50,59#59" has three
      for (std::size_t at = 0, end; (end = e.response.find_first_of(",#", at)) != std::string::npos; at = end + 1, ++n)
        totals.insert(std::stoi(e.response.substr(at, end - at)));
      steps.insert(n);
    }
  CHECK(*totals.begin() == 0);
  CHECK(*totals.rbegin() == 99);
  CHECK(steps == std::set<int>{2, 3, 4});
  CHECK(sorted_lengths == std::set<std::size_t>{4, 5, 6, 7, 8});
  CHECK(reversed_lengths == std::set<std::size_t>{4, 5, 6, 7, 8});
}

TEST_CASE("train/tasks: the training split never holds a held-out prompt; the held-out split is fixed") {
  const auto held = tasks::make("arith", tasks::Split::held_out, 1000);
  std::set<std::string> prompts;
  for (auto& e : held) prompts.insert(e.prompt);
  for (auto& e : tasks::make("arith", tasks::Split::train, 5000)) CHECK(prompts.count(e.prompt) == 0);
  const auto again = tasks::make("arith", tasks::Split::held_out, 10);
  for (int i = 0; i < 10; ++i) CHECK(again[std::size_t(i)].prompt == held[std::size_t(i)].prompt);
}

TEST_CASE("tokenizer/char_vocab: ids, text round trip, tokenizer.json round trip, errors") {
  const auto v = tasks::vocabulary();
  CHECK(v.size() == 30);
  CHECK(v.eos_id() == 0);
  CHECK(v.mask_id() == 1);
  const auto ids = v.encode("a:47+8=");
  CHECK(ids.size() == 7);
  CHECK(v.decode(ids) == "a:47+8=");
  CHECK(v.decode(std::vector<int>{v.encode("9")[0], 0}) == "9<|im_end|>");
  auto dir = test::temp_dir("char-vocab");
  v.save(dir / "tokenizer.json");
  const auto back = tokenizer::CharVocab::load(dir / "tokenizer.json");
  CHECK(back.encode("s:52917=") == v.encode("s:52917="));
  CHECK(back.size() == v.size());
  // A save that cannot be written is an error naming the file, not a silent no-op.
  CHECK_ERROR(v.save(dir / "no-such-folder" / "tokenizer.json"),
              "no-such-folder/tokenizer.json.tmp: cannot open for writing");
  CHECK_ERROR(v.encode("a:4x"), "the character 'x'");
  CHECK_ERROR(v.decode(std::vector<int>{30}), "token id 30 is outside the vocabulary");
  test::write_text(dir / "merges.json", R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": ["a a"]}})");
  CHECK_ERROR(tokenizer::CharVocab::load(dir / "merges.json"), "has no merges");
  test::write_text(dir / "wordlevel.json", R"({"model": {"type": "WordLevel", "vocab": {}}})");
  CHECK_ERROR(tokenizer::CharVocab::load(dir / "wordlevel.json"), "expected a BPE model");
  // Wrongly typed fields name themselves (nlohmann's own type_error would escape as another exception).
  test::write_text(dir / "typed.json", R"({"model": {"type": 7, "vocab": {}}})");
  CHECK_ERROR(tokenizer::CharVocab::load(dir / "typed.json"), "model.\"type\" must be a string, not 7");
  test::write_text(dir / "typed.json", R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": "none"}})");
  CHECK_ERROR(tokenizer::CharVocab::load(dir / "typed.json"), "has no merges");
  test::write_text(dir / "typed.json", R"({"model": {"type": "BPE", "vocab": {"<|im_end|>": 0, "a": "1"}}})");
  CHECK_ERROR(tokenizer::CharVocab::load(dir / "typed.json"), "token \"a\" has the id \"1\", not an integer");
  test::write_text(dir / "repeated.json",
                   R"({"model": {"type": "BPE", "vocab": {"<|im_end|>": 0, "|<MASK>|": 1, "a": 2, "b": 2}}})");
  CHECK_ERROR(tokenizer::CharVocab::load(dir / "repeated.json"), "has a bad or repeated id 2");
  test::write_text(dir / "long.json",
                   R"({"model": {"type": "BPE", "vocab": {"<|im_end|>": 0, "|<MASK>|": 1, "ab": 2}}})");
  CHECK_ERROR(tokenizer::CharVocab::load(dir / "long.json"), "token 2 \"ab\" is not a single character");
  // The specials at ids 0 and 1, in that order; ids without gaps; a file that is there and parses.
  test::write_text(dir / "swapped.json",
                   R"({"model": {"type": "BPE", "vocab": {"|<MASK>|": 0, "<|im_end|>": 1, "a": 2}}})");
  CHECK_ERROR(tokenizer::CharVocab::load(dir / "swapped.json"), "swapped.json: ids 0 and 1 must be <|im_end|> and |<MASK>|");
  test::write_text(dir / "one.json", R"({"model": {"type": "BPE", "vocab": {"<|im_end|>": 0}}})");
  CHECK_ERROR(tokenizer::CharVocab::load(dir / "one.json"), "one.json: ids 0 and 1 must be");
  test::write_text(dir / "gap.json",
                   R"({"model": {"type": "BPE", "vocab": {"<|im_end|>": 0, "|<MASK>|": 1, "a": 3}}})");
  CHECK_ERROR(tokenizer::CharVocab::load(dir / "gap.json"), "token \"a\" has a bad or repeated id 3");
  test::write_text(dir / "huge.json",  // 2^64 - 1, which JSON holds unsigned: not -1
                   R"({"model": {"type": "BPE", "vocab": {"<|im_end|>": 0, "|<MASK>|": 1, "a": 18446744073709551615}}})");
  CHECK_ERROR(tokenizer::CharVocab::load(dir / "huge.json"), "token \"a\" has a bad or repeated id 18446744073709551615");
  test::write_text(dir / "broken.json", R"({"model": )");
  CHECK_ERROR(tokenizer::CharVocab::load(dir / "broken.json"), "broken.json: not valid JSON");
  CHECK_ERROR(tokenizer::CharVocab::load(dir / "nowhere.json"), "nowhere.json: cannot open");
  // Printable ASCII, each character once: DEL (127) is a control character.
  CHECK_ERROR(tokenizer::CharVocab("ab\x7f"), "only printable ASCII characters, got byte 127");
  CHECK_ERROR(tokenizer::CharVocab("ab\x1f"), "only printable ASCII characters, got byte 31");
  CHECK(tokenizer::CharVocab(" ~").encode("~ ") == std::vector<int>{3, 2});
  CHECK_ERROR(tokenizer::CharVocab("abca"), "the character 'a' appears twice");
}

TEST_CASE("train/tasks: multiple-choice questions hold the response once, among others of another first character") {
  const auto examples = tasks::make("mix", tasks::Split::held_out, 200);
  const auto questions = tasks::make_choices("mix", tasks::Split::held_out, 200, 4);
  REQUIRE(questions.size() == examples.size());
  std::set<int> places;
  for (std::size_t i = 0; i < questions.size(); ++i) {
    const auto& q = questions[i];
    const auto& e = examples[i];
    CAPTURE(e.prompt);
    CHECK(q.prompt == e.prompt);
    REQUIRE(q.choices.size() == 4);
    REQUIRE(q.answer >= 0);
    REQUIRE(q.answer < 4);
    places.insert(q.answer);
    CHECK(q.choices[std::size_t(q.answer)] == e.response);
    std::set<char> firsts;
    for (const auto& c : q.choices) {
      CHECK(c.substr(1) == e.response.substr(1));
      CHECK(std::isalnum(static_cast<unsigned char>(c[0])) != 0);
      CHECK((std::isdigit(static_cast<unsigned char>(c[0])) != 0) == (std::isdigit(static_cast<unsigned char>(e.response[0])) != 0));
      firsts.insert(c[0]);
    }
    CHECK(firsts.size() == 4);  // first tokens all differ: the first-token score can tell them apart
  }
  CHECK(places.size() == 4);  // the answer is not always at one place
  // The wrong choices are drawn from all the others of their kind, not always the same few:
  // over the questions whose response starts with a digit, every digit is once a wrong choice.
  std::set<char> distractors;
  for (std::size_t i = 0; i < questions.size(); ++i)
    for (const auto& c : questions[i].choices)
      if (std::isdigit(static_cast<unsigned char>(c[0])) != 0 && c != examples[i].response) distractors.insert(c[0]);
  CHECK(distractors.size() == 10);
  Rng rng(1);
  CHECK_ERROR(tasks::choice_question(examples[0], 11, rng), "2 to 10 choices, got 11");
  CHECK_ERROR(tasks::choice_question(examples[0], 1, rng), "2 to 10 choices, got 1");
  CHECK(tasks::choice_question(examples[0], 2, rng).choices.size() == 2);
  CHECK_ERROR(tasks::choice_question({"r:ab=", ""}, 3, rng), "a multiple-choice question needs a response");
  CHECK_ERROR(tasks::choice_question({"r:ab=", "#ba"}, 3, rng), "a response beginning with '#' has no other choices");
  CHECK(tasks::choice_question(examples[0], 10, rng).choices.size() == 10);
}

TEST_CASE("train/tasks: few-shot examples are the task's first training examples, laid out as training packed them") {
  const auto vocab = tasks::vocabulary();
  const auto examples = tasks::make("sort", tasks::Split::train, 3);
  // Written out by hand for the first: its characters, EOS, then [MASK] to the next multiple of 8.
  const auto first = vocab.encode(examples[0].prompt + examples[0].response);
  std::vector<int> expect = first;
  expect.push_back(vocab.eos_id());
  expect.insert(expect.end(), 8 - expect.size() % 8, vocab.mask_id());  // a whole block where it ends on one
  const auto one = tasks::few_shot("sort", 1, vocab, 8);
  CHECK(one == expect);
  // Three, against train::pack's window of the same examples: each starts on a block boundary.
  const auto three = tasks::few_shot("sort", 3, vocab, 8);
  REQUIRE(three.size() % 8 == 0);
  const auto packed = train::pack(tasks::encode(examples, vocab), int(three.size()), 8, vocab.mask_id());
  CHECK(packed.ids == three);
  // With no padding (AR training's layout), prompt, response and EOS back to back.
  std::vector<int> plain;
  for (const auto& e : examples) {
    for (int id : vocab.encode(e.prompt + e.response)) plain.push_back(id);
    plain.push_back(vocab.eos_id());
  }
  CHECK(tasks::few_shot("sort", 3, vocab, 0) == plain);
  CHECK(tasks::few_shot("sort", 0, vocab, 8).empty());
  // None of them is a held-out prompt.
  for (const auto& h : tasks::make("sort", tasks::Split::held_out, 1000))
    for (const auto& e : examples) CHECK(h.prompt != e.prompt);
  CHECK_ERROR(tasks::few_shot("mix", 2, vocab, 8), "few-shot examples are of one task");
  CHECK_ERROR(tasks::few_shot("sort", -1, vocab, 8), "0 or more examples, got -1");
  CHECK_ERROR(tasks::few_shot("sort", 2, vocab, -8), "the pad block must be 0 (none) or positive, got -8");
}

TEST_CASE("train/tasks: a mixed question follows its own task's examples") {
  const auto vocab = tasks::vocabulary();
  auto questions = tasks::make_choices("mix", tasks::Split::held_out, 30, 4);
  tasks::add_shots(questions, 2, vocab, 8);
  std::set<std::string> seen;
  for (const auto& q : questions) {
    CAPTURE(q.prompt);
    const std::string task = q.prompt[0] == 'a' ? "arith" : q.prompt[0] == 's' ? "sort" : "reverse";
    CHECK(tasks::task_of(q.prompt) == task);
    CHECK(q.context == tasks::few_shot(task, 2, vocab, 8));
    seen.insert(task);
  }
  CHECK(seen.size() == 3);
  CHECK_ERROR(tasks::task_of("x:12="), "the prompt \"x:12=\" is none of the tasks'");
}
