// Task accuracy and throughput of a decoder over a held-out split.
//
// A decoder is anything that maps a batch of prompts to per-row outputs (tokens, forwards); the
// AR baseline and every block-diffusion configuration are scored by the same code:
//   accuracy            exact match of the final answer (train/tasks.hpp's answer_of)
//   tokens/s            new tokens (EOS included) over the wall time of the decode calls
//   tokens per forward  new tokens over denoising forwards (block + sub-block; for AR, the
//                       decode steps), the paper's parallelism measure
//   forwards per token  every forward (prefill and commit included) over new tokens
//
// A task's held-out prompts asked as multiple choice (train/tasks.hpp's make_choices) are scored
// by any log-likelihood scorer (eval/loglikelihood.hpp): the argmax over each question's choices.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "blockdiff/core/error.hpp"
#include "blockdiff/decode/ar.hpp"
#include "blockdiff/decode/block_diffusion.hpp"
#include "blockdiff/eval/loglikelihood.hpp"
#include "blockdiff/tokenizer/char_vocab.hpp"
#include "blockdiff/train/tasks.hpp"

namespace blockdiff::eval {

//! What a decoder did for one prompt.
struct RowOutput {
  std::vector<int> tokens;  //!< new tokens, cut after EOS (kept)
  int denoising_forwards = 0;
  int total_forwards = 0;
};

struct Report {
  int n = 0, correct = 0;
  std::int64_t new_tokens = 0, denoising_forwards = 0, total_forwards = 0;
  double seconds = 0;

  double accuracy() const { return n ? double(correct) / n : 0.0; }
  double tokens_per_second() const { return seconds > 0 ? double(new_tokens) / seconds : 0.0; }
  double tokens_per_forward() const { return denoising_forwards ? double(new_tokens) / double(denoising_forwards) : 0.0; }
  double forwards_per_token() const { return new_tokens ? double(total_forwards) / double(new_tokens) : 0.0; }
};

using BatchDecoder = std::function<std::vector<RowOutput>(std::span<const std::vector<int>>)>;

//! The AR decode options of a task evaluation: the vocabulary's EOS.
inline decode::ArOptions ar_options(const tokenizer::CharVocab& vocab, int max_new) {
  decode::ArOptions o;
  o.max_new_tokens = max_new;
  o.eos_id = vocab.eos_id();
  return o;
}

//! The rows of AR results, as the evaluation counts them.
inline std::vector<RowOutput> row_outputs(const std::vector<decode::ArResult>& results) {
  std::vector<RowOutput> out;
  for (auto& r : results) out.push_back({r.tokens, r.decode_forwards, r.prefill_forwards + r.decode_forwards});
  return out;
}

//! Greedy AR decoding of `model` (any backend) as a BatchDecoder, stopping at the vocabulary's EOS.
template <LanguageModel M>
BatchDecoder ar_decoder(M& model, const tokenizer::CharVocab& vocab, int max_new) {
  return [&model, o = ar_options(vocab, max_new)](std::span<const std::vector<int>> prompts) {
    return row_outputs(decode::ar_generate(model, prompts, o));
  };
}

//! The decode options of a task evaluation: the vocabulary's mask and EOS, no trace.
inline decode::DecodeOptions decode_options(const tokenizer::CharVocab& vocab, int max_new) {
  decode::DecodeOptions o;
  o.max_new_tokens = max_new;
  o.mask_id = vocab.mask_id();
  o.eos_id = vocab.eos_id();
  o.trace = false;
  return o;
}

//! The rows of block-diffusion results, as the evaluation counts them.
inline std::vector<RowOutput> row_outputs(const std::vector<decode::GenerateResult>& results) {
  std::vector<RowOutput> out;
  for (auto& r : results) out.push_back({r.tokens, r.trace.denoising_forwards(), r.trace.total_forwards()});
  return out;
}

//! A block-diffusion decoder (any of its types, on any backend) as a BatchDecoder.
template <class Decoder>
BatchDecoder diffusion_decoder(Decoder& decoder, const tokenizer::CharVocab& vocab, int max_new) {
  return [&decoder, o = decode_options(vocab, max_new)](std::span<const std::vector<int>> prompts) {
    return row_outputs(decoder.generate(prompts, o));
  };
}

//! Scores `decode` on `examples`, `batch` prompts per call; `progress(done, total)` after each call.
inline Report evaluate(const std::vector<train::tasks::TextExample>& examples, const tokenizer::CharVocab& vocab,
                       int batch, const BatchDecoder& decode,
                       const std::function<void(int, int)>& progress = {}) {
  require(batch > 0, "eval: the batch must be positive, got ", batch);
  Report report;
  std::vector<std::vector<int>> prompts;
  for (std::size_t begin = 0; begin < examples.size(); begin += std::size_t(batch)) {
    const std::size_t end = std::min(examples.size(), begin + std::size_t(batch));
    prompts.clear();
    for (std::size_t i = begin; i < end; ++i) prompts.push_back(vocab.encode(examples[i].prompt));
    const auto t0 = std::chrono::steady_clock::now();
    const auto outputs = decode(prompts);
    report.seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    require(outputs.size() == prompts.size(), "eval: the decoder returned ", outputs.size(), " rows for ",
            prompts.size(), " prompts");
    for (std::size_t i = begin; i < end; ++i) {
      const auto& out = outputs[i - begin];
      std::vector<int> body = out.tokens;
      if (!body.empty() && body.back() == vocab.eos_id()) body.pop_back();
      bool clean = true;
      for (int t : body) clean = clean && t != vocab.eos_id() && t != vocab.mask_id();
      const auto& ex = examples[i];
      const std::string got = clean ? train::tasks::answer_of(ex.prompt, vocab.decode(body)) : std::string("\x01");
      report.correct += got == train::tasks::answer_of(ex.prompt, ex.response);
      report.new_tokens += std::int64_t(out.tokens.size());
      report.denoising_forwards += out.denoising_forwards;
      report.total_forwards += out.total_forwards;
    }
    report.n += int(end - begin);
    if (progress) progress(report.n, int(examples.size()));
  }
  return report;
}

struct ChoiceReport {
  int n = 0, correct = 0;
  int tied = 0;  //!< questions whose best score another choice shared (the first of them counts)
  int forwards = 0;
  std::int64_t positions = 0;
  double seconds = 0;

  double accuracy() const { return n ? double(correct) / n : 0.0; }
};

//! Scores a batch of requests: eval::loglikelihood with the scoring and model of the caller's
//! choice, or an eval::Scorer, which keeps a task's few-shot examples in its caches from call to call.
using BatchScorer = std::function<Scores(std::span<const ScoreRequest>)>;

//! The prefix a question is scored after: its context (few-shot examples), then its prompt.
inline std::vector<int> question_prefix(const train::tasks::ChoiceQuestion& question, const tokenizer::CharVocab& vocab) {
  auto prefix = question.context;
  const auto asked = vocab.encode(question.prompt);
  prefix.insert(prefix.end(), asked.begin(), asked.end());
  return prefix;
}

//! Asks `questions`, `batch` of them per call of `score`, each after its context (few-shot
//! examples, if any): each is answered by the choice of highest log-likelihood;
//! `progress(done, total)` after each call.
inline ChoiceReport evaluate_choices(const std::vector<train::tasks::ChoiceQuestion>& questions,
                                     const tokenizer::CharVocab& vocab, int batch, const BatchScorer& score,
                                     const std::function<void(int, int)>& progress = {}) {
  require(batch > 0, "eval: the batch must be positive, got ", batch);
  ChoiceReport report;
  std::vector<ScoreRequest> requests;
  for (std::size_t begin = 0; begin < questions.size(); begin += std::size_t(batch)) {
    const std::size_t end = std::min(questions.size(), begin + std::size_t(batch));
    requests.clear();
    for (std::size_t q = begin; q < end; ++q) {
      const auto prefix = question_prefix(questions[q], vocab);
      for (const auto& c : questions[q].choices) requests.push_back({prefix, vocab.encode(c)});
    }
    const auto t0 = std::chrono::steady_clock::now();
    const auto scored = score(requests);
    report.seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    require(scored.scores.size() == requests.size(), "eval: the scorer returned ", scored.scores.size(),
            " scores for ", requests.size(), " requests");
    report.forwards += scored.forwards;
    report.positions += scored.positions;
    std::size_t at = 0;
    for (std::size_t q = begin; q < end; ++q) {
      const auto n = questions[q].choices.size();
      const auto mc = choose(std::span(scored.scores).subspan(at, n));
      at += n;
      report.correct += mc.chosen == questions[q].answer;
      report.tied += mc.tied;
    }
    report.n += int(end - begin);
    if (progress) progress(report.n, int(questions.size()));
  }
  return report;
}

}  // namespace blockdiff::eval
