// Each host kernel against a naive loop written here, on odd shapes that exercise the
// thread slicing (output widths not a multiple of 16, one row, many rows).
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <functional>
#include <limits>
#include <numeric>
#include <tuple>
#include <type_traits>
#include <vector>

#include "blockdiff/backend/host.hpp"
#include "blockdiff/core/rng.hpp"
#include "blockdiff/backend/mask.hpp"
#include "../support/compare.hpp"
#include "../support/largest.hpp"
#include "../support/sample_reference.hpp"

using namespace blockdiff;

using test::randn;

// Weights stored as W (f32, or BF16 rounded from the same values); the reference multiplies the
// stored values, widened, in f64.
template <class W>
void check_linear(int n, int k, int m) {
  CAPTURE(n);
  CAPTURE(k);
  CAPTURE(m);
  auto x = randn(static_cast<std::size_t>(n * k), 1), b = randn(static_cast<std::size_t>(m), 3);
  std::vector<W> w;
  for (float v : randn(static_cast<std::size_t>(m * k), 2)) {
    if constexpr (std::is_same_v<W, bf16>) w.push_back(to_bf16(v));
    else w.push_back(v);
  }
  auto y0 = randn(static_cast<std::size_t>(n * m), 4);
  std::vector<double> ref(static_cast<std::size_t>(n * m)), ref_acc(ref.size()), ref_acc_bias(ref.size());
  for (int i = 0; i < n; ++i)
    for (int o = 0; o < m; ++o) {
      double s = 0;
      for (int j = 0; j < k; ++j) s += static_cast<double>(x[i * k + j]) * to_float(w[static_cast<std::size_t>(o) * k + j]);
      ref[i * m + o] = s + b[o];
      ref_acc[i * m + o] = y0[i * m + o] + s;
      ref_acc_bias[i * m + o] = y0[i * m + o] + s + b[o];
    }
  std::vector<float> y(ref.size());
  Kernel<backend::Host, op::Linear>::run(x.data(), n, k, w.data(), m, b.data(), y.data());
  CHECK(test::relative_error(y, ref) < 1e-5);
  auto y1 = y0;
  Kernel<backend::Host, op::Linear>::run(x.data(), n, k, w.data(), m, nullptr, y0.data(), true);
  CHECK(test::relative_error(y0, ref_acc) < 1e-5);
  Kernel<backend::Host, op::Linear>::run(x.data(), n, k, w.data(), m, b.data(), y1.data(), true);  // y += x wT + b
  CHECK(test::relative_error(y1, ref_acc_bias) < 1e-5);
}

using Isa = backend::Host::Isa;
const char* isa_name(Isa isa) { return isa == Isa::avx512 ? "avx512" : isa == Isa::avx2 ? "avx2" : "portable"; }

// Runs `check` with the host kernels capped at each vector width this CPU has (the portable path,
// AVX2, AVX-512), and restores the cap.
template <class F>
void at_each_isa(F&& check) {
  const Isa saved = backend::Host::max_isa();
  for (Isa isa : {Isa::portable, Isa::avx2, Isa::avx512}) {
    if (isa > detail::cpu_isa()) break;
    backend::Host::max_isa(isa);
    const std::string isa_text = isa_name(isa);  // doctest prints a char pointer as an address
    CAPTURE(isa_text);
    check();
  }
  backend::Host::max_isa(saved);
}

constexpr std::tuple<int, int, int> linear_shapes[] = {
    {1, 64, 200}, {7, 33, 17}, {64, 96, 1000}, {3, 128, 5}, {8, 200, 1000}, {16, 64, 333}, {2, 512, 600},
    {33, 40, 77}, {17, 48, 300}, {4, 40, 2},   {8, 48, 3},   {8, 48, 9},     {12, 20, 7},  {5, 16, 1},
    {1, 40, 8},   {1, 33, 21},  {9, 40, 50},   {63, 24, 30}, {40, 100, 1000}, {1, 24, 5}, {70, 24, 7},
    // Inputs too long for L1: the few-row kernel runs in column slices (the last with a tail).
    {8, 1100, 37}, {16, 2200, 20},
    // Eight rows shorter than a vector: the AVX2 form's two halves of four rows still add the tail.
    {8, 5, 11}};
static_assert(detail::few_rows_sliced<8, float>(1100) && detail::few_rows_sliced<8, float>(2200));

TEST_CASE("Linear: y = x wT + b, and accumulation, against a naive loop") {
  at_each_isa([] {
    for (auto [n, k, m] : linear_shapes) check_linear<float>(n, k, m);
  });
}

TEST_CASE("Linear with BF16 weights: the same products of the stored values, in f32 arithmetic") {
  at_each_isa([] {
    for (auto [n, k, m] : linear_shapes) check_linear<bf16>(n, k, m);
  });
  // Many rows widen the weights a panel of rows at a time: three panels of 512 rows, the last short.
  check_linear<bf16>(64, 2048, 1100);
  check_linear<bf16>(70, 2049, 1030);
}

// The few-row kernel's epilogue in both widths, whatever this CPU runs: the AVX-512 form's 16-lane
// tree is checked here even on a CPU without AVX-512 (vector extensions compile to narrower code).
template <class V>
void check_lane_sums() {
  constexpr int L = detail::lanes<V>;
  CAPTURE(L);
  V v[L];
  for (int j = 0; j < L; ++j)
    for (int l = 0; l < L; ++l) v[j][l] = static_cast<float>(j * 1000 + l * l + 1);  // exact in f32
  float out[L];
  detail::lane_sums(v, out);
  for (int j = 0; j < L; ++j) {
    float ref = 0;
    for (int l = 0; l < L; ++l) ref += v[j][l];
    CHECK(out[j] == ref);
    CHECK(detail::lane_sum(v[j]) == ref);
  }
}
TEST_CASE("Horizontal sums of the few-row kernel: each vector's lanes, in its own output") {
  check_lane_sums<detail::Vec16>();
  check_lane_sums<detail::Vec8>();
}

TEST_CASE("max_isa caps the vectors of the host kernels, never below the build's own") {
  const Isa saved = backend::Host::max_isa();
  for (Isa isa : {Isa::portable, Isa::avx2, Isa::avx512}) {
    const std::string isa_text = isa_name(isa);  // doctest prints a char pointer as an address
    CAPTURE(isa_text);
    backend::Host::max_isa(isa);
    const Isa expected = std::max(detail::build_isa, std::min(isa, detail::cpu_isa()));
    CHECK(detail::host_isa() == expected);
    CHECK(detail::few_rows_wide() == (expected != Isa::portable));
    // One f32 row takes the few-row kernel where it has wider vectors than the build's Eigen, or
    // where Eigen runs scalar (nvcc: test_model_nvcc).
    CHECK(detail::gemv_by_few_rows() == ((expected == Isa::avx512 && detail::build_isa != Isa::avx512) ||
                                         (!detail::eigen_vectorizes && expected != Isa::portable)));
  }
  backend::Host::max_isa(saved);
  CHECK(backend::Host::parse_isa(nullptr) == Isa::avx512);
  CHECK(backend::Host::parse_isa("") == Isa::avx512);
  CHECK(backend::Host::parse_isa("avx2") == Isa::avx2);
  CHECK(backend::Host::parse_isa("portable") == Isa::portable);
  CHECK_THROWS_WITH_AS(backend::Host::parse_isa("sse4"), "BLOCKDIFF_HOST_ISA=sse4: expected portable, avx2 or avx512",
                       std::invalid_argument);
  // ctest runs this binary a second time with BLOCKDIFF_HOST_ISA=portable (test_model_portable).
  if (const char* env = std::getenv("BLOCKDIFF_HOST_ISA")) CHECK(saved == backend::Host::parse_isa(env));
}

TEST_CASE("Linear with BF16 products: activations rounded to BF16, pairs multiplied into f32") {
  // The reference rounds the activations itself and sums exactly in f64.
  const auto check = [](int n, int k, int m) {
    CAPTURE(n);
    CAPTURE(k);
    CAPTURE(m);
    auto x = randn(static_cast<std::size_t>(n * k), 11), b = randn(static_cast<std::size_t>(m), 13);
    std::vector<bf16> w;
    for (float v : randn(static_cast<std::size_t>(m * k), 12)) w.push_back(to_bf16(v));
    std::vector<double> rounded_ref(static_cast<std::size_t>(n * m)), f32_ref(rounded_ref.size());
    for (int i = 0; i < n; ++i)
      for (int o = 0; o < m; ++o) {
        double s = 0, f = 0;
        for (int j = 0; j < k; ++j) {
          const double wj = to_float(w[static_cast<std::size_t>(o) * k + j]);
          s += to_float(to_bf16(x[i * k + j])) * wj;
          f += x[i * k + j] * wj;
        }
        rounded_ref[i * m + o] = s + b[o];
        f32_ref[i * m + o] = f + b[o];
      }
    std::vector<float> y(rounded_ref.size());
    Kernel<backend::Host, op::Linear>::run(x.data(), n, k, w.data(), m, b.data(), y.data());
    CHECK(test::relative_error(y, rounded_ref) < 1e-5);
    // Rounding the activations moves the result by far more than f32 summation would: the mode
    // is really on.
    CHECK(test::relative_error(y, f32_ref) > 1e-4);
  };
  backend::Host::bf16_products(true);
  if (!detail::bf16_dot_products(2)) {
    backend::Host::bf16_products(false);
    MESSAGE("AVX512-BF16 is unavailable (not on this CPU, or BLOCKDIFF_HOST_ISA caps it): the BF16 dot-product kernel is not tested here");
    return;
  }
  // k a multiple of 32, k with a tail of odd length, one pass of 2 and of 8 rows, several passes,
  // widths that leave a short last register block.
  for (auto [n, k, m] : {std::tuple{2, 64, 40}, std::tuple{8, 96, 17}, std::tuple{5, 45, 9}, std::tuple{13, 200, 100},
                         std::tuple{63, 33, 8}, std::tuple{3, 896, 128}, std::tuple{8, 2100, 19}, std::tuple{16, 2500, 11}})
    check(n, k, m);
  static_assert(detail::few_rows_sliced<8, bf16>(2100) && detail::few_rows_sliced<8, bf16>(2500));
  CHECK_FALSE(detail::bf16_dot_products(1));  // one row stays f32: it is bound by reading the weights
  backend::Host::bf16_products(false);
  CHECK_FALSE(detail::bf16_dot_products(8));
}

TEST_CASE("Linears and SwiGluLinear with an input norm: RMSNorm, then the products, against naive loops") {
  const int n = 3, k = 40, m[2] = {9, 5};
  auto x = randn(n * k, 61), g = randn(k, 62), wg = randn(7 * k, 63), wu = randn(7 * k, 64);
  std::vector<std::vector<float>> w{randn(m[0] * k, 65), randn(m[1] * k, 66)}, b{randn(m[0], 67), randn(m[1], 68)};
  std::vector<double> xn(n * k);  // the normalised rows, in f64
  for (int r = 0; r < n; ++r) {
    double ss = 0;
    for (int j = 0; j < k; ++j) ss += double(x[r * k + j]) * x[r * k + j];
    for (int j = 0; j < k; ++j) xn[r * k + j] = x[r * k + j] / std::sqrt(ss / k + 1e-5) * g[j];
  }
  auto product = [&](const std::vector<float>& wi, int mi, const float* bias) {
    std::vector<double> y(n * mi);
    for (int r = 0; r < n; ++r)
      for (int f = 0; f < mi; ++f) {
        double s = bias ? bias[f] : 0.0;
        for (int j = 0; j < k; ++j) s += xn[r * k + j] * wi[f * k + j];
        y[r * mi + f] = s;
      }
    return y;
  };
  std::vector<float> scratch(n * k), y0(n * m[0]), y1(n * m[1]), out(n * 7), up(n * 7);
  const LinearOut<float> outs[] = {{w[0].data(), m[0], b[0].data(), y0.data()}, {w[1].data(), m[1], b[1].data(), y1.data()}};
  const InputNorm norm{g.data(), 1e-5f, scratch.data()};
  Kernel<backend::Host, op::Linears>::run(x.data(), n, k, std::span<const LinearOut<float>>(outs), norm);
  CHECK(test::relative_error(y0, product(w[0], m[0], b[0].data())) < 1e-5);
  CHECK(test::relative_error(y1, product(w[1], m[1], b[1].data())) < 1e-5);
  Kernel<backend::Host, op::SwiGluLinear>::run(x.data(), n, k, wg.data(), wu.data(), 7, out.data(), up.data(), norm);
  auto sw = product(wg, 7, nullptr);
  const auto u = product(wu, 7, nullptr);
  for (std::size_t i = 0; i < sw.size(); ++i) sw[i] = sw[i] / (1 + std::exp(-sw[i])) * u[i];
  CHECK(test::relative_error(out, sw) < 1e-5);
  // A norm needs rows to write where it is not folded into the product.
  using Linears = Kernel<backend::Host, op::Linears>;
  CHECK_THROWS_WITH(Linears::run(x.data(), n, k, std::span<const LinearOut<float>>(outs), InputNorm{g.data(), 1e-5f, nullptr}),
                    doctest::Contains("no scratch rows"));
}

TEST_CASE("Embedding reads f32 and BF16 tables alike") {
  const int v = 11, h = 37;
  auto table = randn(static_cast<std::size_t>(v * h), 9);
  std::vector<bf16> narrow;
  for (float t : table) narrow.push_back(to_bf16(t));
  const int ids[] = {3, 0, 10, 3};
  std::vector<float> out(4 * h), out_narrow(4 * h);
  Kernel<backend::Host, op::Embedding>::run(table.data(), ids, 4, h, out.data());
  Kernel<backend::Host, op::Embedding>::run(narrow.data(), ids, 4, h, out_narrow.data());
  for (int t = 0; t < 4; ++t)
    for (int j = 0; j < h; ++j) {
      CHECK(out[t * h + j] == table[ids[t] * h + j]);
      CHECK(out_narrow[t * h + j] == to_float(narrow[static_cast<std::size_t>(ids[t] * h + j)]));
    }
}

TEST_CASE("RmsNorm, SwiGlu and Rope against naive loops") {
  const int n = 5, h = 48;
  auto x = randn(n * h, 5), g = randn(h, 6);
  std::vector<float> y(n * h);
  Kernel<backend::Host, op::RmsNorm>::run(x.data(), n, h, g.data(), 1e-6f, y.data());
  std::vector<double> ref(n * h);
  for (int i = 0; i < n; ++i) {
    double ss = 0;
    for (int j = 0; j < h; ++j) ss += double(x[i * h + j]) * x[i * h + j];
    for (int j = 0; j < h; ++j) ref[i * h + j] = x[i * h + j] / std::sqrt(ss / h + 1e-6) * g[j];
  }
  CHECK(test::relative_error(y, ref) < 1e-6);
  // An epsilon that matters: rows of small values, where mean(x²) is about eps.
  for (float& v : x) v *= 0.1f;
  Kernel<backend::Host, op::RmsNorm>::run(x.data(), n, h, g.data(), 0.01f, y.data());
  for (int i = 0; i < n; ++i) {
    double ss = 0;
    for (int j = 0; j < h; ++j) ss += double(x[i * h + j]) * x[i * h + j];
    for (int j = 0; j < h; ++j) ref[i * h + j] = x[i * h + j] / std::sqrt(ss / h + 0.01) * g[j];
  }
  CHECK(test::relative_error(y, ref) < 1e-6);

  // SwiGlu runs in chunks of 4096, in each vector width the CPU has (and a scalar tail): 10,003
  // values (the last chunk short, its last 3 past every width's lanes: the scalar tail), scaled so
  // that e^−|g| underflows at the ends.
  at_each_isa([] {
    const int count = 10003;
    auto gate = randn(count, 7), up = randn(count, 8);
    for (float& v : gate) v *= 15.0f;
    gate[0] = -120.0f, gate[1] = 120.0f, gate[2] = 0.0f, gate[count - 1] = -90.0f;
    std::vector<double> sw(count);
    for (int i = 0; i < count; ++i) sw[i] = gate[i] / (1 + std::exp(-double(gate[i]))) * up[i];
    Kernel<backend::Host, op::SwiGlu>::run(gate.data(), up.data(), count);
    int off = 0;  // each value to a few float roundings of its own size
    for (int i = 0; i < count; ++i) off += test::beyond(gate[i], sw[i], 2e-6 * std::fabs(sw[i]) + 1e-37) ? 1 : 0;
    CHECK(off == 0);
    CHECK(std::isfinite(gate[0]));
    CHECK(gate[1] == doctest::Approx(120.0 * up[1]));
    CHECK(gate[2] == 0.0f);
  });

  // Rope: heads 3, d 8, positions {0, 5, 100}; pairs (i, i + d/2) rotate by pos * theta^(-2i/d).
  const int heads = 3, d = 8, half = 4;
  const double theta = 10000;
  std::vector<int> pos{0, 5, 100};
  auto q = randn(3 * heads * d, 9);
  std::vector<double> rq(q.size());
  std::vector<float> cos_t(101 * half), sin_t(101 * half);
  for (int p = 0; p <= 100; ++p)
    for (int i = 0; i < half; ++i) {
      cos_t[p * half + i] = static_cast<float>(std::cos(p * std::pow(theta, -2.0 * i / d)));
      sin_t[p * half + i] = static_cast<float>(std::sin(p * std::pow(theta, -2.0 * i / d)));
    }
  for (int t = 0; t < 3; ++t)
    for (int hh = 0; hh < heads; ++hh)
      for (int i = 0; i < half; ++i) {
        const double a = q[(t * heads + hh) * d + i], b = q[(t * heads + hh) * d + i + half];
        const double f = pos[t] * std::pow(theta, -2.0 * i / d);
        rq[(t * heads + hh) * d + i] = a * std::cos(f) - b * std::sin(f);
        rq[(t * heads + hh) * d + i + half] = b * std::cos(f) + a * std::sin(f);
      }
  Kernel<backend::Host, op::Rope>::run(q.data(), 3, heads, d, pos.data(), cos_t.data(), sin_t.data());
  CHECK(test::relative_error(q, rq) < 1e-5);
}

//! One row of a batched attention call in check_attention: its queries, its first slot and the
//! keys it attends, in a cache of its own.
struct AttentionCase {
  int n_q = 0, first_slot = 0, kv_end = 0;
};

//! The rows of one call against a naive f64 loop over every (query, head, key): heads query heads
//! on kv_heads KV heads of head_dim 8.
template <class Mask>
void check_attention(const Mask& mask, std::vector<AttentionCase> cases, int heads = 4, int kvh = 2) {
  const int d = 8;
  int tokens = 0;
  for (const AttentionCase& c : cases) tokens += c.n_q;
  auto q = randn(static_cast<std::size_t>(tokens * heads * d), 10);
  std::vector<float> out(q.size(), -7.0f);
  std::vector<std::vector<float>> ks, vs;
  std::vector<AttentionRow> rows;
  for (std::size_t r = 0, begin = 0; r < cases.size(); begin += cases[r].n_q, ++r) {
    const int cap = cases[r].kv_end + 3;  // slots past kv_end hold values that must not be read
    ks.push_back(randn(static_cast<std::size_t>(kvh * cap * d), 11 + r));
    vs.push_back(randn(static_cast<std::size_t>(kvh * cap * d), 31 + r));
    rows.push_back({static_cast<std::int64_t>(begin), cases[r].n_q, cases[r].first_slot, cases[r].kv_end,
                    ks.back().data(), vs.back().data(), cap});
  }
  const float scale = 1.0f / std::sqrt(float(d));
  Kernel<backend::Host, op::Attention<Mask>>::run(q.data(), out.data(), rows, {heads, kvh, d, scale}, mask);
  std::vector<double> ref(out.size(), 0.0);
  for (const AttentionRow& row : rows)
    for (int i = 0; i < row.n_q; ++i)
      for (int h = 0; h < heads; ++h) {
        const int g = h / (heads / kvh);
        const float* qv = q.data() + ((row.q_begin + i) * heads + h) * d;
        std::vector<double> s(static_cast<std::size_t>(row.kv_end), -1e300);
        double mx = -1e300;
        for (int j = 0; j < row.kv_end; ++j) {
          if (!mask.allowed(row.first_slot + i, j)) continue;
          double dot = 0;
          for (int e = 0; e < d; ++e) dot += double(qv[e]) * row.k[(g * row.capacity + j) * d + e];
          s[j] = dot * scale;
          mx = std::max(mx, s[j]);
        }
        double sum = 0;
        for (int j = 0; j < row.kv_end; ++j) sum += s[j] > -1e299 ? std::exp(s[j] - mx) : 0.0;
        double* o = ref.data() + ((row.q_begin + i) * heads + h) * d;
        for (int j = 0; j < row.kv_end; ++j)
          if (s[j] > -1e299)
            for (int e = 0; e < d; ++e) o[e] += std::exp(s[j] - mx) / sum * row.v[(g * row.capacity + j) * d + e];
      }
  CHECK(test::relative_error(out, ref) < 1e-5);
}
template <class Mask>
void check_attention(const Mask& mask, int n_q, int first_slot, int kv_end) {
  check_attention(mask, {{n_q, first_slot, kv_end}});
}

//! A mask of a user's that is not a prefix, under which some queries may attend no key: even
//! queries see the odd keys before them, odd queries see none (and output zeros).
struct OddKeysBefore {
  bool allowed(int q, int k) const { return q % 2 == 0 && k % 2 == 1 && k < q; }
};

TEST_CASE("Attention under each mask kind, with GQA, against a naive loop") {
  at_each_isa([] {  // the softmax's exponentials are compiled for each width
    check_attention(mask::Causal{}, 9, 0, 9);
    check_attention(mask::Causal{}, 1, 20, 21);             // decode step against a cache
    check_attention(mask::BlockCausal<8>{}, 12, 0, 12);     // prefill of a ragged prompt
    check_attention(mask::BlockCausal<8>{}, 8, 16, 24);     // block forward
    check_attention(mask::Full{}, 4, 20, 24);               // sub-block forward against [committed ; scratch]
    check_attention(mask::BlockDiffusionTraining<4>{16}, 32, 0, 32);
    check_attention(OddKeysBefore{}, 12, 0, 12);  // query 0 and every odd one see no key
  });
}

TEST_CASE("Attention over several query tiles and rows in one call, query heads grouped by KV head") {
  // Prefills longer than a tile (64 queries): each tile reads the keys its own last query may see.
  check_attention(mask::Causal{}, 150, 0, 150);
  check_attention(mask::BlockCausal<32>{}, 130, 0, 130);
  check_attention(mask::BlockCausal<8>{}, 70, 9, 79);  // starts inside a block
  // A batch: rows of different lengths and caches, one of them with nothing to do.
  check_attention(mask::BlockCausal<8>{}, {{70, 0, 70}, {0, 5, 5}, {3, 40, 43}, {8, 16, 24}});
  check_attention(mask::Full{}, {{8, 100, 108}, {1, 0, 1}});
  check_attention(mask::BlockDiffusionTraining<4>{48}, {{96, 0, 96}});
  // Other group sizes: 7 query heads a KV head (Qwen2.5-0.5B's 14 on 2), and none shared.
  check_attention(mask::Causal{}, {{66, 0, 66}, {1, 66, 67}}, 14, 2);
  check_attention(mask::BlockCausal<4>{}, {{9, 3, 12}}, 3, 3);
}

TEST_CASE("Attention: a query whose scores are not numbers gives NaN, and only that query") {
  // Queries at slots 3, 4, 5 of a causal row; a NaN in query 1's head 2, then a NaN in the key
  // at slot 4 of key head 0, which the queries at slots 4 and 5 of heads 0 and 1 see.
  const int heads = 4, kvh = 2, d = 8, n_q = 3, cap = 6;
  auto q = randn(static_cast<std::size_t>(n_q * heads * d), 40);
  auto k = randn(static_cast<std::size_t>(kvh * cap * d), 41), v = randn(static_cast<std::size_t>(kvh * cap * d), 42);
  auto nan_where = [&](auto expected) {
    std::vector<float> out(q.size());
    const AttentionRow row{0, n_q, 3, 6, k.data(), v.data(), cap};
    Kernel<backend::Host, op::Attention<mask::Causal>>::run(q.data(), out.data(), std::span<const AttentionRow>(&row, 1),
                                                            {heads, kvh, d, 0.35f}, mask::Causal{});
    for (int i = 0; i < n_q; ++i)
      for (int h = 0; h < heads; ++h)
        for (int e = 0; e < d; ++e) {
          CAPTURE(i);
          CAPTURE(h);
          CHECK(std::isnan(out[(i * heads + h) * d + e]) == expected(i, h));
        }
  };
  q[(1 * heads + 2) * d + 5] = std::numeric_limits<float>::quiet_NaN();  // query 1, head 2
  nan_where([](int i, int h) { return i == 1 && h == 2; });
  q[(1 * heads + 2) * d + 5] = 0.5f;
  k[4 * d + 6] = std::numeric_limits<float>::quiet_NaN();  // key head 0, slot 4
  nan_where([](int i, int h) { return i >= 1 && h < 2; });
}

TEST_CASE("VocabStats at Qwen's vocabulary size against f64 loops, at each vector width") {
  const int vocab = 151936, rows = 4;
  auto l = randn(static_cast<std::size_t>(rows) * vocab, 21);
  for (auto& x : l) x *= 4;
  l[77] = 30.0f;                                                  // row 0: confident
  l[vocab + 1000] = l[vocab + 90000] = 25.0f;                     // row 1: a tie, the lowest index wins
  for (int i = 0; i < vocab; ++i) l[2 * std::size_t{vocab} + i] = -1000.0f;  // row 2: one live logit,
  l[2 * std::size_t{vocab} + vocab - 1] = 0.0f;                                //   the last (a tail element)
  at_each_isa([&] {  // the vocabulary passes are compiled for each width
    std::vector<PositionStats> s(rows);
    Kernel<backend::Host, op::VocabStats<true, true>>::run(l.data(), rows, vocab, s.data());
    for (int r = 0; r < rows; ++r) {
      const float* row = l.data() + std::int64_t{r} * vocab;
      int best = 0;
      for (int i = 1; i < vocab; ++i)
        if (row[i] > row[best]) best = i;
      double second = -1e30;
      for (int i = 0; i < vocab; ++i)
        if (i != best) second = std::max(second, double(row[i]));
      double z = 0, w = 0;
      for (int i = 0; i < vocab; ++i) {
        const double d = double(row[i]) - row[best];
        z += std::exp(d);
        w += std::exp(d) * d;
      }
      CAPTURE(r);
      CHECK(s[r].token == best);
      CHECK(s[r].p1 == doctest::Approx(1.0 / z).epsilon(1e-6));
      CHECK(s[r].p2 == doctest::Approx(std::exp(second - row[best]) / z).epsilon(1e-5));
      CHECK(s[r].entropy == doctest::Approx(std::log(z) - w / z).epsilon(1e-5));
    }
    CHECK(s[0].token == 77);
    CHECK(s[1].token == 1000);
    CHECK(s[2].token == vocab - 1);
    CHECK(s[2].p1 == 1.0f);
    // Rows without a distribution: a token inside the vocabulary (the +inf's, or 0), p1 = 1,
    // p2 and the entropy 0, as Sample gives; never an infinite or NaN statistic.
    const float inf = std::numeric_limits<float>::infinity();
    std::vector<float> none(3 * 40, std::numeric_limits<float>::quiet_NaN());
    std::fill(none.begin() + 40, none.begin() + 80, -inf);
    std::fill(none.begin() + 80, none.end(), 0.5f);
    none[80 + 29] = inf;
    PositionStats n[3];
    Kernel<backend::Host, op::VocabStats<true, true>>::run(none.data(), 3, 40, n);
    for (int r = 0; r < 3; ++r) {
      CAPTURE(r);
      CHECK(n[r].token == (r == 2 ? 29 : 0));
      CHECK(n[r].p1 == 1.0f);
      CHECK(n[r].p2 == 0.0f);
      CHECK(n[r].entropy == 0.0f);
    }
  });
}

TEST_CASE("VocabStats: a banned (−inf) or NaN logit is a token of probability 0, in the vectors and in the tail") {
  // Rows around the vector and unroll widths, every fifth logit −inf and every thirteenth NaN
  // (in the vector body and in the tail), against f64 loops over the other logits alone: the
  // entropy stays finite, as the distribution over the live tokens has it.
  const float inf = std::numeric_limits<float>::infinity(), nan = std::numeric_limits<float>::quiet_NaN();
  at_each_isa([&] {
    for (const int vocab : {7, 37, 64, 67, 1000, 4099}) {
      auto l = randn(static_cast<std::size_t>(vocab), 50 + vocab, 2.0);
      for (int i = 3; i < vocab; i += 5) l[static_cast<std::size_t>(i)] = -inf;
      for (int i = 6; i < vocab; i += 13) l[static_cast<std::size_t>(i)] = nan;
      l[static_cast<std::size_t>(vocab - 1)] = vocab % 2 ? -inf : nan;
      int best = -1;
      double second = -1e300;
      for (int i = 0; i < vocab; ++i)
        if (std::isfinite(l[i]) && (best < 0 || l[i] > l[static_cast<std::size_t>(best)])) best = i;
      for (int i = 0; i < vocab; ++i)
        if (i != best && std::isfinite(l[i])) second = std::max(second, double(l[i]));
      double z = 0, w = 0;
      for (int i = 0; i < vocab; ++i)
        if (std::isfinite(l[i])) {
          const double d = double(l[i]) - l[static_cast<std::size_t>(best)];
          z += std::exp(d);
          w += std::exp(d) * d;
        }
      PositionStats s;
      Kernel<backend::Host, op::VocabStats<true, true>>::run(l.data(), 1, vocab, &s);
      CAPTURE(vocab);
      CHECK(s.token == best);
      CHECK(s.p1 == doctest::Approx(1.0 / z).epsilon(1e-6));
      CHECK(s.p2 == doctest::Approx(std::exp(second - l[static_cast<std::size_t>(best)]) / z).epsilon(1e-5));
      CHECK(std::isfinite(s.entropy));
      CHECK(s.entropy == doctest::Approx(std::log(z) - w / z).epsilon(1e-5));
    }
  });
}

TEST_CASE("TopTwo: the largest logit, its lowest index and the runner-up, at each vector width") {
  // Short rows of few distinct values (ties within a lane and across lanes), some NaN, against a
  // plain loop; lengths around the vector and unroll widths, and their tails.
  Rng rng(40);
  at_each_isa([&] {
    for (int n = 1; n <= 150; ++n)
      for (int trial = 0; trial < 4; ++trial) {
        std::vector<float> l(static_cast<std::size_t>(n));
        for (float& x : l) {
          const auto pick = rng.below(9);
          x = pick == 8 ? std::numeric_limits<float>::quiet_NaN() : static_cast<float>(pick) - 3.0f;
        }
        detail::TopTwo want;
        for (int i = 0; i < n; ++i)
          if (l[i] > want.first) want.first = l[i], want.index = i;
        for (int i = 0; i < n; ++i)
          if (i != want.index && l[i] > want.second) want.second = l[i];
        const detail::TopTwo got = detail::top_two(l.data(), n);
        CAPTURE(n);
        CHECK(got.first == want.first);
        CHECK(got.index == want.index);
        CHECK(got.second == want.second);
      }
  });
}

TEST_CASE("The sampling pass's f64 exponentials: within 2 ulp of std::exp, at each vector width") {
  std::vector<float> z;
  for (float x = 0.0f; x > -760.0f; x -= 0.37f) z.push_back(x);
  z.push_back(-std::numeric_limits<float>::infinity());
  const int n = static_cast<int>(z.size());
  at_each_isa([&] {
    std::vector<double> terms(z.size());
    detail::Tempered out;
    out.terms = terms.data();
    const auto sums = detail::tempered_exps(z.data(), n, 0.0f, 1.0, out);
    double sum = 0;
    for (int i = 0; i < n; ++i) {
      const double want = std::exp(double(z[i]));
      CAPTURE(z[i]);
      if (z[i] >= -708.0f)
        CHECK(std::fabs(terms[i] - want) <= 2 * std::numeric_limits<double>::epsilon() * want);
      else
        CHECK(terms[i] <= std::numeric_limits<double>::min());  // below f64's least normal: 0
      sum += want;
    }
    CHECK(sums.sum == doctest::Approx(sum).epsilon(1e-15));
  });
}

TEST_CASE("Sample against a full stable sort of the tempered distribution, at each vector width") {
  // Logits on a grid of 0.25 make many exactly equal probabilities, so the nucleus is often cut
  // inside a run of ties, where the lower index must come first. The second row has three tokens
  // far above the rest, so that most 256-token chunks hold no candidate of its nucleus; the third
  // has NaN and −inf logits, which are never drawn, the last two in the scalar tail (3003 is
  // not a whole number of vectors at any width).
  const int vocab = 3003;
  std::vector<std::vector<float>> rows(3);
  for (float x : randn(vocab, 31, 2.0)) rows[0].push_back(std::round(x * 4.0f) / 4.0f);
  rows[1] = rows[0];
  rows[1][1234] = rows[1][2999] = 14.0f;
  rows[1][17] = 13.5f;
  rows[2] = rows[0];
  for (int i = 0; i < vocab; i += 7) rows[2][i] = i % 2 ? std::numeric_limits<float>::quiet_NaN() : -INFINITY;
  rows[2][vocab - 1] = std::numeric_limits<float>::quiet_NaN();
  rows[2][vocab - 2] = -INFINITY;
  Kernel<backend::Host, op::Sample>::Scratch scratch;
  for (std::size_t r = 0; r < rows.size(); ++r)
    for (float temperature : {1.0f, 0.6f})
      for (float top_p : {1.0f, 0.95f, 0.5f, 0.05f}) {
        const test::SampleDistribution want(rows[r], temperature, top_p);
        at_each_isa([&] {
          Rng draws(32);
          for (int d = 0; d < 200; ++d) {
            const double u = draws.uniform_double();
            CAPTURE(r);
            CAPTURE(temperature);
            CAPTURE(top_p);
            CAPTURE(u);
            const auto s =
                Kernel<backend::Host, op::Sample>::one_row(rows[r].data(), vocab, temperature, top_p, u, scratch);
            const int token = want.draw(u);
            REQUIRE(s.token == token);
            CHECK(s.p1 == doctest::Approx(want.p[token] / want.mass).epsilon(1e-6));
            CHECK(s.p2 == doctest::Approx(want.second).epsilon(1e-6));
            CHECK(s.entropy == doctest::Approx(want.entropy).epsilon(1e-6));
          }
        });
      }
}

TEST_CASE("Sample: rows without a distribution, and run() over rows and threads") {
  Kernel<backend::Host, op::Sample>::Scratch scratch;
  const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
  const std::vector<float> all_nan(300, nan), all_low(300, -inf);
  std::vector<float> one_high(300, 0.0f);
  one_high[123] = inf;
  for (const float top_p : {1.0f, 0.9f}) {
    CHECK(Kernel<backend::Host, op::Sample>::one_row(all_nan.data(), 300, 1.0f, top_p, 0.5, scratch).token == 0);
    CHECK(Kernel<backend::Host, op::Sample>::one_row(all_low.data(), 300, 1.0f, top_p, 0.5, scratch).token == 0);
    const auto s = Kernel<backend::Host, op::Sample>::one_row(one_high.data(), 300, 1.0f, top_p, 0.5, scratch);
    CHECK(s.token == 123);
    CHECK(s.p1 == 1.0f);
  }
  // run() draws each request from its own row: in the calling thread for a small vocabulary,
  // on OpenMP's threads (each with its own working space) for a wide one.
  std::vector<float> two{0.0f, 50.0f, 50.0f, 0.0f};
  const std::vector<SampleRequest> requests{{1, 0.2}, {0, 0.2}};
  PositionStats out[2];
  Kernel<backend::Host, op::Sample>::run(two.data(), 2, requests, 1.0f, 1.0f, out);
  CHECK(out[0].token == 0);
  CHECK(out[1].token == 1);
  const int wide = 20000, rows = 3;
  auto l = randn(std::size_t{wide} * rows, 41, 3.0);
  std::vector<SampleRequest> many;
  Rng u(42);
  for (int i = 0; i < 12; ++i) many.push_back({i % rows, u.uniform_double()});
  for (const float top_p : {1.0f, 0.8f}) {
    std::vector<PositionStats> batch(many.size());
    Kernel<backend::Host, op::Sample>::run(l.data(), wide, many, 0.8f, top_p, batch.data());
    for (std::size_t i = 0; i < many.size(); ++i) {
      const std::vector<float> row(l.begin() + many[i].row * wide, l.begin() + (many[i].row + 1) * wide);
      CAPTURE(i);
      CHECK(batch[i].token == test::SampleDistribution(row, 0.8f, top_p).draw(many[i].u));
    }
  }
}

TEST_CASE("Sample at the largest u below 1 draws the last token that can be drawn, not a banned one") {
  // At u = 1 − 2⁻⁵³ the target u·total lies within rounding of the total, so the walk's own sum
  // (in another order than the total's) often ends short of it. The last tokens are banned or
  // NaN; without a nucleus the draw is the last live token, with one the last kept.
  const int vocab = 3003;
  const double u = std::nextafter(1.0, 0.0);
  Kernel<backend::Host, op::Sample>::Scratch scratch;
  for (std::uint64_t seed = 0; seed < 24; ++seed) {
    auto l = randn(vocab, 500 + seed);
    for (int i = vocab - 9; i < vocab; ++i)
      l[i] = i % 2 ? -std::numeric_limits<float>::infinity() : std::numeric_limits<float>::quiet_NaN();
    const int last_live = vocab - 10;
    for (float temperature : {1.0f, 0.6f})
      at_each_isa([&] {
        CAPTURE(seed);
        CAPTURE(temperature);
        const auto all = Kernel<backend::Host, op::Sample>::one_row(l.data(), vocab, temperature, 1.0f, u, scratch);
        CHECK(all.token == last_live);
        const auto cut = Kernel<backend::Host, op::Sample>::one_row(l.data(), vocab, temperature, 0.95f, u, scratch);
        const test::SampleDistribution nucleus(l, temperature, 0.95f);
        CHECK(cut.token == nucleus.order.back());
        CHECK(cut.p1 == doctest::Approx(nucleus.p[cut.token] / nucleus.mass).epsilon(1e-6));
      });
  }
}

TEST_CASE("VocabStats: max probability, argmax, second probability and entropy") {
  std::vector<float> l{1.0f, 3.0f, 3.0f, -2.0f, 0.5f};
  double z = 0;
  for (float x : l) z += std::exp(double(x));
  double H = 0;
  for (float x : l) {
    const double p = std::exp(double(x)) / z;
    H -= p * std::log(p);
  }
  PositionStats s;
  Kernel<backend::Host, op::VocabStats<true, true>>::run(l.data(), 1, 5, &s);
  CHECK(s.token == 1);  // the lowest index among equal maxima
  CHECK(s.p1 == doctest::Approx(std::exp(3.0) / z).epsilon(1e-6));
  CHECK(s.p2 == doctest::Approx(std::exp(3.0) / z).epsilon(1e-6));  // the tie is the second
  CHECK(s.entropy == doctest::Approx(H).epsilon(1e-6));
  PositionStats only;
  Kernel<backend::Host, op::VocabStats<false, false>>::run(l.data(), 1, 5, &only);
  CHECK(only.p1 == s.p1);
  CHECK(only.p2 == 0.0f);  // not computed unless asked for
}
