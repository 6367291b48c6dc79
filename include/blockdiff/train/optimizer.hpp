// AdamW with decoupled weight decay and bias correction, the learning-rate schedule (linear
// warmup, then constant or cosine decay), and clipping by the global gradient norm.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "blockdiff/core/error.hpp"

namespace blockdiff::train {

struct LrSchedule {
  enum class Decay { constant, cosine };
  double peak = 1e-3;
  int warmup = 0;           //!< steps of linear warmup from peak / warmup to peak
  int total = 1;            //!< steps of the whole run (cosine decays to min_ratio · peak at the end)
  Decay decay = Decay::constant;
  double min_ratio = 0.1;

  void validate() const {
    require(std::isfinite(peak) && peak > 0 && peak < 1, "learning rate ", peak, " makes no sense (expected 0 < lr < 1)");
    require(total > 0, "the step count must be positive, got ", total);
    require(warmup >= 0 && warmup <= total, "warmup ", warmup, " must be within [0, ", total, "] steps");
    require(min_ratio >= 0 && min_ratio <= 1, "min_ratio ", min_ratio, " must be within [0, 1]");
  }
  //! The rate of step `s` (0-based).
  double at(int s) const {
    if (s < warmup) return peak * double(s + 1) / double(warmup);
    if (decay == Decay::constant || total <= warmup) return peak;
    const double progress = double(s - warmup) / double(std::max(1, total - warmup));
    return peak * (min_ratio + (1 - min_ratio) * 0.5 * (1 + std::cos(3.141592653589793 * progress)));
  }
};

//! √(Σ g²) over every gradient.
template <class T>
double global_norm(std::span<const T> g) {
  double s = 0.0;
#pragma omp parallel for reduction(+ : s) schedule(static) if (g.size() > 65536)
  for (std::size_t i = 0; i < g.size(); ++i) s += double(g[i]) * double(g[i]);
  return std::sqrt(s);
}

//! Scales `g` so that its global norm is at most `max_norm` (0 = off); returns the norm before.
template <class T>
double clip_global_norm(std::span<T> g, double max_norm) {
  const double norm = global_norm<T>(g);
  if (max_norm > 0 && norm > max_norm) {
    const T s = T(max_norm / (norm + 1e-6));
    for (auto& v : g) v *= s;
  }
  return norm;
}

template <class T>
class AdamW {
 public:
  struct Options {
    double beta1 = 0.9, beta2 = 0.95, eps = 1e-8, weight_decay = 0.1;
  };

  AdamW() = default;
  AdamW(std::size_t n, Options o) : options_(o), m_(n, T(0)), v_(n, T(0)) {}

  //! The (offset, count) ranges, in increasing order, that get weight decay: the trainer passes
  //! the matrices; norms and biases get none (the usual choice; the paper does not say).
  void set_decay_ranges(std::vector<std::pair<std::size_t, std::size_t>> ranges) { decay_ = std::move(ranges); }
  const Options& options() const { return options_; }
  std::int64_t steps() const { return t_; }
  std::span<T> first_moment() { return m_; }
  std::span<T> second_moment() { return v_; }
  void set_steps(std::int64_t t) { t_ = t; }

  //! One update of `params` with `grads` at learning rate `lr`.
  void update(std::span<T> params, std::span<const T> grads, double lr) {
    require(params.size() == m_.size() && grads.size() == m_.size(), "AdamW: ", params.size(), " parameters and ",
            grads.size(), " gradients for an optimiser of ", m_.size());
    ++t_;
    const double b1 = options_.beta1, b2 = options_.beta2;
    const double c1 = 1.0 - std::pow(b1, double(t_)), c2 = 1.0 - std::pow(b2, double(t_));
    const T step = T(lr / c1), rc2 = T(1.0 / std::sqrt(c2)), eps = T(options_.eps);
    const T tb1 = T(b1), tb2 = T(b2);
    const T shrink = T(1.0 - lr * options_.weight_decay);
    auto body = [&](std::size_t begin, std::size_t end, bool decay) {
#pragma omp parallel for schedule(static) if (end - begin > 65536)
      for (std::size_t i = begin; i < end; ++i) {
        const T g = grads[i];
        m_[i] = tb1 * m_[i] + (T(1) - tb1) * g;
        v_[i] = tb2 * v_[i] + (T(1) - tb2) * g * g;
        T p = decay ? params[i] * shrink : params[i];
        params[i] = p - step * m_[i] / (std::sqrt(v_[i]) * rc2 + eps);
      }
    };
    std::size_t at = 0;
    for (auto [begin, count] : decay_) {
      body(at, begin, false);
      body(begin, begin + count, true);
      at = begin + count;
    }
    body(at, params.size(), false);
  }

 private:
  Options options_{};
  std::vector<T> m_, v_;
  std::vector<std::pair<std::size_t, std::size_t>> decay_;
  std::int64_t t_ = 0;
};

}  // namespace blockdiff::train
