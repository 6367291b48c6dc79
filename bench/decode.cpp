// Decoding on the host, for a Qwen2.5-0.5B-shaped random model (weight matrices in f32, or in
// BF16 with BLOCKDIFF_BENCH_WEIGHTS=bf16; one dtype a run, so that peak memory is that model's), in one run:
//  - the AR decode step as a fraction of the memory-bandwidth limit (weight bytes per token over
//    the copy bandwidth measured in the same run), and peak memory beside weights + KV cache;
//  - a 32-token block forward and an 8-token sub-block forward against the cache, each over the
//    AR step, timed side by side in the same iterations;
//  - an 8-token block forward of the embedded model's shape asking for fewer logit rows than
//    tokens, over the one asking for all (the last layer runs on the asked-for rows only);
//  - the policy step (the vocabulary statistics pass and the selection) beside a forward;
//  - end-to-end tokens/s and forwards per token of AR and of block diffusion with each cache;
//  - a 4-choice question scored by first-token log-likelihood, blockdiff's shared prefix against
//    the official whole views; and four few-shot questions, their header run once against once
//    a question.
// The block-diffusion decoders are checked against the AR prefix semantics before timing: the
// block cache must agree with recomputation (cache::None) token for token.
#include <chrono>

#include "../tests/support/largest.hpp"
#include "blockdiff/eval/loglikelihood.hpp"
#include "common.hpp"

using namespace blockdiff;
using Host = backend::Host;
using Model = model::Qwen2<Host>;

namespace {
// Measured once in main(), before the model exists, so that the probe's buffers never add to the
// peak memory reported beside weights + KV cache.
double copy_bandwidth = 0;

const char* preset() {
  const char* p = std::getenv("BLOCKDIFF_BENCH_PRESET");
  return p ? p : "qwen2.5-0.5b";
}
DType weights() {
  const char* w = std::getenv("BLOCKDIFF_BENCH_WEIGHTS");
  if (w == nullptr || std::string(w) == "f32") return DType::f32;
  require(std::string(w) == "bf16", "BLOCKDIFF_BENCH_WEIGHTS must be f32 or bf16, got \"", w, "\"");
  return DType::bf16;
}
Model& shared_model() {
  static Model m = bench::random_model(preset(), 1, weights());
  return m;
}
std::vector<int> prompt(int n) {
  std::vector<int> p(static_cast<std::size_t>(n));
  for (int i = 0; i < n; ++i) p[static_cast<std::size_t>(i)] = (i * 7919 + 13) % 150000;
  return p;
}
double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}


void BM_ArStep(benchmark::State& state) {
  auto& m = shared_model();
  const int context = 64, capacity = 1024;
  auto cache = m.make_cache(capacity);
  bench::forward<mask::Causal>(m, cache, prompt(context), 0, context, true, 1);
  int pos = context;
  for (auto _ : state) {
    if (pos >= capacity) pos = context;
    bench::forward<mask::Causal>(m, cache, {pos % 1000}, pos, pos + 1, true, 1);
    ++pos;
  }
  state.counters["peak_rss_GB"] = static_cast<double>(bench::peak_rss_bytes()) / 1e9;
  state.counters["weights+kv_GB"] = static_cast<double>(m.weight_bytes() + cache.bytes()) / 1e9;
  const double bandwidth = copy_bandwidth;
  const double bytes = static_cast<double>(m.weight_bytes());
  state.counters["tokens/s"] = benchmark::Counter(static_cast<double>(state.iterations()), benchmark::Counter::kIsRate);
  state.counters["weight_GB"] = bytes / 1e9;
  state.counters["copy_GB/s"] = bandwidth;
  // Limit: every weight byte is read once per token, at the copy bandwidth (read + write bytes).
  state.counters["limit_tokens/s"] = bandwidth * 1e9 / bytes;
  state.counters["fraction_of_limit"] = benchmark::Counter(static_cast<double>(state.iterations()) * bytes / (bandwidth * 1e9),
                                                           benchmark::Counter::kIsRate);
}

void BM_ForwardShapes(benchmark::State& state) {
  auto& m = shared_model();
  constexpr int B = 32, S = 8;
  const int context = 256;
  auto cache = m.make_cache(context + 2 * B);
  bench::forward<mask::BlockCausal<B>>(m, cache, prompt(context), 0, context, true, 1);
  const auto block = prompt(B);
  const std::vector<int> sub(block.begin() + S, block.begin() + 2 * S);
  // One untimed round first: the prefill above ran on OpenBLAS, whose threads spin for a while
  // after a call and would slow the first timed AR step by half.
  bench::forward<mask::Causal>(m, cache, {block[0]}, context, context + 1, false, 1);
  bench::forward<mask::BlockCausal<B>>(m, cache, block, context, context + B, false, S);
  bench::forward<mask::Full>(m, cache, sub, context + S, context + B, false, S - 1);
  double ar = 0, blk = 0, sb = 0;
  for (auto _ : state) {
    auto t0 = std::chrono::steady_clock::now();
    bench::forward<mask::Causal>(m, cache, {block[0]}, context, context + 1, false, 1);
    ar += seconds_since(t0);
    t0 = std::chrono::steady_clock::now();
    bench::forward<mask::BlockCausal<B>>(m, cache, block, context, context + B, false, S);  // one sub-block's logits, as decoding asks
    blk += seconds_since(t0);
    t0 = std::chrono::steady_clock::now();
    // Logits for positions 1 .. S-1 of the sub-block, the most a sub-block forward asks for (its
    // first position is known; later steps ask for fewer).
    bench::forward<mask::Full>(m, cache, sub, context + S, context + B, false, S - 1);
    sb += seconds_since(t0);
  }
  const double n = static_cast<double>(state.iterations());
  state.counters["ar_step_ms"] = 1e3 * ar / n;
  state.counters["block32_ms"] = 1e3 * blk / n;
  state.counters["sub_block8_ms"] = 1e3 * sb / n;
  state.counters["block32_over_ar"] = blk / ar;
  state.counters["sub_block8_over_ar"] = sb / ar;
}

void BM_PolicyStep(benchmark::State& state) {
  auto& m = shared_model();
  const int V = m.vocab_size(), rows = 8;
  std::vector<float> logits(static_cast<std::size_t>(rows) * V);
  Rng r(3);
  for (auto& l : logits) l = static_cast<float>(r.normal() * 3);
  std::vector<PositionStats> stats(rows);
  std::vector<Candidate> cand(rows);
  bool chosen[max_block_size];
  unmask::Threshold policy{0.9f};
  std::vector<UnmaskRow> decision(1);
  decision[0].n = rows;
  double policy_s = 0;
  for (auto _ : state) {
    const auto t0 = std::chrono::steady_clock::now();
    Kernel<Host, op::VocabStats<false, false>>::run(logits.data(), rows, V, stats.data());
    for (int i = 0; i < rows; ++i) cand[static_cast<std::size_t>(i)] = {i, stats[static_cast<std::size_t>(i)]};
    Kernel<Host, op::Unmask<unmask::Threshold>>::run(policy, cand.data(), decision, chosen);
    benchmark::DoNotOptimize(chosen);
    policy_s += seconds_since(t0);
  }
  // A block forward of the same model, timed once, to put the policy step beside it.
  auto cache = m.make_cache(64);
  const auto t0 = std::chrono::steady_clock::now();
  bench::forward<mask::BlockCausal<32>>(m, cache, prompt(32), 0, 32, false, 8);
  const double fwd = seconds_since(t0);
  state.counters["policy_step_ms"] = 1e3 * policy_s / static_cast<double>(state.iterations());
  state.counters["block_forward_ms"] = 1e3 * fwd;
  state.counters["policy_over_forward"] = policy_s / static_cast<double>(state.iterations()) / fwd;
}

template <class Cache>
void BM_Decode(benchmark::State& state) {
  auto& m = shared_model();
  const auto p = prompt(32);
  const int max_new = static_cast<int>(state.range(0));
  decode::DecodeOptions o;
  o.max_new_tokens = max_new;
  o.mask_id = *m.config().mask_token_id;
  o.trace = false;
  decode::BlockDiffusionDecoder<Model, BlockShape<32, 8>, unmask::Threshold, Cache> d(m, unmask::Threshold{0.9f});
  if constexpr (!std::is_same_v<Cache, cache::None<>>) {
    // Validate: the block cache is exact, so it must match recomputation token for token.
    if constexpr (std::is_same_v<Cache, cache::Block<>>) {
      decode::BlockDiffusionDecoder<Model, BlockShape<32, 8>, unmask::Threshold, cache::None<>> ref(m, unmask::Threshold{0.9f});
      if (d.generate(p, o).tokens != ref.generate(p, o).tokens) state.SkipWithError("block cache differs from recomputation");
    }
  }
  double tokens = 0, forwards = 0;
  for (auto _ : state) {
    auto r = d.generate(p, o);
    tokens += static_cast<double>(r.tokens.size());
    forwards += r.trace.total_forwards();
  }
  state.counters["tokens/s"] = benchmark::Counter(tokens, benchmark::Counter::kIsRate);
  state.counters["forwards/token"] = forwards / tokens;
}

void BM_DecodeAr(benchmark::State& state) {
  auto& m = shared_model();
  const auto p = prompt(32);
  decode::ArOptions o;
  o.max_new_tokens = static_cast<int>(state.range(0));
  double tokens = 0, forwards = 0;
  for (auto _ : state) {
    auto r = decode::ar_generate(m, p, o);
    tokens += static_cast<double>(r.tokens.size());
    forwards += r.prefill_forwards + r.decode_forwards;
  }
  state.counters["tokens/s"] = benchmark::Counter(tokens, benchmark::Counter::kIsRate);
  state.counters["forwards/token"] = forwards / tokens;
}

// An 8-token block forward of the embedded model's shape (random weights) asking for the logits
// of its last N rows, timed in the same iterations as the one asking for all 8: the last layer
// runs attention and the MLP on the asked-for rows only. Checked first: the N rows equal the
// last N of the full forward.
void BM_ForwardLogitRows(benchmark::State& state) {
  static Model m = bench::random_model("tasks", 1, DType::f32);
  constexpr int B = 8;
  const int rows = static_cast<int>(state.range(0));
  auto cache = m.make_cache(3 * B);
  std::vector<int> context(2 * B), block(B);
  for (int i = 0; i < 2 * B; ++i) context[static_cast<std::size_t>(i)] = (i * 7 + 2) % 28;
  for (int i = 0; i < B; ++i) block[static_cast<std::size_t>(i)] = 3 + i;
  bench::forward<mask::BlockCausal<B>>(m, cache, context, 0, 2 * B, true, 0);
  auto logits = [&](int n) {
    std::vector<model::ForwardRow<Host>> r(1);
    r[0] = {block, 2 * B, 3 * B, false, B - n, B, {}, &cache};
    auto l = m.forward<mask::BlockCausal<B>>(r);
    return std::vector<float>(l.data(), l.data() + l.numel());
  };
  const auto all = logits(B), some = logits(rows);
  double scale = 0, err = 0;
  for (float v : all) scale = std::max(scale, double(std::abs(v)));
  for (std::size_t i = 0; i < some.size(); ++i) test::take_largest(err, std::abs(some[i] - all[all.size() - some.size() + i]));
  if (!(err <= 1e-5 * scale)) return state.SkipWithError("the asked-for rows differ from the full forward's");
  double full = 0, asked = 0;
  for (auto _ : state) {
    auto t0 = std::chrono::steady_clock::now();
    bench::forward<mask::BlockCausal<B>>(m, cache, block, 2 * B, 3 * B, false, B);
    full += seconds_since(t0);
    t0 = std::chrono::steady_clock::now();
    bench::forward<mask::BlockCausal<B>>(m, cache, block, 2 * B, 3 * B, false, rows);
    asked += seconds_since(t0);
  }
  const double n = static_cast<double>(state.iterations());
  state.counters["all_rows_us"] = 1e6 * full / n;
  state.counters["asked_rows_us"] = 1e6 * asked / n;
  state.counters["asked_over_all"] = asked / full;
}

// Times `before` and `after` in the same iterations (the machine's noise falls on both) and
// records their mean times under the two names, and their ratio.
template <class Before, class After>
void time_both(benchmark::State& state, const char* before_name, Before before, const char* after_name, After after) {
  double before_s = 0, after_s = 0;
  for (auto _ : state) {
    auto t0 = std::chrono::steady_clock::now();
    benchmark::DoNotOptimize(before());
    before_s += seconds_since(t0);
    t0 = std::chrono::steady_clock::now();
    benchmark::DoNotOptimize(after());
    after_s += seconds_since(t0);
  }
  const double n = static_cast<double>(state.iterations());
  state.counters[before_name] = 1e3 * before_s / n;
  state.counters[after_name] = 1e3 * after_s / n;
  state.counters["speedup"] = before_s / after_s;
}

// `questions` questions of `question` tokens each after `header`, with four one-token choices
// (" A" .. " D" in Qwen's vocabulary).
std::vector<eval::ScoreRequest> few_shot_requests(const std::vector<int>& header, int questions, int question) {
  std::vector<eval::ScoreRequest> requests;
  for (int q = 0; q < questions; ++q) {
    auto prefix = header;
    for (int i = 0; i < question; ++i) prefix.push_back((i * 104729 + q * 7 + 3) % 150000);
    for (int c = 0; c < 4; ++c) requests.push_back({prefix, {362 + c}});
  }
  return requests;
}

// A multiple-choice question scored as the official evaluation scores MMLU (FASTDLLM_V2.md §3.6):
// a prefix of N tokens and four one-token choices. The official way is one forward over each
// choice's whole scoring view; blockdiff's (eval/loglikelihood.hpp) prefills the prefix's whole
// blocks once and runs each choice's scored block against them. Both are timed in the same
// iterations, after their scores are checked to agree.
void BM_ScoreMultipleChoice(benchmark::State& state) {
  auto& m = shared_model();
  constexpr int B = 32;
  const auto prefix = prompt(static_cast<int>(state.range(0)));
  std::vector<eval::ScoreRequest> requests;
  for (int c = 0; c < 4; ++c) requests.push_back({prefix, {362 + c}});  // " A" .. " D" in Qwen's vocabulary
  const eval::ScoreOptions options{.mask_id = *m.config().mask_token_id, .eos_id = *m.config().eos_token_id};
  auto whole_views = [&] {
    std::vector<double> ll;
    for (const auto& r : requests) {
      const auto view = eval::scoring_view<B>(r, options);
      auto cache = m.make_cache(static_cast<int>(view.size()));
      std::vector<model::ForwardRow<Host>> rows(1);
      rows[0].tokens = view;
      rows[0].logits_begin = static_cast<int>(prefix.size()) - 1;
      rows[0].logits_end = rows[0].logits_begin + 1;
      rows[0].cache = &cache;
      const auto logits = m.forward<mask::BlockCausal<B>>(rows);
      const float* z = logits.data();
      double top = z[0], sum = 0;
      for (int j = 0; j < m.vocab_size(); ++j) top = std::max(top, double(z[j]));
      for (int j = 0; j < m.vocab_size(); ++j) sum += std::exp(double(z[j]) - top);
      ll.push_back(double(z[r.target[0]]) - top - std::log(sum));
    }
    return ll;
  };
  const auto want = whole_views();
  const auto got = eval::first_token_loglikelihood<B>(m, requests, options);
  for (std::size_t c = 0; c < want.size(); ++c)
    if (std::abs(got.scores[c].loglikelihood - want[c]) > 1e-3)
      return state.SkipWithError("the shared-prefix scores differ from the whole views'");
  time_both(state, "whole_views_ms", whole_views, "shared_prefix_ms",
            [&] { return eval::first_token_loglikelihood<B>(m, requests, options); });
  std::int64_t view_positions = 0;
  for (const auto& r : requests) view_positions += static_cast<std::int64_t>(eval::scoring_view<B>(r, options).size());
  state.counters["positions_run"] = static_cast<double>(got.positions);
  state.counters["view_positions"] = static_cast<double>(view_positions);
}

// Few-shot questions of one task, as lm-eval asks MMLU: the same header of examples before each
// question, four one-token choices each. blockdiff runs the header once for all the questions
// (and keeps it for the next batch); scoring a question at a time runs it before each, as
// sharing only a question's own prefix would. Both are timed in the same iterations, after their
// scores are checked to agree.
void BM_ScoreFewShot(benchmark::State& state) {
  auto& m = shared_model();
  constexpr int B = 32, questions = 4, question = 64;
  const auto requests = few_shot_requests(prompt(static_cast<int>(state.range(0))), questions, question);
  const eval::ScoreOptions options{.mask_id = *m.config().mask_token_id, .eos_id = *m.config().eos_token_id};
  auto one_at_a_time = [&] {
    eval::Scores all;
    for (int q = 0; q < questions; ++q) {
      const auto s = eval::first_token_loglikelihood<B>(m, std::span(requests).subspan(4 * q, 4), options);
      all.scores.insert(all.scores.end(), s.scores.begin(), s.scores.end());
      all.positions += s.positions;
    }
    return all;
  };
  const auto want = one_at_a_time();
  const auto got = eval::first_token_loglikelihood<B>(m, requests, options);
  for (std::size_t i = 0; i < requests.size(); ++i)
    if (std::abs(got.scores[i].loglikelihood - want.scores[i].loglikelihood) > 1e-3)
      return state.SkipWithError("the few-shot shared scores differ from a question at a time");
  time_both(state, "question_at_a_time_ms", one_at_a_time, "header_shared_ms",
            [&] { return eval::first_token_loglikelihood<B>(m, requests, options); });
  state.counters["positions_run"] = static_cast<double>(got.positions);
  state.counters["positions_apart"] = static_cast<double>(want.positions);
}

// Few-shot examples shorter than ScoreOptions::min_copy: 16 questions of 48 tokens after a 32-token
// header, block 32, one batch. Each question's shared part is 64 tokens, 32 of them the header;
// copying the header saves 15 x 32 positions for one more prefill forward, and the scorer weighs
// the two (min_copy positions a forward). Timed against the same scoring with copies priced out.
void BM_ScoreShortShots(benchmark::State& state) {
  auto& m = shared_model();
  constexpr int B = 32, questions = 16, question = 48;
  const auto requests = few_shot_requests(prompt(32), questions, question);
  const eval::ScoreOptions copies{.mask_id = *m.config().mask_token_id, .eos_id = *m.config().eos_token_id};
  auto no_copies = copies;
  no_copies.min_copy = 1 << 20;  // a forward priced above any copy's saving
  const auto want = eval::first_token_loglikelihood<B>(m, requests, no_copies);
  const auto got = eval::first_token_loglikelihood<B>(m, requests, copies);
  for (std::size_t i = 0; i < requests.size(); ++i)
    if (std::abs(got.scores[i].loglikelihood - want.scores[i].loglikelihood) > 1e-3)
      return state.SkipWithError("the scores with copies differ from those without");
  if (got.positions != 64 + 15 * 32 + questions * B || want.positions != questions * (64 + B))
    return state.SkipWithError("the plans are not the ones this case times");
  time_both(state, "header_run_again_ms", [&] { return eval::first_token_loglikelihood<B>(m, requests, no_copies); },
            "header_copied_ms", [&] { return eval::first_token_loglikelihood<B>(m, requests, copies); });
  state.counters["forwards_copied"] = got.forwards;
  state.counters["forwards_run_again"] = want.forwards;
}

// Three tasks' questions interleaved (as lm-eval's ordering by length mixes tasks), a question a
// batch: each task's 192-token header, then a 64-token question with four one-token choices, two
// questions a task. With a cache a batch (caches 0), each question finds the last task's header
// in it and runs its own again; with ScoreOptions' eight kept caches each task's header runs once.
void BM_ScoreInterleaved(benchmark::State& state) {
  auto& m = shared_model();
  constexpr int B = 32, tasks = 3, questions = 2, question = 64;
  std::vector<std::vector<eval::ScoreRequest>> of_task;
  for (int t = 0; t < tasks; ++t) {
    auto header = prompt(192);
    header[0] = 100 + t;  // the tasks' headers differ from their first token
    of_task.push_back(few_shot_requests(header, questions, question));
  }
  std::vector<eval::ScoreRequest> requests;  // A's first question, B's, C's, A's second, ...
  for (int q = 0; q < questions; ++q)
    for (const auto& task : of_task) requests.insert(requests.end(), task.begin() + 4 * q, task.begin() + 4 * q + 4);
  const eval::ScoreOptions kept{.mask_id = *m.config().mask_token_id, .eos_id = *m.config().eos_token_id, .batch = 1};
  auto one = kept;
  one.caches = 0;
  const auto want = eval::first_token_loglikelihood<B>(m, requests, one);
  const auto got = eval::first_token_loglikelihood<B>(m, requests, kept);
  for (std::size_t i = 0; i < requests.size(); ++i)
    if (std::abs(got.scores[i].loglikelihood - want.scores[i].loglikelihood) > 1e-3)
      return state.SkipWithError("the scores with kept caches differ from those with one");
  const std::int64_t shared = 192 + B;  // the prefix's whole blocks before the scored one
  if (want.positions != tasks * questions * (shared + B) || got.positions != tasks * (shared + B) + tasks * (questions - 1) * 2 * B)
    return state.SkipWithError("the caches do not hold what this case times");
  time_both(state, "one_cache_ms", [&] { return eval::first_token_loglikelihood<B>(m, requests, one); },
            "caches_kept_ms", [&] { return eval::first_token_loglikelihood<B>(m, requests, kept); });
  state.counters["positions_one_cache"] = static_cast<double>(want.positions);
  state.counters["positions_kept"] = static_cast<double>(got.positions);
}
}  // namespace

BENCHMARK(BM_ArStep)->Name("decode/ar_step")->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(3);
BENCHMARK(BM_ForwardShapes)->Name("decode/forward_shapes/context:256")->Unit(benchmark::kMillisecond)->UseRealTime()->Iterations(5);
BENCHMARK(BM_ForwardLogitRows)->Name("decode/forward_logit_rows/tasks/block:8")->Arg(4)->Arg(1)->Arg(0)->ArgName("logit_rows")->Unit(benchmark::kMicrosecond)->UseRealTime()->MinTime(1);
BENCHMARK(BM_PolicyStep)->Name("decode/policy_step/threshold/rows:8")->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_ScoreMultipleChoice)->Name("eval/multiple_choice/choices:4/block:32")->Arg(100)->Arg(500)->ArgName("prefix")->Unit(benchmark::kMillisecond)->UseRealTime()->Iterations(1);
BENCHMARK(BM_ScoreFewShot)->Name("eval/few_shot/questions:4/choices:4/block:32")->Arg(448)->ArgName("header")->Unit(benchmark::kMillisecond)->UseRealTime()->Iterations(1);
BENCHMARK(BM_ScoreShortShots)->Name("eval/short_shots/questions:16/header:32/block:32")->Unit(benchmark::kMillisecond)->UseRealTime()->Iterations(1);
BENCHMARK(BM_ScoreInterleaved)->Name("eval/interleaved/tasks:3/questions:2/header:192/block:32")->Unit(benchmark::kMillisecond)->UseRealTime()->Iterations(1);
BENCHMARK(BM_DecodeAr)->Name("decode/end_to_end/ar")->Arg(64)->ArgName("new")->Unit(benchmark::kSecond)->UseRealTime()->Iterations(1);
BENCHMARK_TEMPLATE(BM_Decode, cache::None<>)->Name("decode/end_to_end/fdllm2/cache:none")->Arg(64)->ArgName("new")->Unit(benchmark::kSecond)->UseRealTime()->Iterations(1);
BENCHMARK_TEMPLATE(BM_Decode, cache::Block<>)->Name("decode/end_to_end/fdllm2/cache:block")->Arg(64)->ArgName("new")->Unit(benchmark::kSecond)->UseRealTime()->Iterations(1);
BENCHMARK_TEMPLATE(BM_Decode, cache::Hierarchical<>)->Name("decode/end_to_end/fdllm2/cache:hierarchical")->Arg(64)->ArgName("new")->Unit(benchmark::kSecond)->UseRealTime()->Iterations(1);

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  bench::add_context();
  benchmark::AddCustomContext("model", preset());
  benchmark::AddCustomContext("weights", std::string(name_of(weights())));
  copy_bandwidth = bench::copy_bandwidth_gbs();
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
}
