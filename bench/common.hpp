// Shared pieces of blockdiff's benchmarks: a random model built in memory, the run's context
// (CPU, compiler, commit), and a memory-bandwidth probe measured in the same run.
#pragma once

#include <benchmark/benchmark.h>

#include <chrono>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include "blockdiff/blockdiff.hpp"

namespace blockdiff::bench {

//! A Qwen2 of a named preset with random weights, generated straight into the model, its weight
//! matrices held in `weights`.
template <class Backend = backend::Host>
model::Qwen2<Backend> random_model(const std::string& preset, std::uint64_t seed = 1, DType weights = DType::f32) {
  return model::random_model<Backend>(model::preset_config(preset), seed, true, weights);
}

//! One forward of `tokens` at cache slot `first`, attending [0, kv_end), logits for the last
//! `logit_rows` tokens; the shape of every timed forward in the decode benchmarks.
template <class Mask, class Backend>
void forward(model::Qwen2<Backend>& m, model::KvCache<Backend>& cache, const std::vector<int>& tokens, int first,
             int kv_end, bool advance, int logit_rows) {
  std::vector<model::ForwardRow<Backend>> rows(1);
  rows[0].tokens = tokens;
  rows[0].first_slot = first;
  rows[0].kv_end = kv_end;
  rows[0].advance = advance;
  rows[0].logits_begin = static_cast<int>(tokens.size()) - logit_rows;
  rows[0].cache = &cache;
  benchmark::DoNotOptimize(m.template forward<Mask>(rows).data());
}

//! `count` random windows of `length` token ids other than [MASK], drawn from `rng`; the first
//! quarter of each is unsupervised (a prompt).
inline train::Windows random_windows(const io::ModelConfig& config, int length, int count, Rng& rng) {
  train::Windows w;
  w.length = length;
  for (int i = 0; i < length * count; ++i) {
    int id = 0;
    do id = static_cast<int>(rng.below(static_cast<std::uint64_t>(config.vocab_size)));
    while (id == config.mask_token_id);
    w.ids.push_back(id);
    w.supervised.push_back(i % length >= length / 4);
  }
  return w;
}

//! One optimiser step of `objective` on the first `batch` windows of `w` (built into `b`):
//! forward, backward and AdamW at a fixed learning rate, on the model's backend.
template <class Model, class Optimizer, class Objective>
train::LossResult optimiser_step(Model& m, Optimizer& opt, const Objective& objective, const train::Windows& w,
                                 int batch, Rng& rng, train::ModelBatch& b) {
  objective.build(w, 0, batch, rng, b);
  m.zero_grad();
  const auto r = m.step(b, objective.mask(w.length));
  opt.update(m.parameters(), m.gradients(), 1e-4);
  return r;
}

//! Host memory copy bandwidth in GB/s (bytes read + written), over a buffer far larger than caches.
inline double copy_bandwidth_gbs() {
  const std::size_t n = std::size_t{1} << 28;  // 1 GiB each way
  std::vector<char> a(n, 1), b(n, 2);
  double best = 0;
  for (int rep = 0; rep < 3; ++rep) {
    const auto t0 = std::chrono::steady_clock::now();
#pragma omp parallel for schedule(static)
    for (int chunk = 0; chunk < 64; ++chunk) std::memcpy(b.data() + chunk * (n / 64), a.data() + chunk * (n / 64), n / 64);
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    best = std::max(best, 2.0 * static_cast<double>(n) / s / 1e9);
  }
  benchmark::DoNotOptimize(b.data());
  return best;
}

//! Peak resident memory of this process in bytes (VmHWM).
inline std::size_t peak_rss_bytes() {
  std::ifstream in("/proc/self/status");
  std::string key;
  while (in >> key) {
    if (key == "VmHWM:") {
      std::size_t kb = 0;
      in >> kb;
      return kb * 1024;
    }
    std::string rest;
    std::getline(in, rest);
  }
  return 0;
}

inline void add_context() {
  std::string cpu = "unknown";
  std::ifstream in("/proc/cpuinfo");
  for (std::string line; std::getline(in, line);)
    if (line.rfind("model name", 0) == 0) {
      cpu = line.substr(line.find(':') + 2);
      break;
    }
  benchmark::AddCustomContext("cpu", cpu);
#if defined(__clang__)
  benchmark::AddCustomContext("compiler", "clang " __clang_version__);
#else
  benchmark::AddCustomContext("compiler", "gcc " __VERSION__);
#endif
  benchmark::AddCustomContext("commit", BLOCKDIFF_COMMIT);
}

}  // namespace blockdiff::bench
