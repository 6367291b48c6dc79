// GPU decoding figures for a Qwen2.5-1.5B-shaped random model on backend::Cuda, its weights
// held in BF16 (BLOCKDIFF_BENCH_WEIGHTS=f32 holds them in f32), timed with CUDA events:
//  - the AR decode step at batch 1 as a fraction of the HBM roofline (weight bytes over the
//    device-to-device copy bandwidth measured in the same run);
//  - a 32-token block forward and an 8-token sub-block forward against the cache, over the AR
//    step; with CUDA graphs (the default) and without;
//  - end-to-end tokens/s of AR and block diffusion at batch 1, 4, 16 and 64 with a fixed
//    acceptance pattern (TopK{2}: exactly two tokens per denoising forward, no EOS), so both do
//    the same work on every run;
//  - op::Linear alone on the model's shapes at 1 to 32 rows, through the CUDA-core kernel, the
//    tensor-core kernel and cuBLAS, as weight bytes per second;
//  - the three forwards again with the products of 9 to 32 rows sent to cuBLAS instead of the
//    tensor-core kernel (`/cublas_rows`), and with each RMSNorm its own launch instead of folded
//    into the product after it (`/unfolded_norms`), and with attention on the per-head kernel
//    instead of the grouped one (`/per_head_attention`), and with programmatic dependent launches
//    (`/dependent_launches`, off by default), for the ratio each gains in the same run;
//  - op::Attention alone at the model's shape for the three forwards, on both kernels;
//  - op::Unmask (the unmasking policy's decision) for 1 and 64 rows, on the device and on the host.
// Before timing, the CUDA model's logits are checked against the host model's on a short input.
#include <cuda_profiler_api.h>

#include <algorithm>
#include <cmath>
#include <memory>

#include "../tests/support/largest.hpp"
#include "blockdiff/cuda.cuh"
#include "common.hpp"

using namespace blockdiff;
using Cuda = backend::Cuda;
using GpuModel = model::Qwen2<Cuda>;

namespace {
const char* preset() {
  const char* p = std::getenv("BLOCKDIFF_BENCH_PRESET");
  return p ? p : "qwen2.5-1.5b";
}
DType weights() {
  const char* w = std::getenv("BLOCKDIFF_BENCH_WEIGHTS");
  return w != nullptr && std::string_view(w) == "f32" ? DType::f32 : DType::bf16;
}
GpuModel& gpu_model() {
  static GpuModel m = bench::random_model<Cuda>(preset(), 1, weights());
  return m;
}

struct Events {
  cudaEvent_t a, b;
  Events() {
    cudaEventCreate(&a);
    cudaEventCreate(&b);
  }
  ~Events() {
    cudaEventDestroy(a);
    cudaEventDestroy(b);
  }
  void start() { cudaEventRecord(a); }
  double stop_ms() {
    cudaEventRecord(b);
    cudaEventSynchronize(b);
    float ms = 0;
    cudaEventElapsedTime(&ms, a, b);
    return ms;
  }
};

//! Whether got is within tol times the largest |want| of want everywhere.
bool close_to(const float* got, const float* want, std::size_t n, double tol) {
  double err = 0, mag = 0;
  for (std::size_t i = 0; i < n; ++i) {
    test::take_largest(err, static_cast<double>(std::fabs(got[i] - want[i])));
    mag = std::max(mag, static_cast<double>(std::fabs(want[i])));
  }
  return err <= tol * mag;
}

//! Mean milliseconds of one run(): `reps` back to back, timed with events, each iteration.
template <class F>
double mean_ms(benchmark::State& state, int reps, F&& run) {
  Events e;
  double ms = 0;
  for (auto _ : state) {
    e.start();
    for (int i = 0; i < reps; ++i) run();
    ms += e.stop_ms() / reps;
  }
  return ms / static_cast<double>(state.iterations());
}

double d2d_bandwidth_gbs() {
  const std::size_t n = std::size_t{1} << 31;
  DeviceBuffer<char> a(Shape{static_cast<std::int64_t>(n)}), b(Shape{static_cast<std::int64_t>(n)});
  cudaMemset(a.data(), 1, n);
  Events e;
  double best = 0;
  for (int rep = 0; rep < 5; ++rep) {
    e.start();
    cudaMemcpy(b.data(), a.data(), n, cudaMemcpyDeviceToDevice);
    best = std::max(best, 2.0 * static_cast<double>(n) / (e.stop_ms() * 1e-3) / 1e9);
  }
  return best;
}

//! n token ids below `vocab`: by default the timed model's ordinary tokens, below its mask id.
std::vector<int> prompt(int n, int seed = 0, int vocab = 0) {
  if (vocab == 0) {
    const auto c = model::preset_config(preset());
    vocab = c.mask_token_id ? std::min(*c.mask_token_id, c.vocab_size) : c.vocab_size;
  }
  std::vector<int> p(static_cast<std::size_t>(n));
  for (int i = 0; i < n; ++i) p[static_cast<std::size_t>(i)] = (i * 7919 + 13 + seed * 101) % vocab;
  return p;
}


//! The tiny preset on both backends, weights held as in the timed model: logits must agree before
//! anything is timed. 8 tokens run every product in f32 on both (tight); 24 and 40 tokens with
//! BF16 weights take the tensor cores (our kernel, cuBLAS) with BF16 activations (a BF16
//! rounding's worth).
void validate_against_host(benchmark::State& state) {
  auto host = bench::random_model<backend::Host>("tiny", 5, weights());
  auto dev = bench::random_model<Cuda>("tiny", 5, weights());
  for (int n : {8, 24, 40}) {
    const auto ids = prompt(n, 0, 300);
    auto hc = host.make_cache(n);
    auto dc = dev.make_cache(n);
    std::vector<model::ForwardRow<backend::Host>> hr(1);
    std::vector<model::ForwardRow<Cuda>> dr(1);
    hr[0].tokens = ids, hr[0].cache = &hc;
    dr[0].tokens = ids, dr[0].cache = &dc;
    auto hl = host.forward<mask::BlockCausal<32>>(hr);
    auto dl = dev.forward<mask::BlockCausal<32>>(dr);
    std::vector<float> got(static_cast<std::size_t>(dl.numel()));
    Cuda::download(got.data(), dl.data(), got.size());
    const double tol = n > 8 && weights() == DType::bf16 ? 0.03 : 1e-4;
    if (!close_to(got.data(), hl.data(), got.size(), tol)) state.SkipWithError("CUDA logits differ from the host's");
  }
}

//! The backend's switches a forward_shapes run sets (and sets back to these defaults after).
struct Paths {
  bool graphs = true, mma_rows = true, folded_norms = true, grouped_attention = true, dependent_launches = false;

  void set() const {
    Cuda::use_dependent_launches(dependent_launches);
    Cuda::use_graphs(graphs);
    Cuda::use_mma_rows(mma_rows);
    Cuda::use_folded_norms(folded_norms);
    Cuda::use_grouped_attention(grouped_attention);
  }
};

void BM_ForwardShapes(benchmark::State& state, Paths paths) {
  paths.set();
  validate_against_host(state);  // on the paths this run times
  auto& m = gpu_model();
  const double bw = d2d_bandwidth_gbs();
  constexpr int B = 32, S = 8;
  const int context = 256;
  auto cache = m.make_cache(context + 2 * B);
  bench::forward<mask::BlockCausal<B>>(m, cache, prompt(context), 0, context, true, 1);
  const auto block = prompt(B, 1);
  const std::vector<int> sub(block.begin() + S, block.begin() + 2 * S);
  Events e;
  double ar = 0, blk = 0, sb = 0;
  for (int warm = 0; warm < 3; ++warm) {
    bench::forward<mask::Causal>(m, cache, {block[0]}, context, context + 1, false, 1);
    bench::forward<mask::BlockCausal<B>>(m, cache, block, context, context + B, false, B);
    bench::forward<mask::Full>(m, cache, sub, context + S, context + B, false, S);
  }
  if (std::getenv("BLOCKDIFF_BENCH_PROFILE") != nullptr) {  // one of each forward for a profiler (ncu --profile-from-start off)
    cudaProfilerStart();
    bench::forward<mask::Causal>(m, cache, {block[0]}, context, context + 1, false, 1);
    bench::forward<mask::Full>(m, cache, sub, context + S, context + B, false, S);
    bench::forward<mask::BlockCausal<B>>(m, cache, block, context, context + B, false, B);
    Cuda::synchronize();
    cudaProfilerStop();
  }
  for (auto _ : state) {
    e.start();
    bench::forward<mask::Causal>(m, cache, {block[0]}, context, context + 1, false, 1);
    ar += e.stop_ms();
    e.start();
    bench::forward<mask::BlockCausal<B>>(m, cache, block, context, context + B, false, B);
    blk += e.stop_ms();
    e.start();
    bench::forward<mask::Full>(m, cache, sub, context + S, context + B, false, S);
    sb += e.stop_ms();
  }
  const double n = static_cast<double>(state.iterations());
  const double bytes = static_cast<double>(m.weight_bytes());
  state.counters["ar_step_ms"] = ar / n;
  state.counters["block32_ms"] = blk / n;
  state.counters["sub_block8_ms"] = sb / n;
  state.counters["block32_over_ar"] = blk / ar;
  state.counters["sub_block8_over_ar"] = sb / ar;
  state.counters["weight_GB"] = bytes / 1e9;
  state.counters["d2d_GB/s"] = bw;
  state.counters["roofline_ms"] = bytes / (bw * 1e9) * 1e3;
  state.counters["fraction_of_roofline"] = (bytes / (bw * 1e9) * 1e3) / (ar / n);
  Paths{}.set();
}

//! op::Attention alone at the timed model's shape, against a cache of 320 slots filled to 256
//! (what forward_shapes runs): an AR step's one query (causal), a sub-block's 8 (full, against
//! the block's 32 slots) and a block's 32 (block-causal), for `batch` rows each with its own
//! cache, on the grouped kernel or the per-head one. Checked against the host before timing.
template <class Mask>
void BM_Attention(benchmark::State& state, int n_q, bool grouped) {
  const auto c = model::preset_config(preset());
  const int heads = c.num_attention_heads, kvh = c.num_key_value_heads, d = c.head_dim(), cap = 320;
  const int batch = static_cast<int>(state.range(0));
  const int first = n_q == 8 ? 264 : 256, kv_end = n_q == 1 ? 257 : 288;
  Rng rng(7);
  auto fill = [&](std::size_t n) {
    std::vector<float> v(n);
    for (auto& x : v) x = static_cast<float>(rng.normal());
    return v;
  };
  const auto q = fill(static_cast<std::size_t>(batch) * n_q * heads * d);
  std::vector<std::vector<float>> k, v;
  std::vector<AttentionRow> host_rows, dev_rows;
  std::vector<DeviceBuffer<float>> dk, dv;
  for (int b = 0; b < batch; ++b) {
    k.push_back(fill(static_cast<std::size_t>(kvh) * cap * d));
    v.push_back(fill(k.back().size()));
    dk.emplace_back(Shape{static_cast<std::int64_t>(k.back().size())});
    dv.emplace_back(Shape{static_cast<std::int64_t>(k.back().size())});
    Cuda::upload(dk.back().data(), k.back().data(), k.back().size());
    Cuda::upload(dv.back().data(), v.back().data(), v.back().size());
    host_rows.push_back({std::int64_t{b} * n_q, n_q, first, kv_end, k.back().data(), v.back().data(), cap});
    dev_rows.push_back({std::int64_t{b} * n_q, n_q, first, kv_end, dk.back().data(), dv.back().data(), cap});
  }
  DeviceBuffer<float> dq(Shape{static_cast<std::int64_t>(q.size())}), dout(dq.shape());
  DeviceBuffer<AttentionRow> drows(Shape{batch});
  Cuda::upload(dq.data(), q.data(), q.size());
  Cuda::upload(drows.data(), dev_rows.data(), dev_rows.size());
  const AttentionShape shape{heads, kvh, d, 1.0f / std::sqrt(static_cast<float>(d)), n_q, cap};
  const std::span<const AttentionRow> rows(drows.data(), dev_rows.size());
  Cuda::use_grouped_attention(grouped);
  auto run = [&] { Kernel<Cuda, op::Attention<Mask>>::run(dq.data(), dout.data(), rows, shape, Mask{}); };
  run();
  std::vector<float> host(q.size()), got(q.size());
  Kernel<backend::Host, op::Attention<Mask>>::run(q.data(), host.data(), host_rows, shape, Mask{});
  Cuda::download(got.data(), dout.data(), got.size());
  if (!close_to(got.data(), host.data(), got.size(), 2e-5)) state.SkipWithError("CUDA attention differs from the host's");
  const double per = mean_ms(state, 100, run);
  Cuda::use_grouped_attention(Paths{}.grouped_attention);
  state.counters["us"] = per * 1e3;
  // The K and V bytes the queries may read (each row's [0, kv_end) of every key head), per second.
  state.counters["kv_GB/s"] = 2.0 * batch * kvh * kv_end * d * sizeof(float) / (per * 1e-3) / 1e9;
}

enum class Path { few_rows, tensor_cores, cublas };
constexpr const char* path_names[] = {"few_rows", "mma", "cublas"};

//! One Linear of a named shape at `rows` rows: weight bytes streamed per second, and the fraction
//! of the measured copy bandwidth that is.
void BM_Linear(benchmark::State& state, int k, int m, Path path) {
  const int n = static_cast<int>(state.range(0));
  static const double bw = d2d_bandwidth_gbs();
  DeviceBuffer<float> x(Shape{std::int64_t{n} * k}), y(Shape{std::int64_t{n} * m});
  DeviceBuffer<bf16> w(Shape{std::int64_t{m} * k});
  cudaMemset(x.data(), 0, x.bytes());
  cudaMemset(w.data(), 0, w.bytes());
  auto run = [&] {
    switch (path) {
      case Path::few_rows: return detail::cuda::few_rows_linear(x.data(), n, k, w.data(), m, nullptr, y.data(), false, Cuda::stream());
      case Path::tensor_cores: return detail::cuda::mma_linear(x.data(), n, k, w.data(), m, nullptr, y.data(), false, Cuda::stream());
      case Path::cublas: return detail::cuda::blas_linear(x.data(), n, k, w.data(), m, nullptr, y.data(), false);
    }
  };
  run();
  const double per = mean_ms(state, 50, run);
  state.counters["us"] = per * 1e3;
  state.counters["weight_GB/s"] = static_cast<double>(w.bytes()) / (per * 1e-3) / 1e9;
  state.counters["of_copy_bw"] = static_cast<double>(w.bytes()) / (per * 1e-3) / 1e9 / bw;
}

//! op::Unmask for `rows` rows of a sub-block's 8 candidates, on the device (one call: its two
//! copies and its kernel) or on the host; the device's decisions are held to the host's first.
template <class P>
void BM_Unmask(benchmark::State& state, P policy, bool device) {
  const int n_rows = static_cast<int>(state.range(0)), per_row = 8;
  std::vector<Candidate> candidates(static_cast<std::size_t>(n_rows * per_row));
  Rng draw(3);
  for (auto& c : candidates) {
    c.stats.p1 = draw.uniform(), c.stats.p2 = (1.0f - c.stats.p1) * draw.uniform();
    c.stats.entropy = 2.0f * draw.uniform(), c.stats.token = static_cast<int>(draw.below(151936));
  }
  std::vector<UnmaskRow> rows(static_cast<std::size_t>(n_rows));
  for (int r = 0; r < n_rows; ++r) rows[r].first = r * per_row, rows[r].n = per_row, rows[r].context.masked_at_start = per_row;
  const auto run = [&](bool on_device, std::vector<UnmaskRow>& rs, bool* chosen) {
    if (on_device) Kernel<Cuda, op::Unmask<P>>::run(policy, candidates.data(), rs, chosen);
    else Kernel<backend::Host, op::Unmask<P>>::run(policy, candidates.data(), rs, chosen);
  };
  std::unique_ptr<bool[]> host(new bool[candidates.size()]()), dev(new bool[candidates.size()]());
  auto host_rows = rows, dev_rows = rows;
  run(false, host_rows, host.get());
  run(true, dev_rows, dev.get());
  if (!std::equal(host.get(), host.get() + candidates.size(), dev.get()))
    state.SkipWithError("the device's decisions differ from the host's");
  for (auto _ : state) run(device, dev_rows, dev.get());
}

void BM_EndToEnd(benchmark::State& state, bool diffusion) {
  auto& m = gpu_model();
  const int batch = static_cast<int>(state.range(0)), max_new = 128;
  std::vector<std::vector<int>> prompts;
  for (int b = 0; b < batch; ++b) prompts.push_back(prompt(64, b));
  double tokens = 0, forwards = 0, seconds = 0;
  for (auto _ : state) {
    const auto t0 = std::chrono::steady_clock::now();
    if (diffusion) {
      decode::BlockDiffusionDecoder<GpuModel, BlockShape<32, 8>, unmask::TopK, cache::Block<>> d(m, unmask::TopK{2});
      decode::DecodeOptions o;
      o.max_new_tokens = max_new;
      o.mask_id = *m.config().mask_token_id;
      o.trace = false;
      for (auto& r : d.generate(prompts, o)) tokens += static_cast<double>(r.tokens.size()), forwards += r.trace.total_forwards();
    } else {
      decode::ArOptions o;
      o.max_new_tokens = max_new;
      for (auto& r : decode::ar_generate(m, prompts, o)) tokens += static_cast<double>(r.tokens.size()), forwards += r.prefill_forwards + r.decode_forwards;
    }
    Cuda::synchronize();
    seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }
  state.counters["tokens/s"] = tokens / seconds;
  state.counters["forwards/token/row"] = forwards / tokens;
}
}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (Cuda::device_count() == 0) {
    std::printf("no CUDA device\n");
    return 77;
  }
  cudaDeviceProp prop{};
  cudaGetDeviceProperties(&prop, 0);
  bench::add_context();
  benchmark::AddCustomContext("gpu", prop.name);
  benchmark::AddCustomContext("model", preset());
  benchmark::AddCustomContext("weights", weights() == DType::bf16 ? "bf16" : "f32");
  for (const auto& [name, paths] : {std::pair{"graphs", Paths{}},
                                    {"graphs/cublas_rows", Paths{.mma_rows = false}},
                                    {"graphs/unfolded_norms", Paths{.folded_norms = false}},
                                    {"graphs/per_head_attention", Paths{.grouped_attention = false}},
                                    {"graphs/dependent_launches", Paths{.dependent_launches = true}},
                                    {"direct", Paths{.graphs = false}}})
    benchmark::RegisterBenchmark((std::string("cuda/forward_shapes/context:256/") + name).c_str(), BM_ForwardShapes, paths)
        ->Iterations(20)
        ->UseRealTime();
  const auto c = model::preset_config(preset());
  const struct {
    const char* name;
    int k, m;
  } shapes[] = {{"q_proj", c.hidden_size, c.q_dim()},         {"k_proj", c.hidden_size, c.kv_dim()},
                {"gate_proj", c.hidden_size, c.intermediate_size}, {"down_proj", c.intermediate_size, c.hidden_size},
                {"lm_head", c.hidden_size, c.vocab_size}};
  for (const auto& sh : shapes)
    for (Path path : {Path::few_rows, Path::tensor_cores, Path::cublas}) {
      auto* b = benchmark::RegisterBenchmark(
          (std::string("cuda/linear_bf16/") + sh.name + "/" + path_names[static_cast<int>(path)]).c_str(), BM_Linear, sh.k,
          sh.m, path);
      b->ArgName("rows")->Iterations(5)->UseRealTime();
      for (int n : {1, 2, 4, 8, 16, 32})
        if (path == Path::cublas || (path == Path::few_rows && n <= detail::cuda::few_rows_max) ||
            (path == Path::tensor_cores && n >= detail::cuda::few_rows_max))
          b->Arg(n);
    }
  for (const bool grouped : {true, false}) {
    const std::string kernel = grouped ? "/grouped" : "/per_head";
    benchmark::RegisterBenchmark(("cuda/attention/ar_step" + kernel).c_str(), BM_Attention<mask::Causal>, 1, grouped)
        ->ArgName("batch")->Arg(1)->Arg(16)->Iterations(5)->UseRealTime();
    benchmark::RegisterBenchmark(("cuda/attention/sub_block8" + kernel).c_str(), BM_Attention<mask::Full>, 8, grouped)
        ->ArgName("batch")->Arg(1)->Iterations(5)->UseRealTime();
    benchmark::RegisterBenchmark(("cuda/attention/block32" + kernel).c_str(), BM_Attention<mask::BlockCausal<32>>, 32, grouped)
        ->ArgName("batch")->Arg(1)->Arg(16)->Iterations(5)->UseRealTime();
  }
  for (const bool device : {true, false}) {
    const std::string where = device ? "/device" : "/host";
    benchmark::RegisterBenchmark(("cuda/unmask/threshold" + where).c_str(), BM_Unmask<unmask::Threshold>,
                                 unmask::Threshold{0.9f}, device)
        ->ArgName("rows")->Arg(1)->Arg(64)->UseRealTime()->Unit(benchmark::kMicrosecond);
    benchmark::RegisterBenchmark(("cuda/unmask/entropy_bounded" + where).c_str(), BM_Unmask<unmask::EntropyBounded>,
                                 unmask::EntropyBounded{0.5f}, device)
        ->ArgName("rows")->Arg(1)->Arg(64)->UseRealTime()->Unit(benchmark::kMicrosecond);
  }
  for (int batch : {1, 4, 16, 64}) {
    benchmark::RegisterBenchmark("cuda/end_to_end/ar", BM_EndToEnd, false)->Arg(batch)->ArgName("batch")->Iterations(1)->UseRealTime()->Unit(benchmark::kSecond);
    benchmark::RegisterBenchmark("cuda/end_to_end/fdllm2_topk2_block", BM_EndToEnd, true)->Arg(batch)->ArgName("batch")->Iterations(1)->UseRealTime()->Unit(benchmark::kSecond);
  }
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
}
