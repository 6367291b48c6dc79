// Training-step benchmarks: tokens/s and GFLOP/s of a whole step (forward, backward, AdamW) for
// the tiny preset, the embedded task model and a 0.5B-shaped model; the share of the step spent
// in GEMMs and their GFLOP/s, beside a forward-shaped SGEMM timed in the same run; and the
// operator-new calls per step (goal: none).
//
//   OMP_NUM_THREADS=2 build/bench/bench/bench_train
#include <benchmark/benchmark.h>


#include "blockdiff/blockdiff.hpp"
#include "../tests/support/count_new.hpp"
#include "common.hpp"

using namespace blockdiff;

namespace {

// One optimiser step of `objective` on random windows of `context` tokens.
template <class Objective>
void train_step(benchmark::State& state, const char* preset, Objective objective, int context, int batch) {
  auto config = model::preset_config(preset);
  train::TrainableQwen2<float> m(config);
  train::initialise(m, 1);
  Rng rng(2);
  const auto w = bench::random_windows(config, context, batch, rng);
  train::AdamW<float> opt(m.parameters().size(), {});
  train::ModelBatch b;
  auto step = [&] { return bench::optimiser_step(m, opt, objective, w, batch, rng, b); };
  const auto first = step();  // validates and sizes the arena
  if (!std::isfinite(first.loss) || first.n_tokens == 0) state.SkipWithError("the first step gave no finite loss");
  const double params = double(config.parameter_count());
  long news = 0;
  train::ops::gemm_stats = {true, 0, 0, 0};
  for (auto _ : state) {
    const long before = test::allocations.load();
    benchmark::DoNotOptimize(step());
    news += test::allocations.load() - before;
  }
  const auto stats = train::ops::gemm_stats;
  train::ops::gemm_stats.enabled = false;
  const double tokens = double(b.rows) * b.length;
  const double iterations = double(state.iterations());
  state.counters["tokens/s"] = benchmark::Counter(tokens * iterations, benchmark::Counter::kIsRate);
  // 6 N per token (forward 2N, backward 4N), the usual estimate; attention excluded.
  state.counters["GFLOP/s"] = benchmark::Counter(6 * params * tokens * iterations / 1e9, benchmark::Counter::kIsRate);
  state.counters["gemm_GFLOP/s"] = stats.flops / stats.seconds / 1e9;
  state.counters["allocs/step"] = double(news) / iterations;
  state.counters["arena_MB"] = double(m.arena_bytes()) / 1e6;
  state.SetLabel(preset);
  // Share of the step in GEMMs: GEMM seconds as a rate over the timed loop's wall time.
  state.counters["gemm_share"] = benchmark::Counter(stats.seconds, benchmark::Counter::kIsRate);
}

// The forward's GEMM efficiency for comparison: x[n, k] · w[m, k]ᵀ at a shape of the same model.
void forward_gemm(benchmark::State& state, int n, int k, int m) {
  std::vector<float> x(std::size_t(n) * k, 0.5f), w(std::size_t(m) * k, 0.25f), y(std::size_t(n) * m);
  for (auto _ : state) Kernel<backend::Host, op::Linear>::run(x.data(), n, k, w.data(), m, nullptr, y.data());
  state.counters["GFLOP/s"] =
      benchmark::Counter(2.0 * n * k * m * double(state.iterations()) / 1e9, benchmark::Counter::kIsRate);
}

}  // namespace

BENCHMARK_CAPTURE(train_step, tiny_fdllm2, "tiny", train::FastDllmV2Objective<32>(319), 128, 8)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK_CAPTURE(train_step, tasks_fdllm2, "tasks", train::FastDllmV2Objective<8>(1), 64, 8)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK_CAPTURE(train_step, tasks_ar, "tasks", train::ArObjective{}, 64, 16)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK_CAPTURE(train_step, qwen05b_ar, "qwen2.5-0.5b", train::ArObjective{}, 64, 2)
    ->Unit(benchmark::kMillisecond)
    ->Iterations(2)
    ->UseRealTime();
BENCHMARK_CAPTURE(forward_gemm, tasks_mlp_1024rows, 1024, 128, 384)->Unit(benchmark::kMicrosecond);
BENCHMARK_CAPTURE(forward_gemm, qwen05b_mlp_128rows, 128, 896, 4864)->Unit(benchmark::kMillisecond);

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  bench::add_context();
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
}
