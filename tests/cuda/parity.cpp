// Host vs CUDA parity: every operation on the same inputs, logits of whole models, and whole
// decodes over a policy x block-shape x cache matrix (tokens and committed positions identical
// on the tiny f32 golden models). Exits 77 (CTest: skipped) where there is no GPU.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <limits>
#include <string>

#include "../support/paths.hpp"
#include "blockdiff/blockdiff.hpp"
#include "../support/compare.hpp"
#include "launchers.hpp"

using namespace blockdiff;
namespace gpu = blockdiff::test::cuda;
using test::randn;
using test::rel;

namespace {
// f32 results of differently ordered sums agree to a few ulps times the reduction length.
constexpr double kTol = 2e-5;

//! How many outputs of dev = x[n, k] · w[m, k]ᵀ (+ ...) lie further from the host's than rounding
//! the activations to BF16 allows: 2^-8 · sum_j |w_fj x_rj| (each x_j rounded once, relative
//! 2^-8 at most), plus a few f32 ulps.
int outside_bf16_bound(const std::vector<float>& dev, const std::vector<float>& host, const std::vector<float>& w,
                       const std::vector<float>& x, int n, int k, int m) {
  int outside = 0;
  for (int r = 0; r < n; ++r)
    for (int f = 0; f < m; ++f) {
      double bound = 0;
      for (int j = 0; j < k; ++j)
        bound += std::fabs(static_cast<double>(w[static_cast<std::size_t>(f * k + j)]) * x[static_cast<std::size_t>(r * k + j)]);
      const auto i = static_cast<std::size_t>(r * m + f);
      bound = bound * std::ldexp(1.0, -8) + 1e-5 * (1 + std::fabs(host[i]));
      outside += test::beyond(dev[i], host[i], bound);  // a NaN is outside
    }
  return outside;
}
}  // namespace

TEST_CASE("Linear, RmsNorm, Rope and SwiGlu: CUDA == host") {
  for (auto [n, k, m] : {std::tuple{1, 64, 200}, {7, 33, 17}, {64, 96, 1000}}) {
    auto x = randn(static_cast<std::size_t>(n * k), 1), w = randn(static_cast<std::size_t>(m * k), 2);
    auto b = randn(static_cast<std::size_t>(m), 3), y0 = randn(static_cast<std::size_t>(n * m), 4);
    std::vector<float> host(static_cast<std::size_t>(n * m)), acc = y0;
    Kernel<backend::Host, op::Linear>::run(x.data(), n, k, w.data(), m, b.data(), host.data());
    CHECK(rel(gpu::linear(x, n, k, w, m, &b, nullptr), host) < kTol);
    Kernel<backend::Host, op::Linear>::run(x.data(), n, k, w.data(), m, nullptr, acc.data(), true);
    CHECK(rel(gpu::linear(x, n, k, w, m, nullptr, &y0), acc) < kTol);
  }
  auto x = randn(5 * 300, 5), g = randn(300, 6);
  std::vector<float> y(x.size());
  Kernel<backend::Host, op::RmsNorm>::run(x.data(), 5, 300, g.data(), 1e-6f, y.data());
  CHECK(rel(gpu::rmsnorm(x, 5, 300, g, 1e-6f), y) < kTol);
  std::vector<int> pos{0, 3, 77};
  auto cos_t = randn(80 * 8, 7), sin_t = randn(80 * 8, 8), q = randn(3 * 2 * 16, 9);
  auto hq = q;
  Kernel<backend::Host, op::Rope>::run(hq.data(), 3, 2, 16, pos.data(), cos_t.data(), sin_t.data());
  CHECK(rel(gpu::rope(q, 3, 2, 16, pos, cos_t, sin_t), hq) < kTol);
  auto gate = randn(1000, 10), up = randn(1000, 11);
  auto hg = gate;
  Kernel<backend::Host, op::SwiGlu>::run(hg.data(), up.data(), 1000);
  CHECK(rel(gpu::swiglu(gate, up), hg) < kTol);
}

TEST_CASE("Linear with BF16 weights: CUDA == host, within the rounding of the activations when they are rounded") {
  // Up to 8 rows run on the CUDA cores in f32 (the host's arithmetic, another summation order).
  // More rows run on the tensor cores with the activations rounded to BF16 — our kernel up to 32
  // rows when k is a multiple of 16, cuBLAS otherwise — whose error is bounded per output by
  // 2^-8 * sum_j |w_ij x_j| (one rounding of each x_j, relative 2^-8 at most). The tensor-core
  // kernel is also run directly at every row count it takes, 1 to 32, and op::Linear with it
  // switched off, so each of the three paths meets the bound on every shape it can run.
  using gpu::LinearPath;
  for (auto [n, k, m] : {std::tuple{1, 64, 200}, {2, 1536, 70}, {5, 40, 33}, {7, 33, 17}, {8, 96, 1000}, {8, 2000, 24},
                         {9, 64, 50}, {12, 40, 16}, {16, 1536, 70}, {17, 96, 33}, {24, 48, 40}, {32, 176, 37},
                         {33, 64, 20}, {64, 96, 1000}}) {
    auto x = randn(static_cast<std::size_t>(n * k), 21), w = randn(static_cast<std::size_t>(m * k), 22);
    for (auto& v : w) v = to_float(to_bf16(v));  // BF16-representable: the device holds these exactly
    std::vector<bf16> wb(w.size());
    for (std::size_t i = 0; i < w.size(); ++i) wb[i] = to_bf16(w[i]);
    auto b = randn(static_cast<std::size_t>(m), 23), y0 = randn(static_cast<std::size_t>(n * m), 24);
    std::vector<float> host(static_cast<std::size_t>(n * m)), acc = y0;
    Kernel<backend::Host, op::Linear>::run(x.data(), n, k, wb.data(), m, b.data(), host.data());
    Kernel<backend::Host, op::Linear>::run(x.data(), n, k, wb.data(), m, nullptr, acc.data(), true);
    const bool tensor_core_shape = n <= 32 && k % 16 == 0;
    for (LinearPath path : {LinearPath::automatic, LinearPath::tensor_cores, LinearPath::no_tensor_cores}) {
      if (path == LinearPath::tensor_cores && !tensor_core_shape) continue;
      if (path == LinearPath::no_tensor_cores && n <= 8) continue;  // the same as automatic
      auto dev = gpu::linear(x, n, k, w, m, &b, nullptr, true, path);
      auto dev_acc = gpu::linear(x, n, k, w, m, nullptr, &y0, true, path);
      INFO("n ", n, " k ", k, " m ", m, " path ", static_cast<int>(path));
      if (n <= 8 && path == LinearPath::automatic) {
        CHECK(rel(dev, host) < kTol);
        CHECK(rel(dev_acc, acc) < kTol);
        continue;
      }
      CHECK(outside_bf16_bound(dev, host, w, x, n, k, m) == 0);
      CHECK(outside_bf16_bound(dev_acc, acc, w, x, n, k, m) == 0);
      CHECK(rel(dev, host) > 0);  // the activations really were rounded: this path is not the f32 one
      if (n > 8 && tensor_core_shape && path != LinearPath::tensor_cores) {
        const auto ours = gpu::linear(x, n, k, w, m, &b, nullptr, true, LinearPath::tensor_cores);
        if (path == LinearPath::automatic) CHECK(dev == ours);  // op::Linear took our kernel
        else CHECK(dev != ours);  // switched off, it did not (cuBLAS sums k in another order)
      }
    }
  }
}

TEST_CASE("The composite operations (Linears, SwiGluLinear, RopeKvWrite) and KvWrite: CUDA == the host's parts") {
  // On the host these run as their parts; on the device as one launch each up to 8 rows, and up
  // to 32 with BF16 weights (the tensor-core kernel: the products' ends fall inside a block of 16
  // features, and k = 80 ends in a half chunk). Past 8 rows BF16 weights round the activations.
  for (int n : {1, 3, 8, 12, 32, 33}) {
    const int k = 80, m[3] = {40, 8, 8};
    auto x = randn(static_cast<std::size_t>(n * k), 31);
    std::vector<std::vector<float>> w, b;
    std::vector<float> host;
    for (int i = 0; i < 3; ++i) {
      w.push_back(randn(static_cast<std::size_t>(m[i] * k), 32 + i));
      b.push_back(randn(static_cast<std::size_t>(m[i]), 35 + i));
      std::vector<float> y(static_cast<std::size_t>(n * m[i]));
      Kernel<backend::Host, op::Linear>::run(x.data(), n, k, w[i].data(), m[i], b[i].data(), y.data());
      host.insert(host.end(), y.begin(), y.end());
    }
    INFO(n, " rows");
    CHECK(rel(gpu::linears(x, n, k, w, {m[0], m[1], m[2]}, b), host) < kTol);
    if (n > 8) {  // BF16 weights: up to 32 rows each product as op::Linear computes it alone, to the bit
      auto wb = w;
      for (auto& wi : wb)
        for (auto& e : wi) e = to_float(to_bf16(e));
      const auto stacked = gpu::linears(x, n, k, wb, {m[0], m[1], m[2]}, b, true);
      CHECK(rel(stacked, host) < 0.05);
      std::vector<float> parts;
      for (int i = 0; i < 3; ++i) {
        auto y = gpu::linear(x, n, k, wb[static_cast<std::size_t>(i)], m[i], &b[static_cast<std::size_t>(i)], nullptr, true);
        parts.insert(parts.end(), y.begin(), y.end());
      }
      if (n <= 32) CHECK(stacked == parts);
    }
    for (bool bf16_weights : {false, true}) {
      auto g = randn(static_cast<std::size_t>(37 * k), 38), u = randn(static_cast<std::size_t>(37 * k), 39);
      if (bf16_weights)
        for (auto* v : {&g, &u})
          for (auto& e : *v) e = to_float(to_bf16(e));
      std::vector<float> hg(static_cast<std::size_t>(n * 37)), hu(hg.size());
      Kernel<backend::Host, op::Linear>::run(x.data(), n, k, g.data(), 37, nullptr, hg.data());
      Kernel<backend::Host, op::Linear>::run(x.data(), n, k, u.data(), 37, nullptr, hu.data());
      Kernel<backend::Host, op::SwiGlu>::run(hg.data(), hu.data(), n * 37);
      const double tol = bf16_weights && n > 8 ? 0.05 : kTol;  // more than 8 rows: BF16 activations
      CHECK(rel(gpu::swiglu_linear(x, n, k, g, u, 37, bf16_weights), hg) < tol);
    }
  }
  // Three rows of 2, 5 and 1 tokens writing their caches at different slots.
  const int heads = 4, kvh = 2, d = 16, cap = 12, T = 8;
  auto q = randn(static_cast<std::size_t>(T * heads * d), 40), k = randn(static_cast<std::size_t>(T * kvh * d), 41);
  auto v = randn(k.size(), 42), cos_t = randn(20 * 8, 43), sin_t = randn(20 * 8, 44);
  std::vector<int> pos{3, 4, 0, 1, 2, 3, 4, 11}, tokens{2, 5, 1}, first{3, 0, 11};
  // The host's reference: Rope on q and k (when asked), then KvWrite row by row.
  auto reference = [&](bool with_rope) {
    auto hq = q, hk = k;
    if (with_rope) {
      Kernel<backend::Host, op::Rope>::run(hq.data(), T, heads, d, pos.data(), cos_t.data(), sin_t.data());
      Kernel<backend::Host, op::Rope>::run(hk.data(), T, kvh, d, pos.data(), cos_t.data(), sin_t.data());
    }
    std::vector<float> host = hq;
    host.insert(host.end(), hk.begin(), hk.end());
    std::int64_t begin = 0;
    for (int r = 0; r < 3; ++r) {
      std::vector<float> ck(static_cast<std::size_t>(kvh * cap * d), 0.0f), cv(ck.size(), 0.0f);
      AttentionRow row{begin, tokens[r], first[r], first[r] + tokens[r], ck.data(), cv.data(), cap};
      Kernel<backend::Host, op::KvWrite>::run(hk.data(), v.data(), std::span<const AttentionRow>(&row, 1),
                                              AttentionShape{heads, kvh, d, 1.0f, tokens[r], cap});
      host.insert(host.end(), ck.begin(), ck.end());
      host.insert(host.end(), cv.begin(), cv.end());
      begin += tokens[r];
    }
    return host;
  };
  CHECK(rel(gpu::rope_kv_write(q, k, v, pos, cos_t, sin_t, tokens, first, heads, kvh, d, cap), reference(true)) < kTol);
  // op::KvWrite alone (the parts' path): the whole batch's rows in one call.
  CHECK(rel(gpu::rope_kv_write(q, k, v, pos, cos_t, sin_t, tokens, first, heads, kvh, d, cap, false),
            reference(false)) < kTol);
}

TEST_CASE("Linears and SwiGluLinear with an input norm: the norm folded into the product == the host's RmsNorm, then the products") {
  // The CUDA-core kernel (up to 8 rows) and the tensor-core kernel (BF16 weights, 9 to 32 rows,
  // k a multiple of 16, aligned operands) fold the norm in; every other case normalises into
  // scratch first. Rows of x differ in scale, so each row's own norm must reach its own outputs.
  // k = 81 and a norm weight one float off a 16-byte boundary take the unvectorised loads (and
  // cuBLAS past 8 rows); k = 80 ends in a half chunk of the tensor-core kernel.
  for (int n : {1, 3, 8, 12, 32, 33})
    for (auto [k, misalign] : {std::pair{80, 0}, {81, 0}, {80, 1}})
      for (bool bf16_weights : {false, true}) {
        auto x = randn(static_cast<std::size_t>(n * k), 51);
        for (int r = 0; r < n; ++r)
          for (int j = 0; j < k; ++j) x[static_cast<std::size_t>(r * k + j)] *= 0.25f + 0.5f * static_cast<float>(r);
        const gpu::Norm norm{randn(static_cast<std::size_t>(k), 52), 1e-5f, true, misalign};
        std::vector<float> xn(x.size());
        Kernel<backend::Host, op::RmsNorm>::run(x.data(), n, k, norm.weight.data(), norm.eps, xn.data());
        const int m[2] = {40, 8}, ms = 37;
        std::vector<std::vector<float>> w, b;
        for (int i = 0; i < 2; ++i) {
          w.push_back(randn(static_cast<std::size_t>(m[i] * k), 53 + i));
          b.push_back(randn(static_cast<std::size_t>(m[i]), 55 + i));
        }
        auto g = randn(static_cast<std::size_t>(ms * k), 57), u = randn(static_cast<std::size_t>(ms * k), 58);
        if (bf16_weights)
          for (auto* v : {&w[0], &w[1], &g, &u})
            for (auto& e : *v) e = to_float(to_bf16(e));
        std::vector<float> host, hg(static_cast<std::size_t>(n * ms)), hu(hg.size());
        for (int i = 0; i < 2; ++i) {
          std::vector<float> y(static_cast<std::size_t>(n * m[i]));
          Kernel<backend::Host, op::Linear>::run(xn.data(), n, k, w[static_cast<std::size_t>(i)].data(), m[i],
                                                 b[static_cast<std::size_t>(i)].data(), y.data());
          host.insert(host.end(), y.begin(), y.end());
        }
        Kernel<backend::Host, op::Linear>::run(xn.data(), n, k, g.data(), ms, nullptr, hg.data());
        Kernel<backend::Host, op::Linear>::run(xn.data(), n, k, u.data(), ms, nullptr, hu.data());
        Kernel<backend::Host, op::SwiGlu>::run(hg.data(), hu.data(), n * ms);

        const bool rounded = bf16_weights && n > 8;  // the activations go to the tensor cores as BF16
        const bool folds = n <= 8 || (bf16_weights && n <= 32 && k % 16 == 0 && misalign == 0);
        INFO("n ", n, " k ", k, " misalign ", misalign, " bf16 ", bf16_weights);
        auto unfolded_norm = norm;
        unfolded_norm.folded = false;
        const auto stacked = gpu::linears(x, n, k, w, {m[0], m[1]}, b, bf16_weights, &norm);
        const auto stacked_unfolded = gpu::linears(x, n, k, w, {m[0], m[1]}, b, bf16_weights, &unfolded_norm);
        const auto swiglu = gpu::swiglu_linear(x, n, k, g, u, ms, bf16_weights, &norm);
        const auto swiglu_unfolded = gpu::swiglu_linear(x, n, k, g, u, ms, bf16_weights, &unfolded_norm);
        for (const auto* dev : {&stacked, &stacked_unfolded}) {
          if (!rounded) {
            CHECK(rel(*dev, host) < kTol);
            continue;
          }
          std::size_t at = 0;
          for (int i = 0; i < 2; ++i) {  // each product against its own bound
            const std::size_t len = static_cast<std::size_t>(n * m[i]);
            const std::vector<float> part(dev->begin() + static_cast<std::ptrdiff_t>(at),
                                          dev->begin() + static_cast<std::ptrdiff_t>(at + len)),
                host_part(host.begin() + static_cast<std::ptrdiff_t>(at), host.begin() + static_cast<std::ptrdiff_t>(at + len));
            CHECK(outside_bf16_bound(part, host_part, w[static_cast<std::size_t>(i)], xn, n, k, m[i]) == 0);
            at += len;
          }
        }
        for (const auto* dev : {&swiglu, &swiglu_unfolded}) CHECK(rel(*dev, hg) < (rounded ? 0.05 : kTol));
        // Folded, the kernels compute the norm in another order than op::RmsNorm (the rows are
        // never written), so some output differs in its last bits; where they cannot fold it, the
        // switch changes nothing.
        if (folds) {
          CHECK(stacked != stacked_unfolded);
          CHECK(swiglu != swiglu_unfolded);
        } else {
          CHECK(stacked == stacked_unfolded);
          CHECK(swiglu == swiglu_unfolded);
        }
      }
}

TEST_CASE("Attention for each mask kind, the sub-block case and batched rows, grouped and per head: CUDA == host") {
  // A cache of 80 slots is 3 tiles of keys for the grouped kernel (one pass of the per-head
  // one); one of 1000 splits a query's keys over many blocks, whose partials the last block
  // merges (fewer than 128 queries for the per-head kernel; the grouped one splits until a call
  // has enough blocks). Heads : key heads 4:2; 12:2 (a 1.5B model, head_dim 128: both kernels'
  // 128 variants); 14:2 (a 0.5B model: a grouped block's 32 pairs end inside a query's heads);
  // 4:4 (no sharing) at head_dim 80 (not a multiple of 32); head_dim 66 is not a multiple of 4,
  // which only the per-head kernel takes.
  struct Config {
    int heads, kv_heads, d;
  };
  for (const Config cfg : {Config{4, 2, 64}, Config{12, 2, 128}, Config{14, 2, 64}, Config{4, 4, 80}, Config{4, 2, 66}})
    for (const int cap : {80, 1000}) {
      const int heads = cfg.heads, kvh = cfg.kv_heads, d = cfg.d;
      const auto k = randn(static_cast<std::size_t>(kvh * cap * d), 12 + cap + d);
      const auto v = randn(static_cast<std::size_t>(kvh * cap * d), 13 + cap + d);
      std::uint64_t seed = 100;
      auto check = [&]<class Mask>(const std::string& name, Mask mask, std::vector<gpu::AttentionCall> calls) {
        std::vector<AttentionRow> rows;
        std::int64_t total = 0;
        for (const auto& c : calls) {
          rows.push_back({total, c.n_q, c.first_slot, c.kv_end, const_cast<float*>(k.data()), const_cast<float*>(v.data()), cap});
          total += c.n_q;
        }
        const auto q = randn(static_cast<std::size_t>(total * heads * d), ++seed);
        std::vector<float> host(q.size());
        Kernel<backend::Host, op::Attention<Mask>>::run(q.data(), host.data(), rows, {heads, kvh, d, 1.0f / std::sqrt(float(d))},
                                                        mask);
        std::string shape = name + ", heads " + std::to_string(heads) + ":" + std::to_string(kvh) + ", head_dim " +
                            std::to_string(d) + ", capacity " + std::to_string(cap) + ", rows (n_q, first, kv_end):";
        for (const auto& c : calls)
          shape += " (" + std::to_string(c.n_q) + ", " + std::to_string(c.first_slot) + ", " + std::to_string(c.kv_end) + ")";
        INFO(shape);
        const auto grouped = gpu::attention(name, q, calls, k, v, heads, kvh, d, cap, true);
        const auto per_head = gpu::attention(name, q, calls, k, v, heads, kvh, d, cap, false);
        CHECK(rel(grouped, host) < kTol);
        CHECK(rel(per_head, host) < kTol);
        // The switch takes effect: the kernels add in different orders wherever a query sees
        // many keys, and are the same kernel where head_dim is not a multiple of 4.
        if (total >= 4 && calls.front().kv_end >= 64) CHECK((grouped != per_head) == (d % 4 == 0));
      };
      const int at = cap - 80;  // the same cases near the end of the cache
      check("causal", mask::Causal{}, {{37, 0, 37}});
      check("causal", mask::Causal{}, {{1, at + 70, at + 71}});  // decode: one query, long cache
      check("block-causal", mask::BlockCausal<8>{}, {{21, 0, 21}});
      check("block-causal", mask::BlockCausal<8>{}, {{8, at + 64, at + 72}});
      check("full", mask::Full{}, {{4, at + 68, at + 72}});  // sub-block against [committed ; scratch]
      check("training", mask::BlockDiffusionTraining<4>{32}, {{64, 0, 64}});
      // A batch: rows of different lengths and positions in one call (the shorter rows leave
      // blocks of the grid with no queries).
      check("causal", mask::Causal{}, {{1, at + 70, at + 71}, {8, at + 64, at + 72}, {5, 3, 8}, {1, 0, 1}});
      check("block-causal", mask::BlockCausal<8>{}, {{8, at + 64, at + 72}, {32, at + 48, at + 80}, {3, 16, 19}});
      check("full", mask::Full{}, {{8, at + 64, at + 72}, {8, at + 56, at + 64}});
      if (cap == 1000) check("causal", mask::Causal{}, {{200, 700, 900}});  // many queries
      check("full", mask::Full{}, {{3, 0, 0}});                               // no key at all: zeros
    }
}

TEST_CASE("Attention over more rows than a grid holds along y: launches of whole rows, CUDA == host") {
  // 8,192 rows of up to 32 queries on 8 heads of one key head: the per-head kernel needs
  // 8,192 x 32 blocks along y, the grouped one 8,192 x 8 pair tiles, both past 65,535, so each
  // runs the call in launches of whole rows. The rows differ in length, first slot and keys, so
  // a row read by the wrong launch, or a launch that starts at the wrong row, shows.
  const int heads = 8, kvh = 1, d = 8, cap = 48, n_rows = 8192;
  const auto cache_size = static_cast<std::size_t>(kvh * cap * d);
  const auto k = randn(cache_size, 61), v = randn(cache_size, 62);
  std::vector<gpu::AttentionCall> calls;
  std::vector<AttentionRow> rows;
  std::int64_t total = 0;
  for (int r = 0; r < n_rows; ++r) {
    const int n_q = 1 + r * 7 % 32, first = r % 9;
    calls.push_back({n_q, first, first + n_q});
    rows.push_back({total, n_q, first, first + n_q, const_cast<float*>(k.data()), const_cast<float*>(v.data()), cap});
    total += n_q;
  }
  const auto q = randn(static_cast<std::size_t>(total * heads * d), 63);
  std::vector<float> host(q.size());
  Kernel<backend::Host, op::Attention<mask::Causal>>::run(q.data(), host.data(), rows,
                                                          {heads, kvh, d, 1.0f / std::sqrt(float(d))}, mask::Causal{});
  CHECK(rel(gpu::attention("causal", q, calls, k, v, heads, kvh, d, cap, true), host) < kTol);
  CHECK(rel(gpu::attention("causal", q, calls, k, v, heads, kvh, d, cap, false), host) < kTol);
}

TEST_CASE("Attention: a query whose scores are not numbers gives NaN on the device too, and only that query") {
  // The host's rule (tests/backend/host.cpp): a NaN score among the keys a query may see makes
  // its output NaN, and no other query's. The cases a kernel's maxima or merges could pass over:
  // a query whose only allowed key in its tile scores NaN (a causal query at slot 0, or at the
  // first slot of a tile), a NaN query beside finite ones in a grouped block, a decode query
  // whose keys are split over blocks (capacity 1000), and a NaN key, which the queries after it
  // see and the queries before it do not, on both kernels and at head_dim 64 and 128.
  const float nan = std::numeric_limits<float>::quiet_NaN();
  for (const int d : {64, 128})
    for (const int cap : {80, 1000}) {
      const int heads = 4, kvh = 2;
      auto k = randn(static_cast<std::size_t>(kvh * cap * d), 70 + cap + d);
      const auto v = randn(static_cast<std::size_t>(kvh * cap * d), 71 + cap + d);
      k[(std::size_t{1} * cap + 10) * d + 3] = nan;  // key head 1 (query heads 2, 3), slot 10
      auto check = [&](std::vector<gpu::AttentionCall> calls, std::vector<std::array<int, 2>> nan_queries) {
        std::vector<AttentionRow> rows;
        std::int64_t total = 0;
        for (const auto& c : calls) {
          rows.push_back({total, c.n_q, c.first_slot, c.kv_end, k.data(), const_cast<float*>(v.data()), cap});
          total += c.n_q;
        }
        auto q = randn(static_cast<std::size_t>(total * heads * d), 72 + total);
        for (const auto [query, head] : nan_queries) q[(static_cast<std::size_t>(query) * heads + head) * d + 7] = nan;
        std::vector<float> host(q.size());
        Kernel<backend::Host, op::Attention<mask::Causal>>::run(q.data(), host.data(), rows,
                                                                {heads, kvh, d, 1.0f / std::sqrt(float(d))}, {});
        const auto host_nan = std::count_if(host.begin(), host.end(), [](float x) { return std::isnan(x); });
        INFO("head_dim " << d << ", capacity " << cap << ", rows " << calls.size() << ", queries " << total);
        REQUIRE(host_nan > 0);  // the case has queries of each kind
        REQUIRE(host_nan < static_cast<std::int64_t>(host.size()));
        for (const bool grouped : {true, false}) {
          CAPTURE(grouped);
          const auto dev = gpu::attention("causal", q, calls, k, v, heads, kvh, d, cap, grouped);
          std::vector<float> dev_finite, host_finite;
          int pattern = 0;  // outputs NaN on one side only
          for (std::size_t i = 0; i < host.size(); ++i) {
            if (std::isnan(dev[i]) != std::isnan(host[i])) ++pattern;
            else if (!std::isnan(host[i])) dev_finite.push_back(dev[i]), host_finite.push_back(host[i]);
          }
          CHECK(pattern == 0);
          CHECK(rel(dev_finite, host_finite) < kTol);
        }
      };
      // A prefill from slot 0: query 0 sees key 0 alone, query 32 sees key 32 alone in its
      // second tile of keys; the queries from slot 10 on of heads 2 and 3 see the NaN key.
      check({{37, 0, 37}}, {{0, 1}, {32, 0}, {5, 3}});
      check({{1, cap - 10, cap - 9}}, {{0, 0}});                         // a decode step
      check({{1, cap - 10, cap - 9}, {8, 0, 8}, {4, 60, 64}}, {{5, 1}});  // a batch; row 1 sees no NaN key
    }
}

TEST_CASE("VocabStats, each trait combination: CUDA == host") {
  const int rows = 6, vocab = 151936;
  auto l = randn(static_cast<std::size_t>(rows) * vocab, 14);
  for (auto& x : l) x *= 3;
  l[5] = 40.0f;              // a confident row
  l[vocab + 9] = l[vocab + 10] = 30.0f;  // a tie: the lowest index wins
  // Row 2: banned tokens (−inf) and NaN logits, each a token of probability 0; row 3: every
  // logit NaN, and row 4 one logit +inf, rows without a distribution (op::VocabStats).
  for (int i = 0; i < vocab; i += 3) l[2 * std::size_t{vocab} + i] = -std::numeric_limits<float>::infinity();
  for (int i = 1; i < vocab; i += 101) l[2 * std::size_t{vocab} + i] = std::numeric_limits<float>::quiet_NaN();
  std::fill(l.begin() + 3 * std::int64_t{vocab}, l.begin() + 4 * std::int64_t{vocab}, std::numeric_limits<float>::quiet_NaN());
  l[4 * std::size_t{vocab} + 4321] = std::numeric_limits<float>::infinity();
  for (bool second : {false, true})
    for (bool entropy : {false, true}) {
      auto dev = gpu::vocab_stats(second, entropy, l, rows, vocab);
      for (int r = 0; r < rows; ++r) {
        auto h = Kernel<backend::Host, op::VocabStats<true, true>>::one_row(l.data() + std::int64_t{r} * vocab, vocab);
        CAPTURE(r);
        CHECK(dev[r].token == h.token);
        CHECK(dev[r].p1 == doctest::Approx(h.p1).epsilon(1e-5));
        if (second) CHECK(dev[r].p2 == doctest::Approx(h.p2).epsilon(1e-5));
        if (entropy) CHECK(dev[r].entropy == doctest::Approx(h.entropy).epsilon(1e-4));
      }
    }
}

TEST_CASE("Sample, with a nucleus and without, at two temperatures: CUDA == host") {
  const int rows = 5, vocab = 151936;
  auto l = randn(static_cast<std::size_t>(rows) * vocab, 15);
  for (auto& x : l) x *= 3;
  l[7] = 12.0f;                                           // a confident row
  l[vocab + 9] = l[vocab + 10] = l[vocab + 11] = 11.0f;  // ties: the lower index comes first
  std::fill(l.begin() + 3 * std::int64_t{vocab}, l.begin() + 4 * std::int64_t{vocab}, 0.5f);  // every token tied
  // Row 4: every logit −inf, no distribution: token 0 with p1 = 1 (op::VocabStats).
  std::fill(l.begin() + 4 * std::int64_t{vocab}, l.end(), -std::numeric_limits<float>::infinity());
  // Row 2: banned tokens (−inf, the last among them) and NaN logits, never drawn, not even by
  // the largest u, where rounding can leave the cumulative sum short of u times the mass.
  for (int i = 0; i < vocab; i += 3) l[2 * std::size_t{vocab} + i] = -std::numeric_limits<float>::infinity();
  for (int i = 1; i < vocab; i += 101) l[2 * std::size_t{vocab} + i] = std::numeric_limits<float>::quiet_NaN();
  l[3 * std::size_t{vocab} - 1] = -std::numeric_limits<float>::infinity();
  std::vector<SampleRequest> requests;
  for (int r = 0; r < rows; ++r)
    for (double u : {0.0, 0.123457, 0.61803, 0.999999, std::nextafter(1.0, 0.0)}) requests.push_back({r, u});
  for (float temperature : {1.0f, 0.7f})
    for (float top_p : {1.0f, 0.9f, 0.3f}) {
      INFO("temperature ", temperature, " top-p ", top_p);
      std::vector<PositionStats> host(requests.size());
      Kernel<backend::Host, op::Sample>::run(l.data(), vocab, requests, temperature, top_p, host.data());
      const auto dev = gpu::sample(l, vocab, requests, temperature, top_p);
      for (std::size_t i = 0; i < requests.size(); ++i) {
        INFO("row ", requests[i].row, " u ", requests[i].u);
        CHECK(dev[i].token == host[i].token);
        if (requests[i].row != 4)
          CHECK(std::isfinite(l[static_cast<std::size_t>(requests[i].row) * vocab + dev[i].token]));
        CHECK(dev[i].p1 == doctest::Approx(host[i].p1).epsilon(1e-5));
        CHECK(dev[i].p2 == doctest::Approx(host[i].p2).epsilon(1e-5));
        CHECK(dev[i].entropy == doctest::Approx(host[i].entropy).epsilon(1e-5));
      }
    }
}

TEST_CASE("Unmask selection, each built-in policy on the device == on the host, batched rows") {
  // Five rows of 1 to 32 candidates with a gap between two of them (index 6, no row's), ties
  // of confidence and of entropy, and each row at another step of its sub-block.
  const std::vector<std::pair<int, int>> spans = {{0, 5}, {7, 1}, {8, 32}, {40, 8}, {48, 3}};
  std::vector<Candidate> candidates(51);
  Rng draw(21);
  for (std::size_t i = 0; i < candidates.size(); ++i) {
    auto& s = candidates[i].stats;
    candidates[i].offset = static_cast<int>(i % 32) + 1;
    s.token = static_cast<int>(i) * 7;
    s.p1 = i % 9 == 4 ? 0.93f : draw.uniform();
    s.p2 = (1.0f - s.p1) * draw.uniform();
    s.entropy = i % 11 == 2 ? 0.25f : 2.0f * draw.uniform();
  }
  std::vector<UnmaskRow> rows;
  for (std::size_t r = 0; r < spans.size(); ++r) {
    UnmaskRow row;
    row.first = spans[r].first, row.n = spans[r].second;
    row.context = StepContext{static_cast<int>(r % 3), 4, row.n + static_cast<int>(r), nullptr};
    row.rng = Rng(100 + r);
    rows.push_back(row);
  }
  const auto on_host = [&](const std::string& policy, float knob, std::vector<UnmaskRow>& rs, bool* chosen) {
    gpu::with_policy(policy, knob, [&]<class P>(const P& p) {
      Kernel<backend::Host, op::Unmask<P>>::run(p, candidates.data(), rs, chosen);
    });
  };
  const std::vector<std::pair<std::string, float>> policies = {
      {"threshold", 0.9f}, {"threshold", 0.5f}, {"topk", 3}, {"scheduled", 8}, {"margin", 0.4f},
      {"entropy", 0.6f},   {"entropy-bounded", 1.5f},      {"factor", 1.0f}, {"random", 2}};
  for (const auto& [policy, knob] : policies) {
    INFO(policy, " ", knob);
    auto host_rows = rows, dev_rows = rows;
    bool host[51], dev[51];
    std::fill_n(host, 51, true);  // stale flags: cleared in every row, kept in the gap
    std::fill_n(dev, 51, true);
    on_host(policy, knob, host_rows, host);
    gpu::unmask(policy, knob, candidates, dev_rows, dev);
    int committed = 0;
    for (int i = 0; i < 51; ++i) {
      CHECK_MESSAGE(dev[i] == host[i], "candidate ", i);
      committed += host[i];
    }
    CHECK(host[6]);                                          // the gap kept its flag,
    CHECK(committed > static_cast<int>(spans.size()) + 1);  // and every row commits one at least
    for (std::size_t r = 0; r < rows.size(); ++r) CHECK(dev_rows[r].rng.next() == host_rows[r].rng.next());
  }
}

TEST_CASE("whole-model logits: CUDA == host on both golden models") {
  for (const char* name : {"model-f32-tied", "model-bf16-untied"}) {
    const auto dir = test::golden(name).string();
    auto m = model::Qwen2<backend::Host>::load(dir);
    std::vector<int> ids;
    for (int i = 0; i < 37; ++i) ids.push_back((i * 13 + 5) % 300);
    for (const char* mk : {"causal", "block-causal"}) {
      auto cache = m.make_cache(37);
      std::vector<model::ForwardRow<backend::Host>> rows(1);
      rows[0].tokens = ids;
      rows[0].cache = &cache;
      auto l = std::string(mk) == "causal" ? m.forward<mask::Causal>(rows) : m.forward<mask::BlockCausal<8>>(rows);
      std::vector<float> host(l.data(), l.data() + l.numel());
      INFO(name, " ", mk);
      CHECK(rel(gpu::logits(dir, ids, mk), host) < kTol);
    }
  }
}

TEST_CASE("log-likelihood scoring, first-token and causal: CUDA == host, shared prefixes, few-shot headers and batches") {
  const auto dir = test::golden("model-f32-tied").string();
  auto m = model::Qwen2<backend::Host>::load(dir);
  std::vector<int> shared;
  for (int i = 0; i < 21; ++i) shared.push_back((i * 13 + 5) % 300);
  std::vector<eval::ScoreRequest> requests;
  for (int c = 0; c < 4; ++c) requests.push_back({shared, {7 + c, 9, 11 + c}});  // one question's choices
  requests.push_back({{3, 4}, {5}});
  requests.push_back({std::vector<int>(shared.begin(), shared.begin() + 16), {40, 41}});  // on a block boundary
  for (int q = 0; q < 3; ++q) {  // questions after the same two blocks: their K/V copied between caches
    std::vector<int> prefix(shared.begin(), shared.begin() + 16);
    for (int i = 0; i < 10 + 3 * q; ++i) prefix.push_back((i * 7 + 31 * q + 2) % 300);
    requests.push_back({prefix, {20 + q}});
  }
  // A question a batch, with one cache or with four kept (copies from a cache no group of the
  // batch runs in), and all in one batch.
  for (bool causal : {false, true})
    for (auto [batch, caches] : {std::pair{1, 0}, {1, 4}, {16, 0}}) {
      const eval::ScoreOptions o{.mask_id = 319, .eos_id = 318, .batch = batch, .min_copy = 8, .caches = caches};
      const auto host = causal ? eval::causal_loglikelihood(m, requests, o) : eval::first_token_loglikelihood<8>(m, requests, o);
      const auto dev = gpu::score(dir, requests, o, causal);
      INFO((causal ? "causal" : "first-token"), ", batch ", batch, ", caches ", caches);
      CHECK(dev.forwards == host.forwards);
      CHECK(dev.positions == host.positions);
      for (std::size_t i = 0; i < requests.size(); ++i) {
        CHECK(std::fabs(dev.scores[i].loglikelihood - host.scores[i].loglikelihood) < 1e-3);
        CHECK(dev.scores[i].argmax == host.scores[i].argmax);
        CHECK(dev.scores[i].greedy == host.scores[i].greedy);
      }
    }
}

TEST_CASE("whole-model logits with BF16 weights: CUDA == host") {
  // The BF16 golden model held in BF16 on both backends. Up to 8 tokens every product runs in
  // f32 on both; more tokens take the tensor cores (blockdiff's kernel at 20 and 32 tokens,
  // cuBLAS at 37), which round the input of each of the 15 products to BF16 (2^-9 relative
  // each). Those errors add up through two layers; 2^-4 of the largest logit bounds them (seen
  // at 37: 0.040).
  const auto dir = test::golden("model-bf16-untied").string();
  auto m = model::Qwen2<backend::Host>::load(dir, DType::bf16);
  for (int n : {1, 5, 8, 20, 32, 37}) {
    std::vector<int> ids;
    for (int i = 0; i < n; ++i) ids.push_back((i * 13 + 5) % 300);
    auto cache = m.make_cache(n);
    std::vector<model::ForwardRow<backend::Host>> rows(1);
    rows[0].tokens = ids;
    rows[0].cache = &cache;
    auto l = m.forward<mask::BlockCausal<8>>(rows);
    std::vector<float> host(l.data(), l.data() + l.numel());
    const double err = rel(gpu::logits(dir, ids, "block-causal", true), host);
    INFO(n, " tokens: relative error ", err);
    CHECK(err < (n <= 8 ? kTol : std::ldexp(1.0, -4)));
  }
}

TEST_CASE("CUDA graphs: a replayed decode equals the directly launched one, and replays happen") {
  const auto dir = test::golden("model-f32-tied").string();
  std::vector<int> prompt{7, 20, 33, 46, 59, 72, 85, 98, 111};
  auto [direct, none] = gpu::ar_graphs(dir, prompt, 24, false);
  auto [replayed, launches] = gpu::ar_graphs(dir, prompt, 24, true);
  CHECK(none == 0);
  REQUIRE(direct.size() == 24);
  CHECK(replayed == direct);
  // A prefill, then 23 one-token steps that share one key: the first runs directly, the second
  // is recorded and launched, and the other 21 are launched.
  CHECK(launches == 22);
}

TEST_CASE("dependent launches change no result: logits and decodes with them == without") {
  // The same kernels in the same order, so the results must be equal to the bit; a kernel that
  // touched its inputs before waiting for the one before it would show here as a difference.
  bool supported = false;
  const bool before = gpu::use_dependent_launches(false, &supported);
  if (!supported) MESSAGE("compute capability below 9.0: dependent launches are not used, so this compares a run with itself");
  // The switch takes effect: a captured pair of kernels is joined by a programmatic edge with
  // it, and only with it.
  CHECK(gpu::programmatic_edges(false) == 0);
  if (supported) CHECK(gpu::programmatic_edges(true) == 1);
  auto both = [](auto&& run) {
    gpu::use_dependent_launches(false);
    auto off = run();
    gpu::use_dependent_launches(true);
    auto on = run();
    gpu::use_dependent_launches(false);
    return std::pair{off, on};
  };
  const auto f32 = test::golden("model-f32-tied").string(), bf = test::golden("model-bf16-untied").string();
  for (int n : {1, 8, 20, 37}) {
    std::vector<int> ids;
    for (int i = 0; i < n; ++i) ids.push_back((i * 13 + 5) % 300);
    INFO(n, " tokens");
    auto [off, on] = both([&] { return gpu::logits(f32, ids, "block-causal"); });
    CHECK(on == off);
    auto [off16, on16] = both([&] { return gpu::logits(bf, ids, "block-causal", true); });
    CHECK(on16 == off16);
  }
  const std::vector<int> prompt{7, 20, 33, 46, 59, 72, 85, 98, 111};
  for (const bool graphs : {false, true}) {
    INFO("graphs ", graphs);
    auto [off, on] = both([&] { return gpu::ar_graphs(f32, prompt, 24, graphs).first; });
    REQUIRE(off.size() == 24);
    CHECK(on == off);
  }
  std::vector<std::vector<int>> prompts{{41, 48, 55}, {7, 20, 33, 46, 59, 72, 85, 98}};
  auto [off, on] = both([&] { return gpu::generate(f32, prompts, "32/8", "threshold", "hierarchical", 0.9f, 40, 318, 319); });
  REQUIRE(on.size() == off.size());
  for (std::size_t r = 0; r < on.size(); ++r) {
    CHECK(on[r].tokens == off[r].tokens);
    CHECK(on[r].committed == off[r].committed);
  }
  auto [soff, son] = both([&] { return gpu::generate(f32, prompts, "8/4", "threshold", "block", 0.9f, 40, 318, 319, 1.0f, 0.9f, 5); });
  REQUIRE(son.size() == soff.size());
  for (std::size_t r = 0; r < son.size(); ++r) CHECK(son[r].tokens == soff[r].tokens);
  gpu::use_dependent_launches(before);
}

TEST_CASE("whole decodes: CUDA == host tokens and committed positions, policy x shape x cache, batched") {
  const auto dir = test::golden("model-f32-tied").string();
  using Model = model::Qwen2<backend::Host>;
  auto m = Model::load(dir);
  std::vector<std::vector<int>> prompts{{41, 48, 55}, {7, 20, 33, 46, 59, 72, 85, 98}, {1}};
  for (int i = 0; i < 17; ++i) prompts[2].push_back((i * 11 + 3) % 300);
  decode::DecodeOptions o;
  o.max_new_tokens = 40;
  o.mask_id = 319;
  o.eos_id = 318;
  auto host_run = [&]<class Shape, class Policy>(Policy p, const std::string& cache) {
    std::vector<decode::GenerateResult> r;
    if (cache == "none") r = decode::BlockDiffusionDecoder<Model, Shape, Policy, cache::None<>>(m, p).generate(prompts, o);
    if (cache == "block") r = decode::BlockDiffusionDecoder<Model, Shape, Policy, cache::Block<>>(m, p).generate(prompts, o);
    if (cache == "hierarchical") r = decode::BlockDiffusionDecoder<Model, Shape, Policy, cache::Hierarchical<>>(m, p).generate(prompts, o);
    return r;
  };
  auto compare = [&](const std::vector<decode::GenerateResult>& h, const std::vector<gpu::Decoded>& g) {
    REQUIRE(h.size() == g.size());
    for (std::size_t r = 0; r < h.size(); ++r) {
      CHECK(h[r].tokens == g[r].tokens);
      CHECK(h[r].trace.forwards == g[r].forwards);
      std::vector<std::vector<std::pair<int, int>>> hc;
      for (auto& s : h[r].trace.steps) hc.push_back(s.committed);
      CHECK(hc == g[r].committed);
    }
  };
  for (const char* cache : {"none", "block", "hierarchical"}) {
    for (float thr : {1.0f, 0.9f, 0.5f}) {
      INFO("threshold ", thr, " cache ", cache);
      compare(host_run.template operator()<BlockShape<8, 4>>(unmask::Threshold{thr}, cache),
              gpu::generate(dir, prompts, "8/4", "threshold", cache, thr, 40, 318, 319));
      compare(host_run.template operator()<BlockShape<16, 4>>(unmask::Threshold{thr}, cache),
              gpu::generate(dir, prompts, "16/4", "threshold", cache, thr, 40, 318, 319));
      compare(host_run.template operator()<BlockShape<32, 8>>(unmask::Threshold{thr}, cache),
              gpu::generate(dir, prompts, "32/8", "threshold", cache, thr, 40, 318, 319));
    }
  }
  INFO("other policies, block cache");
  compare(host_run.template operator()<BlockShape<8, 4>>(unmask::TopK{2}, "block"), gpu::generate(dir, prompts, "8/4", "topk", "block", 2, 40, 318, 319));
  compare(host_run.template operator()<BlockShape<8, 4>>(unmask::Margin{0.6f}, "block"), gpu::generate(dir, prompts, "8/4", "margin", "block", 0.6f, 40, 318, 319));
  compare(host_run.template operator()<BlockShape<8, 4>>(unmask::Entropy{0.5f}, "block"), gpu::generate(dir, prompts, "8/4", "entropy", "block", 0.5f, 40, 318, 319));
  compare(host_run.template operator()<BlockShape<8, 4>>(unmask::EntropyBounded{0.5f}, "block"), gpu::generate(dir, prompts, "8/4", "entropy-bounded", "block", 0.5f, 40, 318, 319));
  compare(host_run.template operator()<BlockShape<8, 4>>(unmask::Factor{1.0f}, "block"), gpu::generate(dir, prompts, "8/4", "factor", "block", 1.0f, 40, 318, 319));
  compare(host_run.template operator()<BlockShape<8, 4>>(unmask::Scheduled<>{4}, "block"), gpu::generate(dir, prompts, "8/4", "scheduled", "block", 4, 40, 318, 319));
  decode::ArOptions ao;
  ao.max_new_tokens = 30;
  std::vector<std::vector<int>> host_ar;
  for (auto& r : decode::ar_generate(m, prompts, ao)) host_ar.push_back(r.tokens);
  CHECK(host_ar == gpu::ar(dir, prompts, 30));
}

TEST_CASE("sampled decodes: CUDA == host tokens, with a nucleus and without") {
  const auto dir = test::golden("model-f32-tied").string();
  using Model = model::Qwen2<backend::Host>;
  auto m = Model::load(dir);
  std::vector<std::vector<int>> prompts{{41, 48, 55}, {7, 20, 33, 46, 59, 72, 85, 98}};
  decode::DecodeOptions o;
  o.max_new_tokens = 40;
  o.mask_id = 319;
  o.eos_id = 318;
  o.seed = 5;
  for (float top_p : {1.0f, 0.9f}) {
    INFO("top-p ", top_p);
    o.sampling = {1.0f, top_p};
    auto h = decode::BlockDiffusionDecoder<Model, BlockShape<8, 4>, unmask::Threshold, cache::Hierarchical<>>(
                 m, unmask::Threshold{0.9f}).generate(prompts, o);
    auto g = gpu::generate(dir, prompts, "8/4", "threshold", "hierarchical", 0.9f, 40, 318, 319, 1.0f, top_p, 5);
    REQUIRE(h.size() == g.size());
    for (std::size_t r = 0; r < h.size(); ++r) {
      CHECK(h[r].tokens == g[r].tokens);
      CHECK(h[r].trace.forwards == g[r].forwards);
    }
  }
}

int main(int argc, char** argv) {
  if (gpu::device_count() == 0) {
    std::printf("no CUDA device: the GPU parity tests are skipped\n");
    return 77;
  }
  doctest::Context context(argc, argv);
  return context.run();
}
