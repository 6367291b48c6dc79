// Every training backward against central finite differences, in double precision: the loss
// is a random linear functional Σ R ∘ forward(x), so the backward runs with dy = R.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <tuple>
#include <vector>

#include "../support/largest.hpp"
#include "blockdiff/core/rng.hpp"
#include "blockdiff/backend/mask.hpp"
#include "blockdiff/train/ops.hpp"

using namespace blockdiff;
namespace ops = blockdiff::train::ops;

namespace {

std::vector<double> random_vector(std::size_t n, std::uint64_t seed, double scale = 1.0) {
  Rng rng(seed);
  std::vector<double> v(n);
  for (auto& x : v) x = scale * rng.normal();
  return v;
}

double dot(const std::vector<double>& a, const std::vector<double>& b) {
  double s = 0;
  for (std::size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

// Checks `analytic` against (f(x + h e_i) − f(x − h e_i)) / 2h for every coordinate of x.
void check_gradient(std::vector<double>& x, const std::function<double()>& f, const std::vector<double>& analytic,
                    const char* what) {
  REQUIRE(analytic.size() == x.size());
  const double h = 1e-5;
  double worst = 0, scale = 1e-3;
  for (std::size_t i = 0; i < x.size(); ++i) {
    const double keep = x[i];
    x[i] = keep + h;
    const double up = f();
    x[i] = keep - h;
    const double down = f();
    x[i] = keep;
    const double numeric = (up - down) / (2 * h);
    test::take_largest(worst, std::fabs(numeric - analytic[i]));
    scale = std::max(scale, std::fabs(numeric));
  }
  INFO(what, ": max |analytic - numeric| = ", worst, " against gradients up to ", scale);
  CHECK(worst <= 1e-6 * scale);
}

}  // namespace

TEST_CASE("train/ops: linear backward (dx, dw, db) against finite differences") {
  const int n = 5, k = 7, m = 6;
  auto x = random_vector(n * k, 1), w = random_vector(m * k, 2), b = random_vector(m, 3), R = random_vector(n * m, 4);
  std::vector<double> y(n * m);
  auto f = [&] {
    ops::linear_forward(x.data(), n, k, w.data(), m, b.data(), y.data());
    return dot(y, R);
  };
  std::vector<double> dx(n * k), dw(m * k, 0.0), db(m, 0.0);
  ops::linear_backward(R.data(), x.data(), n, k, w.data(), m, dx.data(), dw.data(), db.data());
  check_gradient(x, f, dx, "dx");
  check_gradient(w, f, dw, "dw");
  check_gradient(b, f, db, "db");
  // Accumulating forms add to what is there.
  std::vector<double> dx2(n * k, 1.0);
  ops::linear_backward(R.data(), x.data(), n, k, w.data(), m, dx2.data(), dw.data(), db.data(), true);
  for (int i = 0; i < n * k; ++i) CHECK(dx2[std::size_t(i)] == doctest::Approx(dx[std::size_t(i)] + 1.0));
}

TEST_CASE("train/ops: RMSNorm backward against finite differences") {
  const int n = 4, H = 8;
  auto x = random_vector(n * H, 5), w = random_vector(H, 6), R = random_vector(n * H, 7);
  std::vector<double> y(n * H), rstd(n);
  auto f = [&] {
    ops::rmsnorm_forward(x.data(), n, H, w.data(), 1e-6, y.data(), rstd.data());
    return dot(y, R);
  };
  f();
  std::vector<double> dx(n * H, 0.0), dw(H, 0.0), scratch(4 * H);
  ops::rmsnorm_backward(R.data(), x.data(), rstd.data(), n, H, w.data(), dx.data(), dw.data(), scratch.data(), 2);
  check_gradient(x, f, dx, "dx");
  check_gradient(w, f, dw, "dw");
}

TEST_CASE("train/ops: SwiGLU and embedding backward against finite differences") {
  const int n = 30;
  auto g = random_vector(n, 8, 2.0), u = random_vector(n, 9), R = random_vector(n, 10);
  std::vector<double> h(n);
  auto f = [&] {
    ops::swiglu_forward(g.data(), u.data(), n, h.data());
    return dot(h, R);
  };
  std::vector<double> dg(n), du(n);
  ops::swiglu_backward(R.data(), g.data(), u.data(), n, dg.data(), du.data());
  check_gradient(g, f, dg, "dgate");
  check_gradient(u, f, du, "dup");

  const int V = 5, H = 3;
  const std::vector<int> ids{1, 4, 1, 0};  // a repeated id accumulates
  auto table = random_vector(V * H, 11), Re = random_vector(ids.size() * H, 12);
  std::vector<double> x(ids.size() * H);
  auto fe = [&] {
    ops::embedding_forward(table.data(), ids.data(), int(ids.size()), H, x.data());
    return dot(x, Re);
  };
  std::vector<double> dtable(V * H, 0.0);
  ops::embedding_backward(Re.data(), ids.data(), int(ids.size()), H, dtable.data());
  check_gradient(table, fe, dtable, "dtable");
}

TEST_CASE("train/ops: RoPE's inverse is its transpose (the backward)") {
  const int n = 4, heads = 2, d = 8, half = d / 2;
  const std::vector<int> pos{0, 3, 3, 9};
  std::vector<double> cos(10 * half), sin(10 * half);
  for (int p = 0; p < 10; ++p)
    for (int i = 0; i < half; ++i) {
      cos[std::size_t(p * half + i)] = std::cos(p * std::pow(100.0, -double(i) / half));
      sin[std::size_t(p * half + i)] = std::sin(p * std::pow(100.0, -double(i) / half));
    }
  auto x = random_vector(n * heads * d, 13), R = random_vector(n * heads * d, 14);
  auto f = [&] {
    auto y = x;
    ops::rope(y.data(), n, heads, d, pos.data(), cos.data(), sin.data());
    return dot(y, R);
  };
  auto dx = R;
  ops::rope(dx.data(), n, heads, d, pos.data(), cos.data(), sin.data(), /*inverse=*/true);
  check_gradient(x, f, dx, "dx");
}

TEST_CASE_TEMPLATE("train/ops: attention backward against finite differences, per mask kind", Mask, mask::Causal,
                   mask::Full, mask::BlockCausal<4>, mask::BlockDiffusionTraining<4>) {
  const int rows = 2, S = 16, heads = 4, kv_heads = 2, d = 4;
  const ops::AttentionDims dims{rows, S, heads, kv_heads, d};
  Mask mask{};
  if constexpr (std::is_same_v<Mask, mask::BlockDiffusionTraining<4>>) mask.length = S / 2;
  std::vector<unsigned char> allowed(S * S);
  ops::fill_mask(mask, S, allowed.data());
  // The matrix is the mask's own predicate: spot-check one pair per rule against §2.4 by hand.
  if constexpr (std::is_same_v<Mask, mask::BlockDiffusionTraining<4>>) {
    CHECK(allowed[1 * S + 3] == 1);       // x_t block 0 sees x_t block 0 (block-diagonal)
    CHECK(allowed[5 * S + 8 + 2] == 1);   // x_t block 1 sees x_0 block 0 (offset block-causal)
    CHECK(allowed[5 * S + 8 + 5] == 0);   // ... but not x_0 block 1
    CHECK(allowed[12 * S + 1] == 0);      // x_0 never sees x_t
  }
  const double scale = 1.0 / std::sqrt(double(d));
  auto q = random_vector(rows * S * heads * d, 15), k = random_vector(rows * S * kv_heads * d, 16),
       v = random_vector(rows * S * kv_heads * d, 17), R = random_vector(rows * S * heads * d, 18);
  std::vector<double> out(q.size()), lse(rows * heads * S), scratch(2 * 2 * S * S * 8);
  auto f = [&] {
    ops::attention_forward(q.data(), k.data(), v.data(), dims, allowed.data(), scale, out.data(), lse.data(),
                           scratch.data());
    return dot(out, R);
  };
  f();
  // The forward itself against a direct softmax for one (row, head, query).
  {
    const int r = 1, h = 3, i = 5, kh = h / 2;
    std::vector<double> p(S, 0.0);
    double mx = -1e300, sum = 0;
    for (int j = 0; j < S; ++j)
      if (mask.allowed(i, j)) {
        double s = 0;
        for (int c = 0; c < d; ++c)
          s += q[std::size_t(((r * S + i) * heads + h) * d + c)] * k[std::size_t(((r * S + j) * kv_heads + kh) * d + c)];
        p[std::size_t(j)] = s * scale;
        mx = std::max(mx, s * scale);
      }
    for (int j = 0; j < S; ++j) p[std::size_t(j)] = mask.allowed(i, j) ? std::exp(p[std::size_t(j)] - mx) : 0.0;
    for (double e : p) sum += e;
    for (int c = 0; c < d; ++c) {
      double o = 0;
      for (int j = 0; j < S; ++j) o += p[std::size_t(j)] / sum * v[std::size_t(((r * S + j) * kv_heads + kh) * d + c)];
      CHECK(out[std::size_t(((r * S + i) * heads + h) * d + c)] == doctest::Approx(o).epsilon(1e-12));
    }
  }
  std::vector<double> dq(q.size()), dk(k.size()), dv(v.size());
  ops::attention_backward(R.data(), q.data(), k.data(), v.data(), out.data(), lse.data(), dims, allowed.data(), scale,
                          dq.data(), dk.data(), dv.data(), scratch.data());
  check_gradient(q, f, dq, "dq");
  check_gradient(k, f, dk, "dk");
  check_gradient(v, f, dv, "dv");
}

TEST_CASE("train/ops: cross-entropy with the lm_head, loss and gradients") {
  const int n = 3, H = 4, V = 7;
  auto x = random_vector(n * H, 19), head = random_vector(V * H, 20);
  const std::vector<int> labels{2, 6, 2};
  std::vector<double> logits(n * V);
  const double weight = 1.0 / n;
  // The mean loss; the gradients below are of weight · sum = the mean.
  auto f = [&] {
    return weight * ops::cross_entropy_head(x.data(), n, H, head.data(), V, labels.data(), weight, logits.data(),
                                            static_cast<double*>(nullptr), static_cast<double*>(nullptr));
  };
  // The loss against −log softmax written out.
  double expect = 0;
  for (int i = 0; i < n; ++i) {
    std::vector<double> z(V);
    for (int j = 0; j < V; ++j)
      for (int c = 0; c < H; ++c) z[std::size_t(j)] += x[std::size_t(i * H + c)] * head[std::size_t(j * H + c)];
    double sum = 0;
    for (double zj : z) sum += std::exp(zj);
    expect += -std::log(std::exp(z[std::size_t(labels[std::size_t(i)])]) / sum) / n;
  }
  CHECK(f() == doctest::Approx(expect).epsilon(1e-12));
  std::vector<double> dx(n * H), dhead(V * H, 0.0);
  ops::cross_entropy_head(x.data(), n, H, head.data(), V, labels.data(), weight, logits.data(), dx.data(), dhead.data());
  check_gradient(x, f, dx, "dx");
  check_gradient(head, f, dhead, "dhead");
}

TEST_CASE("train/ops: gemm in each transpose, threaded over rows, and accumulating, against a naive loop") {
  // 100 rows of 150 · 300: enough work that the rows are split over the threads (in multiples of
  // 16, the last range short); and a product too small to be split.
  for (const auto& [M, N, K] : {std::tuple{100, 150, 300}, std::tuple{5, 7, 3}})
    for (const bool ta : {false, true})
      for (const bool tb : {false, true}) {
        CAPTURE(M);
        CAPTURE(ta);
        CAPTURE(tb);
        const auto a = random_vector(std::size_t(M) * K, 40), b = random_vector(std::size_t(K) * N, 41);
        const auto c0 = random_vector(std::size_t(M) * N, 42);
        const std::int64_t lda = ta ? M : K, ldb = tb ? K : N;
        std::vector<double> ref(c0.size());
        for (int i = 0; i < M; ++i)
          for (int j = 0; j < N; ++j) {
            double s = 0;
            for (int p = 0; p < K; ++p) s += a[std::size_t(ta ? p * lda + i : i * lda + p)] * b[std::size_t(tb ? j * ldb + p : p * ldb + j)];
            ref[std::size_t(i) * N + j] = s;
          }
        auto c = c0;
        ops::gemm<double>(ta, tb, M, N, K, a.data(), lda, b.data(), ldb, false, c.data(), N);
        double worst = 0;
        for (std::size_t i = 0; i < c.size(); ++i) test::take_largest(worst, std::fabs(c[i] - ref[i]));
        CHECK(worst < 1e-12 * K);
        c = c0;
        ops::gemm<double>(ta, tb, M, N, K, a.data(), lda, b.data(), ldb, true, c.data(), N);
        worst = 0;
        for (std::size_t i = 0; i < c.size(); ++i) test::take_largest(worst, std::fabs(c[i] - c0[i] - ref[i]));
        CHECK(worst < 1e-12 * K);
      }
}

TEST_CASE("train/ops: gather_rows picks rows by index, scatter_add_rows adds them back, a repeated index twice") {
  const int H = 3;
  const auto src = random_vector(5 * H, 43);
  const std::vector<std::int64_t> index{4, 0, 4, 2};
  std::vector<double> gathered(index.size() * H);
  ops::gather_rows(src.data(), index.data(), std::int64_t(index.size()), H, gathered.data());
  for (std::size_t i = 0; i < index.size(); ++i)
    for (int j = 0; j < H; ++j) CHECK(gathered[i * H + std::size_t(j)] == src[std::size_t(index[i]) * H + std::size_t(j)]);
  auto dst = random_vector(5 * H, 44);
  const auto before = dst;
  ops::scatter_add_rows(gathered.data(), index.data(), std::int64_t(index.size()), H, dst.data());
  for (int r = 0; r < 5; ++r) {
    const double times = double(std::count(index.begin(), index.end(), r));  // row 4 twice, 1 and 3 never
    for (int j = 0; j < H; ++j) {
      const std::size_t at = std::size_t(r) * H + std::size_t(j);
      CHECK(dst[at] == doctest::Approx(before[at] + times * src[at]));
    }
  }
}
