// GPU training-step figures: tokens/s of a whole optimiser step (batch build on the host,
// forward, backward, AdamW) of `train::TrainableQwen2<float, backend::Cuda>`, for the embedded
// task model's shapes and a Qwen2.5-0.5B shape, with the AR objective and the Fast-dLLM v2 one.
// The host's figures for the same task-model shapes are bench_train's: host code compiled
// through nvcc ran its step 1.6x slower here than the same code compiled by g++, so timing the
// host in this binary would understate it.
//
// Before timing, every case runs one step from the same parameters and batch on both backends
// (a short one for the 0.5B shape) and checks the loss (1e-4 relative) and every gradient
// (2e-4 of the largest): a kernel that is wrong is never timed.
//
//   build/host/bench/bench_cuda_train                      # every case
//   OMP_NUM_THREADS=2 build/host/bench/bench_train --benchmark_filter=tasks   # the host's
//   build/host/bench/bench_cuda_train --benchmark_filter=tasks
#include <cmath>

#include "../tests/support/largest.hpp"
#include "blockdiff/cuda.cuh"
#include "common.hpp"

using namespace blockdiff;
using Cuda = backend::Cuda;

namespace {

//! One step of `objective` on both backends from the same parameters and batch; an empty string
//! when they agree, else what differs.
template <class Objective>
std::string check_against_host(const io::ModelConfig& config, const Objective& objective, int length) {
  train::TrainableQwen2<float> host(config);
  train::initialise(host, 1);
  auto device = train::TrainableQwen2<float, Cuda>::from(host);
  Rng rng(3);
  const auto w = bench::random_windows(config, length, 1, rng);
  train::ModelBatch b;
  objective.build(w, 0, 1, rng, b);
  host.zero_grad();
  device.zero_grad();
  const auto h = host.step(b, objective.mask(length));
  const auto d = device.step(b, objective.mask(length));
  if (h.n_tokens != d.n_tokens || !(std::fabs(h.loss - d.loss) <= 1e-4 * std::fabs(h.loss)))
    return blockdiff::detail::concat("loss ", d.loss, " on the device, ", h.loss, " on the host");
  const auto hg = host.download_gradients();
  const auto dg = device.download_gradients();
  for (const auto& t : host.tensors()) {
    double largest = 0, err = 0;
    for (std::int64_t i = t.offset; i < t.offset + t.numel; ++i) {
      test::take_largest(largest, static_cast<double>(std::fabs(hg[std::size_t(i)])));
      test::take_largest(err, static_cast<double>(std::fabs(hg[std::size_t(i)] - dg[std::size_t(i)])));
    }
    if (err > 2e-4 * largest + 1e-12) return blockdiff::detail::concat("gradient of ", t.name, " differs by ", err, " (largest ", largest, ")");
  }
  return {};
}

//! Times optimiser steps of `objective` on `batch` windows of `context` tokens on the device.
template <class Objective>
void train_step(benchmark::State& state, const char* preset, Objective objective, int context, int batch) {
  const auto config = model::preset_config(preset);
  if (Cuda::device_count() == 0) return state.SkipWithError("no CUDA device");
  // The 0.5B shape is checked on a short window: its host step is slow.
  const std::string wrong = check_against_host(config, objective, config.num_hidden_layers > 8 ? 64 : context);
  if (!wrong.empty()) return state.SkipWithError(("device step differs from the host: " + wrong).c_str());
  train::TrainableQwen2<float, Cuda> m(config);
  {
    train::TrainableQwen2<float> init(config);
    train::initialise(init, 1);
    m.upload_parameters(init.download_parameters());
  }
  Rng rng(2);
  const auto w = bench::random_windows(config, context, batch, rng);
  train::AdamW<float, Cuda> opt(m.parameters().size(), {});
  train::ModelBatch b;
  auto step = [&] {
    const auto r = bench::optimiser_step(m, opt, objective, w, batch, rng, b);
    Cuda::synchronize();  // the step's work is done when timed
    return r;
  };
  const auto first = step();  // sizes the arena and the scratch
  if (!std::isfinite(first.loss) || first.n_tokens == 0) return state.SkipWithError("the first step gave no finite loss");
  for (auto _ : state) benchmark::DoNotOptimize(step());
  const double tokens = double(b.rows) * b.length * double(state.iterations());
  state.counters["tokens/s"] = benchmark::Counter(tokens, benchmark::Counter::kIsRate);
  // 6 N per token (forward 2N, backward 4N), the usual estimate; attention excluded.
  state.counters["TFLOP/s"] =
      benchmark::Counter(6 * double(config.parameter_count()) * tokens / 1e12, benchmark::Counter::kIsRate);
  state.counters["arena_MB"] = double(m.arena_bytes()) / 1e6;
  state.SetLabel(preset);
}

//! Registers one case; `iterations` fixes the count for the slow shapes.
template <class Objective>
void add(const std::string& name, const char* preset, Objective objective, int context, int batch, int iterations = 0) {
  auto* b = benchmark::RegisterBenchmark(name.c_str(), [=](benchmark::State& state) {
    train_step(state, preset, objective, context, batch);
  });
  b->Unit(benchmark::kMillisecond)->UseRealTime();
  if (iterations > 0) b->Iterations(iterations);
}

}  // namespace

int main(int argc, char** argv) {
  using train::ArObjective, train::FastDllmV2Objective;
  // The embedded model's fine-tune and pretraining shapes (bench_train's tasks_fdllm2, tasks_ar).
  add("train_step/tasks_fdllm2", "tasks", FastDllmV2Objective<8>(1), 64, 8);
  add("train_step/tasks_ar", "tasks", ArObjective{}, 64, 16);
  // A 0.5B shape at the paper's block size: 4 windows of 512 tokens (the Fast-dLLM v2 objective
  // runs each as a 1,024-token row of the noised and the clean stream).
  const int mask_id = *model::preset_config("qwen2.5-0.5b").mask_token_id;
  add("train_step/qwen05b_ar", "qwen2.5-0.5b", ArObjective{}, 512, 4, 5);
  add("train_step/qwen05b_fdllm2", "qwen2.5-0.5b", FastDllmV2Objective<32>(mask_id), 512, 4, 5);

  benchmark::Initialize(&argc, argv);
  bench::add_context();
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
}
