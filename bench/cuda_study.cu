// The ablation study's headline on the GPU: AR decoding of the embedded AR base against
// Fast-dLLM v2 decoding of its fine-tune (models/tasks-ar, models/tasks-fdllm2), on
// backend::Cuda, over the held-out `mix` split at batch 1 (and 8), in the same run.
//
// On the host these forwards cost in proportion to their tokens (docs/ablations.md); on a GPU
// a forward of this model is bound by launch latency whatever its tokens, so the ratio of
// tokens/s should approach the inverse of forwards per token. Each configuration is first
// decoded on the host and on the device: the accuracy, new tokens and forwards must agree (the
// models are f32, so the tokens are the same), or the case is skipped with what differs.
// The host's tokens/s are `blockdiff study`'s (host code compiled through nvcc runs slower than
// the same code compiled by g++, so this binary does not time the host).
//
//   BLOCKDIFF_MODELS=$PWD/models build/host/bench/bench_cuda_study
#include <cstdlib>
#include <map>
#include <memory>

#include "blockdiff/cuda.cuh"
#include "blockdiff/eval/eval.hpp"
#include "common.hpp"

using namespace blockdiff;
using Cuda = backend::Cuda;

namespace {

std::string models_dir() {
  const char* e = std::getenv("BLOCKDIFF_MODELS");
  return e ? e : BLOCKDIFF_SOURCE "/models";
}

template <class Backend>
struct Models {
  model::Qwen2<Backend> ar_base = model::Qwen2<Backend>::load(models_dir() + "/tasks-ar");
  model::Qwen2<Backend> fdllm2 = model::Qwen2<Backend>::load(models_dir() + "/tasks-fdllm2");
};
template <class Backend>
Models<Backend>& models() {
  static Models<Backend> m;
  return m;
}

const tokenizer::CharVocab& vocab() {
  static const auto v = tokenizer::CharVocab::load(models_dir() + "/tasks-ar/tokenizer.json");
  return v;
}
const std::vector<train::tasks::TextExample>& examples() {
  static const auto e = train::tasks::make("mix", train::tasks::Split::held_out, 200);
  return e;
}

constexpr int max_new = 32;
std::map<int, double> ar_tokens_per_second;  // by batch: the AR cases run first

//! AR decoding of the AR base (`ar`), or Threshold{0.9} decoding of the fine-tune, on a backend.
template <class Shape, class Cache, class Backend>
eval::BatchDecoder decoder_on(bool ar) {
  auto& m = models<Backend>();
  if (ar) return eval::ar_decoder(m.ar_base, vocab(), max_new);
  using Decoder = decode::BlockDiffusionDecoder<model::Qwen2<Backend>, Shape, unmask::Threshold, Cache>;
  auto decoder = std::make_shared<Decoder>(m.fdllm2, unmask::Threshold{0.9f});
  return [decoder, inner = eval::diffusion_decoder(*decoder, vocab(), max_new)](auto prompts) { return inner(prompts); };
}

template <class Shape, class Cache>
void study_case(benchmark::State& state, bool ar) {
  if (Cuda::device_count() == 0) return state.SkipWithError("no CUDA device");
  const int batch = static_cast<int>(state.range(0));
  const auto host = eval::evaluate(examples(), vocab(), batch, decoder_on<Shape, Cache, backend::Host>(ar));
  const auto gpu_decoder = decoder_on<Shape, Cache, Cuda>(ar);
  auto report = eval::evaluate(examples(), vocab(), batch, gpu_decoder);  // also warms the recorded graphs
  if (report.correct != host.correct || report.new_tokens != host.new_tokens ||
      report.total_forwards != host.total_forwards)
    return state.SkipWithError(blockdiff::detail::concat("the device decoded differently: ", report.correct, " correct, ",
                                                         report.new_tokens, " tokens, ", report.total_forwards,
                                                         " forwards against the host's ", host.correct, ", ",
                                                         host.new_tokens, ", ", host.total_forwards)
                                   .c_str());
  double best = report.seconds;
  for (auto _ : state) {
    const auto r = eval::evaluate(examples(), vocab(), batch, gpu_decoder);
    best = std::min(best, r.seconds);
    state.SetIterationTime(r.seconds);
  }
  report.seconds = best;
  if (ar) ar_tokens_per_second[batch] = report.tokens_per_second();
  state.counters["accuracy"] = report.accuracy();
  state.counters["tokens/s"] = report.tokens_per_second();
  state.counters["tok/fwd"] = report.tokens_per_forward();
  state.counters["fwd/tok"] = report.forwards_per_token();
  if (auto it = ar_tokens_per_second.find(batch); it != ar_tokens_per_second.end())
    state.counters["vs_ar"] = report.tokens_per_second() / it->second;
}

template <class Shape, class Cache>
void add(const std::string& name, bool ar) {
  for (int batch : {1, 8})
    benchmark::RegisterBenchmark(name.c_str(), study_case<Shape, Cache>, ar)
        ->Arg(batch)
        ->ArgName("batch")
        ->Iterations(3)
        ->UseManualTime()
        ->Unit(benchmark::kMillisecond);
}

}  // namespace

int main(int argc, char** argv) {
  // AR first: each later case's vs_ar is over the AR case of its batch, in the same run.
  add<BlockShape<8, 4>, cache::Hierarchical<>>("study/ar", true);
  add<BlockShape<8, 4>, cache::Hierarchical<>>("study/threshold0.9_8_4_hierarchical", false);
  add<BlockShape<8, 8>, cache::Hierarchical<>>("study/threshold0.9_8_8_hierarchical", false);
  add<BlockShape<8, 4>, cache::Block<>>("study/threshold0.9_8_4_block", false);
  benchmark::Initialize(&argc, argv);
  bench::add_context();
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
}
