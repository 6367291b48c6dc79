// The optimiser against its definitions: the learning-rate schedule at hand-worked steps, AdamW
// (decoupled weight decay, bias-corrected moments) against a transcription of Loshchilov &
// Hutter's algorithm in f64, and global-norm clipping.
#include <doctest/doctest.h>

#include <cmath>
#include <vector>

#include "../support/check_error.hpp"
#include "blockdiff/train/optimizer.hpp"

using namespace blockdiff;

TEST_CASE("train/optimizer: the learning rate warms up linearly, then holds or follows a cosine to min_ratio") {
  train::LrSchedule lr;
  lr.peak = 1e-3;
  lr.warmup = 2;
  lr.total = 6;
  // Warmup: peak · (s + 1) / warmup, so the first step is not at rate 0.
  CHECK(lr.at(0) == doctest::Approx(0.5e-3));
  CHECK(lr.at(1) == doctest::Approx(1e-3));
  for (int s = 2; s < 6; ++s) CHECK(lr.at(s) == doctest::Approx(1e-3));  // constant
  lr.decay = train::LrSchedule::Decay::cosine;
  lr.min_ratio = 0.1;
  // After warmup, progress p = (s − 2) / 4 and rate peak · (0.1 + 0.9 · (1 + cos πp) / 2):
  // p = 0, 1/4, 1/2, 3/4 give 1, 0.1 + 0.45 · (1 + √½), 0.55, 0.1 + 0.45 · (1 − √½).
  CHECK(lr.at(0) == doctest::Approx(0.5e-3));
  CHECK(lr.at(2) == doctest::Approx(1e-3));
  CHECK(lr.at(3) == doctest::Approx(0.86819805e-3));
  CHECK(lr.at(4) == doctest::Approx(0.55e-3));
  CHECK(lr.at(5) == doctest::Approx(0.23180195e-3));
  lr.warmup = 0;  // the cosine starts at the first step
  CHECK(lr.at(0) == doctest::Approx(1e-3));
  CHECK(lr.at(3) == doctest::Approx(0.55e-3));
  lr.warmup = 6;  // a run that is all warmup
  CHECK_NOTHROW(lr.validate());
  CHECK(lr.at(5) == doctest::Approx(1e-3));
  lr.warmup = 7;
  CHECK_ERROR(lr.validate(), "warmup 7 must be within [0, 6] steps");
}

TEST_CASE("train/optimizer: AdamW equals the algorithm in f64, weight decay on the given ranges only") {
  // Five parameters, [1, 3) decayed; four steps of hand-picked gradients (a zero among them,
  // and a sign change) at a changing rate.
  const std::vector<double> start{0.5, -1.25, 2.0, 0.75, -0.3};
  const std::vector<std::vector<double>> grads{{0.1, -0.2, 0.3, 0.0, 1.5},
                                               {-0.05, 0.4, 0.3, 0.2, -1.0},
                                               {0.0, 0.0, -0.6, 0.2, 0.25},
                                               {0.3, 0.1, 0.05, -0.4, 0.0}};
  const std::vector<double> rates{1e-2, 2e-2, 2e-2, 5e-3};
  train::AdamWOptions o;
  o.beta1 = 0.9, o.beta2 = 0.95, o.eps = 1e-3, o.weight_decay = 0.5;  // eps and decay large enough to show

  train::AdamW<float> adam(start.size(), o);
  adam.set_decay_ranges({{1, 2}});
  std::vector<float> p(start.begin(), start.end());

  // The algorithm (decoupled weight decay; Adam's bias-corrected moments), one parameter at a time.
  std::vector<double> ref = start, m(start.size(), 0.0), v(start.size(), 0.0);
  for (std::size_t t = 0; t < grads.size(); ++t) {
    const double lr = rates[t];
    for (std::size_t i = 0; i < ref.size(); ++i) {
      const double g = grads[t][i];
      if (i == 1 || i == 2) ref[i] -= lr * o.weight_decay * ref[i];
      m[i] = o.beta1 * m[i] + (1 - o.beta1) * g;
      v[i] = o.beta2 * v[i] + (1 - o.beta2) * g * g;
      const double m_hat = m[i] / (1 - std::pow(o.beta1, double(t + 1)));
      const double v_hat = v[i] / (1 - std::pow(o.beta2, double(t + 1)));
      ref[i] -= lr * m_hat / (std::sqrt(v_hat) + o.eps);
    }
    const std::vector<float> g(grads[t].begin(), grads[t].end());
    adam.update(p, g, lr);
    CHECK(adam.steps() == std::int64_t(t + 1));
    for (std::size_t i = 0; i < ref.size(); ++i) {
      CAPTURE(t);
      CAPTURE(i);
      CHECK(p[i] == doctest::Approx(ref[i]).epsilon(1e-6));
      CHECK(adam.first_moment()[i] == doctest::Approx(m[i]).epsilon(1e-6));  // sums of both signs: absolute
      CHECK(adam.second_moment()[i] == doctest::Approx(v[i]).epsilon(1e-6).scale(1e-6));  // of squares: relative
    }
  }
}

TEST_CASE("train/optimizer: clipping scales the gradients to the norm, only when above it, and returns the norm before") {
  std::vector<float> g{3.0f, 0.0f, -4.0f};
  CHECK(train::clip_global_norm<float>(std::span<float>(g), 10.0) == doctest::Approx(5.0));
  CHECK(g == std::vector<float>{3.0f, 0.0f, -4.0f});
  CHECK(train::clip_global_norm<float>(std::span<float>(g), 5.0) == doctest::Approx(5.0));  // at the bound: kept
  CHECK(g == std::vector<float>{3.0f, 0.0f, -4.0f});
  CHECK(train::clip_global_norm<float>(std::span<float>(g), 0.0) == doctest::Approx(5.0));  // 0: off
  CHECK(g == std::vector<float>{3.0f, 0.0f, -4.0f});
  CHECK(train::clip_global_norm<float>(std::span<float>(g), 1.0) == doctest::Approx(5.0));
  CHECK(g[0] == doctest::Approx(0.6));
  CHECK(g[1] == 0.0f);
  CHECK(g[2] == doctest::Approx(-0.8));
  CHECK(train::global_norm<float>(std::span<const float>(g)) == doctest::Approx(1.0));
}
