// Synthetic tasks with exact answers, for the embedded default model and its ablations.
//
//   arith    GSM8K-like: a two-digit start and two to four one-digit steps; the response writes
//            every running total before the final answer:  "a:47+8-5+9="  ->  "55,50,59#59"
//   sort     sort four to eight digits:                     "s:52917="     ->  "12579"
//   reverse  reverse four to eight letters:                 "r:bdaec="     ->  "ceadb"
//   mix      the three, in equal parts
//
// Any of them also asks its held-out prompts as multiple choice (make_choices), the right
// response among others that differ in their first character, zero-shot or after examples of
// the question's own task (add_shots), as MMLU is asked after a subject's examples.
//
// Every response ends with the EOS token. The answer of an arith response is what follows '#';
// of the others, the whole response. Splits are disjoint: the held-out split is drawn from its
// own seed, and the training split never contains a held-out prompt.
#pragma once

#include <algorithm>
#include <cstdint>
#include <map>
#include <string>
#include <unordered_set>
#include <vector>

#include "blockdiff/core/error.hpp"
#include "blockdiff/core/rng.hpp"
#include "blockdiff/tokenizer/char_vocab.hpp"
#include "blockdiff/train/data.hpp"

namespace blockdiff::train::tasks {

//! The characters every task uses: the default model's vocabulary.
inline constexpr const char* characters = "0123456789+-=,#:asrbcdefghij";

inline tokenizer::CharVocab vocabulary() { return tokenizer::CharVocab(characters); }

struct TextExample {
  std::string prompt, response;  //!< response without the EOS
};

inline const std::vector<std::string>& names() {
  static const std::vector<std::string> n{"arith", "sort", "reverse", "mix"};
  return n;
}

inline TextExample draw(const std::string& task, Rng& rng) {
  if (task == "mix") return draw(names()[rng.below(3)], rng);
  TextExample e;
  if (task == "arith") {
    int total = 10 + int(rng.below(90));
    e.prompt = "a:" + std::to_string(total);
    const int steps = 2 + int(rng.below(3));
    for (int s = 0; s < steps; ++s) {
      const int d = int(rng.below(10));
      const bool plus = total + d <= 99 && (total - d < 0 || rng.below(2) == 0);
      total += plus ? d : -d;
      e.prompt += plus ? '+' : '-';
      e.prompt += std::to_string(d);
      if (s) e.response += ',';
      e.response += std::to_string(total);
    }
    e.prompt += '=';
    e.response += '#';
    e.response += std::to_string(total);
  } else if (task == "sort" || task == "reverse") {
    const int n = 4 + int(rng.below(5));
    std::string items;
    for (int i = 0; i < n; ++i) items += task == "sort" ? char('0' + rng.below(10)) : char('a' + rng.below(10));
    e.prompt = (task == "sort" ? "s:" : "r:") + items + "=";
    e.response = items;
    if (task == "sort")
      std::sort(e.response.begin(), e.response.end());
    else
      std::reverse(e.response.begin(), e.response.end());
  } else {
    fail("unknown task \"", task, "\" (known: arith, sort, reverse, mix)");
  }
  return e;
}

//! The task whose draw() made `prompt` ("arith", "sort" or "reverse"), by its first letter.
inline std::string task_of(const std::string& prompt) {
  if (prompt.rfind("a:", 0) == 0) return "arith";
  if (prompt.rfind("s:", 0) == 0) return "sort";
  if (prompt.rfind("r:", 0) == 0) return "reverse";
  fail("the prompt \"", prompt, "\" is none of the tasks' (a:, s: or r:)");
}

//! The exact answer a response carries: after '#' for arith, else the whole response.
inline std::string answer_of(const std::string& prompt, const std::string& response) {
  if (prompt.rfind("a:", 0) == 0) {
    const auto hash = response.find('#');
    return hash == std::string::npos ? std::string() : response.substr(hash + 1);
  }
  return response;
}

enum class Split { train, held_out };

//! `n` examples of `task` from `split`. The held-out split is fixed by `seed`; the training split
//! skips every prompt of the first `held_out_size` held-out examples.
inline std::vector<TextExample> make(const std::string& task, Split split, int n, std::uint64_t seed = 1,
                                     int held_out_size = 1000) {
  require(n >= 0, "task ", task, ": negative example count ", n);
  std::vector<TextExample> out;
  Rng held_rng(seed * 2 + 1);
  if (split == Split::held_out) {
    for (int i = 0; i < n; ++i) out.push_back(draw(task, held_rng));
    return out;
  }
  std::unordered_set<std::string> excluded;
  for (int i = 0; i < held_out_size; ++i) excluded.insert(draw(task, held_rng).prompt);
  Rng rng(seed * 2 + 2);
  while (int(out.size()) < n) {
    auto e = draw(task, rng);
    if (!excluded.count(e.prompt)) out.push_back(std::move(e));
  }
  return out;
}

//! A multiple-choice question made from an example, as MMLU and GPQA ask theirs.
struct ChoiceQuestion {
  std::vector<int> context;  //!< token ids asked before the prompt: few-shot examples (add_shots), none by default
  std::string prompt;
  std::vector<std::string> choices;
  int answer = 0;  //!< the index of the example's response among the choices
};

//! `example` as a question of `n` choices (2 to 10): its response and n - 1 others, each the
//! response with its first character (a digit or a letter) replaced by another of its kind, in an
//! order drawn from `rng`. The choices differ in their first token, so Fast-dLLM v2's first-token
//! score can tell them apart.
inline ChoiceQuestion choice_question(const TextExample& example, int n, Rng& rng) {
  require(n >= 2 && n <= 10, "a multiple-choice question takes 2 to 10 choices, got ", n);
  require(!example.response.empty(), "a multiple-choice question needs a response");
  const char first = example.response[0];
  std::string pool = first >= '0' && first <= '9' ? "0123456789" : "abcdefghij";
  require(pool.find(first) != std::string::npos, "a response beginning with '", first, "' has no other choices");
  pool.erase(pool.find(first), 1);
  for (std::size_t i = pool.size(); i > 1; --i) std::swap(pool[i - 1], pool[rng.below(i)]);  // Fisher-Yates
  ChoiceQuestion q{{}, example.prompt, {}, static_cast<int>(rng.below(std::uint64_t(n)))};
  for (int c = 0, other = 0; c < n; ++c)
    q.choices.push_back(c == q.answer ? example.response : pool[std::size_t(other++)] + example.response.substr(1));
  return q;
}

//! `n` questions of `choices` choices each from `n` examples of `task`'s `split` (make's).
inline std::vector<ChoiceQuestion> make_choices(const std::string& task, Split split, int n, int choices,
                                                std::uint64_t seed = 1) {
  std::vector<ChoiceQuestion> out;
  Rng rng(seed * 2 + 7);
  for (const auto& e : make(task, split, n, seed)) out.push_back(choice_question(e, choices, rng));
  return out;
}

//! Token examples for training: response followed by EOS.
inline std::vector<Example> encode(const std::vector<TextExample>& text, const tokenizer::CharVocab& vocab) {
  std::vector<Example> out;
  for (auto& t : text) {
    Example e{vocab.encode(t.prompt), vocab.encode(t.response)};
    e.response.push_back(vocab.eos_id());
    out.push_back(std::move(e));
  }
  return out;
}

//! A few-shot prompt's examples of `task` (not "mix"): the first `shots` of its training split,
//! the same before every question, as lm-eval asks a subject's first examples before each of its
//! questions. Token ids, laid out as training packed them: prompt, response and EOS, then with
//! `pad_block` > 0 [MASK] up to a multiple of it (train::pack's +pad, which the Fast-dLLM v2 recipe
//! trains with; AR training packs none), so the question starts as a training example did.
inline std::vector<int> few_shot(const std::string& task, int shots, const tokenizer::CharVocab& vocab, int pad_block) {
  require(task != "mix", "few-shot examples are of one task; a \"mix\" question takes its own task's (add_shots)");
  require(shots >= 0, "a few-shot prompt takes 0 or more examples, got ", shots);
  require(pad_block >= 0, "few-shot examples: the pad block must be 0 (none) or positive, got ", pad_block);
  std::vector<int> context;
  for (const auto& e : encode(make(task, Split::train, shots), vocab)) {
    context.insert(context.end(), e.prompt.begin(), e.prompt.end());
    context.insert(context.end(), e.response.begin(), e.response.end());
    context.insert(context.end(), block_padding(e, pad_block), vocab.mask_id());
  }
  return context;
}

//! Puts `shots` examples of each question's own task before it (few_shot): a "mix" question of
//! arithmetic follows arithmetic examples.
inline void add_shots(std::vector<ChoiceQuestion>& questions, int shots, const tokenizer::CharVocab& vocab,
                      int pad_block) {
  std::map<std::string, std::vector<int>> of_task;
  for (auto& q : questions) {
    const auto task = task_of(q.prompt);
    auto known = of_task.find(task);
    if (known == of_task.end()) known = of_task.emplace(task, few_shot(task, shots, vocab, pad_block)).first;
    q.context = known->second;
  }
}

}  // namespace blockdiff::train::tasks
