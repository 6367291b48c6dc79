// The host backend's components one at a time, at the shapes a Qwen2.5-0.5B decode gives them
// (14 query heads on 2 KV heads of 64, a 151,936-token vocabulary): attention per mask kind, the
// vocabulary statistics pass per trait set, sampling with and without a nucleus, the unmasking
// selection per policy, the KV-cache writes and prefix copies, and drawing random weights. Each
// case checks its result before it is timed: against a plain f64 loop (for sampling, op::Sample's
// definition with a full stable sort; for the selections, what the policy's definition says it
// must commit; for the caches, the slots they were given; for random weights, N(0, 0.02²)'s
// moments), and names its axes:
// `attention/block_causal<32>/queries:32/keys:288/heads:14/kv_heads:2/head_dim:64`.
//
//   OMP_NUM_THREADS=2 build/bench/bench/bench_components [--benchmark_filter=attention/]
#include <algorithm>
#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "../tests/support/largest.hpp"
#include "../tests/support/sample_reference.hpp"
#include "common.hpp"

using namespace blockdiff;
using Host = backend::Host;

namespace {

constexpr int vocab = 151936;

//! The attention heads of a model: Qwen2.5-0.5B's, and the embedded task models'.
struct Heads {
  int heads, kv_heads, head_dim;
};
constexpr Heads qwen05b{14, 2, 64}, tasks{4, 2, 32};

std::vector<float> normal(std::size_t n, std::uint64_t seed, float scale = 1.0f) {
  Rng rng(seed);
  std::vector<float> v(n);
  for (float& x : v) x = static_cast<float>(rng.normal()) * scale;
  return v;
}

[[noreturn]] void refuse(const std::string& what) {
  std::fprintf(stderr, "validation failed: %s\n", what.c_str());
  std::exit(1);
}

// ---------------------------------------------------------------------------------------------
// Attention: `queries` new tokens at cache slots [keys - queries, keys), attending [0, keys).

//! The largest |out − softmax(QKᵀ·scale, masked)·V| over every query and head, in f64, relative
//! to the largest |reference|.
template <class Mask>
double attention_error(const Mask& mask, const std::vector<float>& q, const std::vector<float>& out,
                       const AttentionRow& row, Heads shape) {
  const auto [heads, kv_heads, head_dim] = shape;
  const int group = heads / kv_heads;
  const double scale = 1.0 / std::sqrt(double(head_dim));
  double worst = 0, largest = 0;
  std::vector<double> s(static_cast<std::size_t>(row.kv_end)), o(head_dim);
  for (int i = 0; i < row.n_q; ++i)
    for (int h = 0; h < heads; ++h) {
      const float* qv = q.data() + (static_cast<std::int64_t>(i) * heads + h) * head_dim;
      const float* k = row.k + static_cast<std::int64_t>(h / group) * row.capacity * head_dim;
      const float* v = row.v + static_cast<std::int64_t>(h / group) * row.capacity * head_dim;
      double mx = -INFINITY;
      for (int j = 0; j < row.kv_end; ++j) {
        s[j] = -INFINITY;
        if (!mask.allowed(row.first_slot + i, j)) continue;
        double dot = 0;
        for (int e = 0; e < head_dim; ++e) dot += double(qv[e]) * k[j * head_dim + e];
        s[j] = dot * scale;
        mx = std::max(mx, s[j]);
      }
      double sum = 0;
      std::fill(o.begin(), o.end(), 0.0);
      for (int j = 0; j < row.kv_end; ++j) {
        if (s[j] == -INFINITY) continue;
        const double p = std::exp(s[j] - mx);
        sum += p;
        for (int e = 0; e < head_dim; ++e) o[e] += p * v[j * head_dim + e];
      }
      const float* got = out.data() + (static_cast<std::int64_t>(i) * heads + h) * head_dim;
      for (int e = 0; e < head_dim; ++e) {
        test::take_largest(worst, std::fabs(got[e] - o[e] / sum));
        test::take_largest(largest, std::fabs(o[e] / sum));
      }
    }
  return worst / largest;
}

template <class Mask>
void BM_Attention(benchmark::State& state, Heads model, int queries, int keys) {
  const auto [heads, kv_heads, head_dim] = model;
  const Mask mask{};
  const int capacity = keys;
  auto q = normal(static_cast<std::size_t>(queries) * heads * head_dim, 1);
  auto k = normal(static_cast<std::size_t>(kv_heads) * capacity * head_dim, 2);
  auto v = normal(static_cast<std::size_t>(kv_heads) * capacity * head_dim, 3);
  std::vector<float> out(q.size());
  const AttentionRow row{0, queries, keys - queries, keys, k.data(), v.data(), capacity};
  const AttentionShape shape{heads, kv_heads, head_dim, 1.0f / std::sqrt(float(head_dim)), queries, capacity};
  const auto run = [&] { Kernel<Host, op::Attention<Mask>>::run(q.data(), out.data(), {&row, 1}, shape, mask); };
  run();
  if (const double e = attention_error(mask, q, out, row, model); !(e < 1e-5))
    refuse(std::string("attention/") + Mask::name + ": relative error " + std::to_string(e));
  for (auto _ : state) {
    run();
    benchmark::DoNotOptimize(out.data());
  }
  // Scores and weighted sums of the pairs the mask allows (what a kernel that skips masked
  // tiles has to compute), and one read of the keys and values the row can reach.
  double pairs = 0;
  for (int i = 0; i < queries; ++i)
    for (int j = 0; j < keys; ++j) pairs += mask.allowed(row.first_slot + i, j) ? 1 : 0;
  const double flops = 4.0 * pairs * heads * head_dim;
  const double bytes = 2.0 * kv_heads * keys * head_dim * sizeof(float);
  state.counters["GFLOP/s"] = benchmark::Counter(flops * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["KV_GB/s"] = benchmark::Counter(bytes * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
}

template <class Mask>
void register_attention(const std::string& mask, Heads model, int queries, int keys) {
  const std::string name = "attention/" + mask + "/queries:" + std::to_string(queries) +
                           "/keys:" + std::to_string(keys) + "/heads:" + std::to_string(model.heads) +
                           "/kv_heads:" + std::to_string(model.kv_heads) + "/head_dim:" + std::to_string(model.head_dim);
  auto* b = benchmark::RegisterBenchmark(name.c_str(), BM_Attention<Mask>, model, queries, keys);
  if (double(queries) * keys * model.heads * model.head_dim > 1e9) b->Unit(benchmark::kMillisecond);
}

void register_attention() {
  for (const int context : {256, 2048}) {
    // An AR step, a sub-block of 8 against [committed ; scratch], a block forward of 32.
    register_attention<mask::Causal>("causal", qwen05b, 1, context + 1);
    register_attention<mask::Full>("full", qwen05b, 8, context + 32);
    register_attention<mask::BlockCausal<32>>("block_causal<32>", qwen05b, 32, context + 32);
  }
  // Prefills: the AR model's causal one and the block-diffusion model's block-causal one.
  register_attention<mask::Causal>("causal", qwen05b, 512, 512);
  register_attention<mask::BlockCausal<32>>("block_causal<32>", qwen05b, 512, 512);
  register_attention<mask::BlockCausal<32>>("block_causal<32>", qwen05b, 2048, 2048);
  // The embedded task models' AR step and block forward (block 8) near the end of a response.
  register_attention<mask::Causal>("causal", tasks, 1, 64);
  register_attention<mask::BlockCausal<8>>("block_causal<8>", tasks, 8, 64);
}

// ---------------------------------------------------------------------------------------------
// The vocabulary statistics pass, for each set of statistics a policy can ask for.

template <bool SecondProb, bool Entropy>
void BM_VocabStats(benchmark::State& state, int rows) {
  // Logits shaped like a decoder's: a few tokens stand out of a wide normal spread.
  auto logits = normal(static_cast<std::size_t>(rows) * vocab, 4, 3.0f);
  for (int r = 0; r < rows; ++r) logits[static_cast<std::size_t>(r) * vocab + (r * 7919) % vocab] += 12.0f;
  std::vector<PositionStats> stats(static_cast<std::size_t>(rows));
  using Pass = Kernel<Host, op::VocabStats<SecondProb, Entropy>>;
  Pass::run(logits.data(), rows, vocab, stats.data());
  for (int r = 0; r < rows; ++r) {
    const float* l = logits.data() + static_cast<std::size_t>(r) * vocab;
    const int best = static_cast<int>(std::max_element(l, l + vocab) - l);
    double sum = 0, weighted = 0, second = -INFINITY;
    for (int i = 0; i < vocab; ++i) {
      const double z = double(l[i]) - l[best];
      sum += std::exp(z);
      weighted += std::exp(z) * z;
      if (i != best) second = std::max(second, z);
    }
    const PositionStats& s = stats[static_cast<std::size_t>(r)];
    const auto close = [](double got, double want) { return std::fabs(got - want) <= 1e-5 * std::fabs(want) + 1e-7; };
    if (s.token != best || !close(s.p1, 1 / sum) || (SecondProb && !close(s.p2, std::exp(second) / sum)) ||
        (Entropy && !close(s.entropy, std::log(sum) - weighted / sum)))
      refuse("vocab_stats: row " + std::to_string(r) + " differs from the f64 loop");
  }
  for (auto _ : state) {
    Pass::run(logits.data(), rows, vocab, stats.data());
    benchmark::DoNotOptimize(stats.data());
  }
  state.counters["logits_GB/s"] = benchmark::Counter(double(rows) * vocab * sizeof(float) * 1e-9,
                                                     benchmark::Counter::kIsIterationInvariantRate);
}

void register_vocab_stats() {
  const std::string axes = "/rows:8/vocab:" + std::to_string(vocab);
  benchmark::RegisterBenchmark(("vocab_stats/max" + axes).c_str(), BM_VocabStats<false, false>, 8)
      ->Unit(benchmark::kMicrosecond);
  benchmark::RegisterBenchmark(("vocab_stats/max+second" + axes).c_str(), BM_VocabStats<true, false>, 8)
      ->Unit(benchmark::kMicrosecond);
  benchmark::RegisterBenchmark(("vocab_stats/max+entropy" + axes).c_str(), BM_VocabStats<false, true>, 8)
      ->Unit(benchmark::kMicrosecond);
  benchmark::RegisterBenchmark(("vocab_stats/max+second+entropy" + axes).c_str(), BM_VocabStats<true, true>, 8)
      ->Unit(benchmark::kMicrosecond);
}

// ---------------------------------------------------------------------------------------------
// Sampling (op::Sample): a sub-block's draws at a temperature, with the whole vocabulary or a
// nucleus.

void BM_Sample(benchmark::State& state, int rows, float temperature, float top_p) {
  auto logits = normal(static_cast<std::size_t>(rows) * vocab, 9, 3.0f);
  for (int r = 0; r < rows; ++r) logits[static_cast<std::size_t>(r) * vocab + (r * 7919) % vocab] += 12.0f;
  std::vector<SampleRequest> requests;
  Rng rng(10);
  for (int r = 0; r < rows; ++r) requests.push_back({r, rng.uniform_double()});
  std::vector<PositionStats> out(requests.size());
  using Draw = Kernel<Host, op::Sample>;
  Draw::run(logits.data(), vocab, requests, temperature, top_p, out.data());
  for (int r = 0; r < rows; ++r) {
    const test::SampleDistribution want(std::span(logits.data() + std::int64_t{r} * vocab, vocab), temperature,
                                        top_p);
    const int token = want.draw(requests[r].u);
    const PositionStats& got = out[static_cast<std::size_t>(r)];
    const auto close = [](double a, double b) { return std::fabs(a - b) <= 1e-5 * std::fabs(b) + 1e-9; };
    if (got.token != token || !close(got.p1, want.p[token] / want.mass) || !close(got.p2, want.second) ||
        !close(got.entropy, want.entropy))
      refuse("sample: row " + std::to_string(r) + " differs from op::Sample's definition");
  }
  for (auto _ : state) {
    Draw::run(logits.data(), vocab, requests, temperature, top_p, out.data());
    benchmark::DoNotOptimize(out.data());
  }
  state.counters["draws/s"] = benchmark::Counter(rows, benchmark::Counter::kIsIterationInvariantRate);
}

void register_sample() {
  for (const float top_p : {1.0f, 0.9f}) {
    std::string name = "sample/rows:8/vocab:" + std::to_string(vocab) + "/temperature:1/top_p:";
    name += top_p == 1.0f ? "1" : "0.9";
    benchmark::RegisterBenchmark(name.c_str(), BM_Sample, 8, 1.0f, top_p)->Unit(benchmark::kMicrosecond);
  }
}

// ---------------------------------------------------------------------------------------------
// The unmasking selection: a batch of rows, each with a sub-block's masked candidates.

//! What a policy must commit, from its definition, for the policies whose choice is a formula of
//! the statistics; for the others, the count it must commit (−1: any count from 1 on).
template <class P>
bool selection_holds(const P& policy, const Candidate* c, int n, const bool* chosen) {
  int count = 0, best = 0;
  for (int i = 0; i < n; ++i) {
    count += chosen[i] ? 1 : 0;
    if (c[i].stats.p1 > c[best].stats.p1) best = i;
  }
  if (count < 1) return false;  // every policy makes progress
  if constexpr (std::is_same_v<P, unmask::Threshold>) {
    for (int i = 0; i < n; ++i)
      if (chosen[i] != (c[i].stats.p1 > policy.tau || i == best)) return false;
  } else if constexpr (std::is_same_v<P, unmask::TopK> || std::is_same_v<P, unmask::Random>) {
    if (count != std::min(policy.k, n)) return false;
    if constexpr (std::is_same_v<P, unmask::TopK>)
      for (int i = 0; i < n; ++i)
        for (int j = 0; j < n; ++j)
          if (chosen[i] && !chosen[j] && c[i].stats.p1 < c[j].stats.p1) return false;
  }
  return true;
}

template <class P>
void BM_Unmask(benchmark::State& state, P policy, int rows, int candidates) {
  Rng rng(5);
  std::vector<Candidate> c(static_cast<std::size_t>(rows) * candidates);
  for (std::size_t i = 0; i < c.size(); ++i) {
    c[i].offset = static_cast<int>(i % candidates);
    c[i].stats.p1 = static_cast<float>(rng.uniform_double());
    c[i].stats.p2 = static_cast<float>(rng.uniform_double()) * (1 - c[i].stats.p1);
    c[i].stats.entropy = static_cast<float>(rng.uniform_double() * 2);
  }
  std::vector<UnmaskRow> unmask_rows(static_cast<std::size_t>(rows));
  for (int r = 0; r < rows; ++r) {
    unmask_rows[r].first = r * candidates;
    unmask_rows[r].n = candidates;
    unmask_rows[r].context = StepContext{0, 4, candidates, nullptr};
    unmask_rows[r].rng = Rng(static_cast<std::uint64_t>(r));
  }
  auto chosen = std::make_unique<bool[]>(c.size());
  using Select = Kernel<Host, op::Unmask<P>>;
  Select::run(policy, c.data(), unmask_rows, chosen.get());
  for (int r = 0; r < rows; ++r)
    if (!selection_holds(policy, c.data() + r * candidates, candidates, chosen.get() + r * candidates))
      refuse(std::string("unmask/") + P::name + ": row " + std::to_string(r) + " is not what the policy defines");
  for (auto _ : state) {
    Select::run(policy, c.data(), unmask_rows, chosen.get());
    benchmark::DoNotOptimize(chosen.get());
  }
  state.counters["rows/s"] = benchmark::Counter(rows, benchmark::Counter::kIsIterationInvariantRate);
}

template <class P>
void register_unmask(P policy) {
  for (const int candidates : {8, 32})
    benchmark::RegisterBenchmark(
        (std::string("unmask/") + P::name + "/rows:64/candidates:" + std::to_string(candidates)).c_str(),
        BM_Unmask<P>, policy, 64, candidates)
        ->Unit(benchmark::kMicrosecond);
}

// ---------------------------------------------------------------------------------------------
// KV-cache operations of a Qwen2.5-0.5B cache (24 layers): a forward's writes of its new tokens'
// K and V, and the copy of a kept prefix into another cache (multiple-choice scoring).

void BM_KvWrite(benchmark::State& state, int tokens) {
  const io::ModelConfig config = model::preset_config("qwen2.5-0.5b");
  model::KvCache<Host> cache(config, 1024);
  const int d = config.head_dim(), kvh = config.num_key_value_heads, first = 512;
  auto k = normal(static_cast<std::size_t>(tokens) * kvh * d, 6), v = normal(k.size(), 7);
  const AttentionShape shape{config.num_attention_heads, kvh, d, 1.0f, tokens, cache.capacity()};
  const auto write = [&] {
    for (int layer = 0; layer < config.num_hidden_layers; ++layer) {
      const AttentionRow row{0, tokens, first, first + tokens, cache.k(layer), cache.v(layer), cache.capacity()};
      Kernel<Host, op::KvWrite>::run(k.data(), v.data(), {&row, 1}, shape);
    }
  };
  write();
  for (int layer = 0; layer < config.num_hidden_layers; ++layer)
    for (int t = 0; t < tokens; ++t)
      for (int h = 0; h < kvh; ++h)
        for (int e = 0; e < d; ++e) {
          const std::size_t src = (static_cast<std::size_t>(t) * kvh + h) * d + e;
          const std::int64_t dst = (static_cast<std::int64_t>(h) * cache.capacity() + first + t) * d + e;
          if (cache.k(layer)[dst] != k[src] || cache.v(layer)[dst] != v[src])
            refuse("kv_cache/write: layer " + std::to_string(layer) + " token " + std::to_string(t));
        }
  for (auto _ : state) {
    write();
    benchmark::DoNotOptimize(cache.k(0));
  }
  state.counters["GB/s"] = benchmark::Counter(2.0 * config.num_hidden_layers * k.size() * sizeof(float) * 1e-9,
                                              benchmark::Counter::kIsIterationInvariantRate);
}

void BM_KvCopySlots(benchmark::State& state, int slots) {
  const io::ModelConfig config = model::preset_config("qwen2.5-0.5b");
  model::KvCache<Host> from(config, 1024), to(config, 1024);
  for (int layer = 0; layer < config.num_hidden_layers; ++layer) {
    auto values = normal(static_cast<std::size_t>(from.layer_stride()), 8 + layer);
    std::copy(values.begin(), values.end(), from.k(layer));
    std::copy(values.rbegin(), values.rend(), from.v(layer));
  }
  to.copy_slots(from, 0, slots);
  const int d = config.head_dim();
  for (int layer = 0; layer < config.num_hidden_layers; ++layer)
    for (int h = 0; h < config.num_key_value_heads; ++h) {
      const std::int64_t at = static_cast<std::int64_t>(h) * 1024 * d;
      if (!std::equal(from.k(layer) + at, from.k(layer) + at + slots * d, to.k(layer) + at) ||
          !std::equal(from.v(layer) + at, from.v(layer) + at + slots * d, to.v(layer) + at))
        refuse("kv_cache/copy_slots: layer " + std::to_string(layer) + " head " + std::to_string(h));
    }
  for (auto _ : state) {
    to.copy_slots(from, 0, slots);
    benchmark::DoNotOptimize(to.k(0));
  }
  const double bytes = 2.0 * config.num_hidden_layers * config.num_key_value_heads * slots * d * sizeof(float);
  state.counters["GB/s"] = benchmark::Counter(2 * bytes * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
}

void register_kv_cache() {
  for (const int tokens : {1, 8, 32})
    benchmark::RegisterBenchmark(("kv_cache/write/tokens:" + std::to_string(tokens) + "/layers:24").c_str(),
                                 BM_KvWrite, tokens)
        ->Unit(benchmark::kMicrosecond);
  benchmark::RegisterBenchmark("kv_cache/copy_slots/slots:512/layers:24", BM_KvCopySlots, 512)
      ->Unit(benchmark::kMicrosecond);
}

// ---------------------------------------------------------------------------------------------
// Random weights (model::random_model, write_random_checkpoint, blockdiff init): one of a 0.5B
// model's MLP matrices drawn by model::detail::fill_normal (chunks on every thread, two values a
// draw), beside one stream of Rng::normal() (one value a draw, one thread).

void BM_RandomWeights(benchmark::State& state, bool chunked) {
  const std::size_t n = std::size_t{4864} * 896;
  const double std = 0.02;
  std::vector<float> v(n);
  std::uint64_t seed = 0;
  const auto draw = [&] {
    ++seed;
    if (chunked) return model::detail::fill_normal(v, seed, 0, std);
    Rng rng(seed);
    for (float& x : v) x = static_cast<float>(rng.normal() * std);
  };
  draw();
  double mean = 0, sq = 0;
  for (const float x : v) mean += x, sq += static_cast<double>(x) * x;
  mean /= static_cast<double>(n), sq /= static_cast<double>(n);
  if (std::fabs(mean) > 5 * std / std::sqrt(double(n)) || std::fabs(sq / (std * std) - 1) > 5 * std::sqrt(2.0 / double(n)))
    refuse("random_weights: mean " + std::to_string(mean) + ", variance " + std::to_string(sq) + " are not N(0, 0.02²)'s");
  for (auto _ : state) {
    draw();
    benchmark::DoNotOptimize(v.data());
  }
  state.counters["values/s"] = benchmark::Counter(static_cast<double>(n), benchmark::Counter::kIsIterationInvariantRate);
}

void register_random_weights() {
  for (const bool chunked : {true, false})
    benchmark::RegisterBenchmark(chunked ? "random_weights/fill_normal/values:4358144" : "random_weights/one_stream/values:4358144",
                                 BM_RandomWeights, chunked)
        ->Unit(benchmark::kMillisecond)
        ->UseRealTime();
}

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  bench::add_context();
  register_attention();
  register_vocab_stats();
  register_sample();
  register_unmask(unmask::Threshold{0.9f});
  register_unmask(unmask::TopK{2});
  register_unmask(unmask::Scheduled<>{8});
  register_unmask(unmask::Margin{0.5f});
  register_unmask(unmask::Entropy{0.5f});
  register_unmask(unmask::EntropyBounded{0.5f});
  register_unmask(unmask::Factor{1.0f});
  register_unmask(unmask::Random{2});
  register_kv_cache();
  register_random_weights();
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
}
