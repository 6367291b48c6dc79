// GEMM on the shapes of a Qwen2.5-0.5B and -1.5B layer and of the embedded default model:
// blockdiff's host Linear, with f32 weights, with the same weights held in BF16 (f32 arithmetic,
// and BF16 products where the CPU has AVX512-BF16), beside OpenBLAS cblas_sgemm on the same
// operands, in the same run. The weights are BF16-representable values, so that every variant
// multiplies the same weights; each case is validated against another implementation before it
// is timed.
#include <cblas.h>

#include <cmath>

#include "../tests/support/largest.hpp"
#include "common.hpp"

using namespace blockdiff;

namespace {
struct Shape {
  const char* name;
  int k, m;  // in features, out features
};
// q/k/v/o, gate/up and down projections, and the lm_head; the embedded default model's gate and
// down projections (weights in cache, where the kernel's per-output work weighs most).
constexpr Shape shapes[] = {{"tasks/gate_proj", 128, 384},   {"tasks/down_proj", 384, 128},
                            {"0.5b/q_proj", 896, 896},       {"0.5b/k_proj", 896, 128},
                            {"0.5b/gate_proj", 896, 4864},   {"0.5b/down_proj", 4864, 896},
                            {"1.5b/q_proj", 1536, 1536},     {"1.5b/k_proj", 1536, 256},
                            {"1.5b/gate_proj", 1536, 8960},  {"1.5b/down_proj", 8960, 1536}};

struct Operands {
  std::vector<float> x, w, y;
  std::vector<bf16> w_bf16;  // the same weights
  Operands(int n, int k, int m) : x(static_cast<std::size_t>(n) * k), w(static_cast<std::size_t>(m) * k), y(static_cast<std::size_t>(n) * m) {
    Rng r(1);
    for (auto& v : x) v = r.uniform() - 0.5f;
    for (auto& v : w) {
      w_bf16.push_back(to_bf16(r.uniform() - 0.5f));
      v = to_float(w_bf16.back());
    }
  }
};

void openblas(Operands& o, int n, int k, int m) {
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, m, k, 1.0f, o.x.data(), k, o.w.data(), k, 0.0f, o.y.data(), m);
}
void blockdiff_linear(Operands& o, int n, int k, int m) {
  Kernel<backend::Host, op::Linear>::run(o.x.data(), n, k, o.w.data(), m, nullptr, o.y.data());
}
void blockdiff_linear_bf16(Operands& o, int n, int k, int m) {
  Kernel<backend::Host, op::Linear>::run(o.x.data(), n, k, o.w_bf16.data(), m, nullptr, o.y.data());
}
// BF16 weights with BF16 products (activations rounded to BF16, AVX512-BF16 dot products), where
// the CPU has them; elsewhere the same as blockdiff_linear_bf16.
void blockdiff_linear_bf16_products(Operands& o, int n, int k, int m) {
  backend::Host::bf16_products(true);
  Kernel<backend::Host, op::Linear>::run(o.x.data(), n, k, o.w_bf16.data(), m, nullptr, o.y.data());
  backend::Host::bf16_products(false);
}

template <void (*Impl)(Operands&, int, int, int)>
void BM_Gemm(benchmark::State& state, Shape shape) {
  const int n = static_cast<int>(state.range(0));
  Operands o(n, shape.k, shape.m);
  // Validate against the other implementation before timing.
  Operands ref(n, shape.k, shape.m);
  Impl(o, n, shape.k, shape.m);
  (Impl == openblas ? blockdiff_linear : openblas)(ref, n, shape.k, shape.m);
  double err = 0, mag = 0;
  for (std::size_t i = 0; i < o.y.size(); ++i) {
    test::take_largest(err, static_cast<double>(std::fabs(o.y[i] - ref.y[i])));
    mag = std::max(mag, static_cast<double>(std::fabs(ref.y[i])));
  }
  // Rounding the activations to BF16 moves a result by about 2^-9 of its terms' magnitude.
  const double tolerance = Impl == blockdiff_linear_bf16_products ? 1e-2 : 1e-4;
  if (err > tolerance * mag) state.SkipWithError("result differs from the other implementation");
  for (auto _ : state) {
    Impl(o, n, shape.k, shape.m);
    benchmark::DoNotOptimize(o.y.data());
  }
  state.counters["GFLOP/s"] = benchmark::Counter(2.0 * n * shape.k * shape.m, benchmark::Counter::kIsIterationInvariantRate,
                                                 benchmark::Counter::kIs1000);
}
}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  bench::add_context();
  benchmark::AddCustomContext("openblas_config", openblas_get_config());
  for (const auto& s : shapes)
    for (int n : {1, 8, 32, 512}) {
      benchmark::RegisterBenchmark((std::string("gemm/blockdiff/") + s.name).c_str(), BM_Gemm<blockdiff_linear>, s)
          ->Arg(n)->ArgName("rows")->Unit(benchmark::kMicrosecond)->UseRealTime();
      benchmark::RegisterBenchmark((std::string("gemm/blockdiff_bf16_weights/") + s.name).c_str(),
                                   BM_Gemm<blockdiff_linear_bf16>, s)
          ->Arg(n)->ArgName("rows")->Unit(benchmark::kMicrosecond)->UseRealTime();
      benchmark::RegisterBenchmark((std::string("gemm/blockdiff_bf16_products/") + s.name).c_str(),
                                   BM_Gemm<blockdiff_linear_bf16_products>, s)
          ->Arg(n)->ArgName("rows")->Unit(benchmark::kMicrosecond)->UseRealTime();
      benchmark::RegisterBenchmark((std::string("gemm/openblas/") + s.name).c_str(), BM_Gemm<openblas>, s)
          ->Arg(n)->ArgName("rows")->Unit(benchmark::kMicrosecond)->UseRealTime();
    }
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
}
