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
#include "blockdiff/train/ops.hpp"

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

//! √(Σ g²) over every gradient (in `Backend`'s memory).
template <class T, class Backend = backend::Host>
double global_norm(std::span<const T> g) {
  return std::sqrt(ops::Ops<Backend>::sum_squares(g.data(), g.size()));
}

//! Scales `g` so that its global norm is at most `max_norm` (0 = off); returns the norm before.
template <class T, class Backend = backend::Host>
double clip_global_norm(std::span<T> g, double max_norm) {
  const double norm = global_norm<T, Backend>(g);
  if (max_norm > 0 && norm > max_norm) ops::Ops<Backend>::scale(g.data(), g.size(), T(max_norm / (norm + 1e-6)));
  return norm;
}

struct AdamWOptions {
  double beta1 = 0.9, beta2 = 0.95, eps = 1e-8, weight_decay = 0.1;
};

//! AdamW with its moments in `Backend`'s memory (the parameters and gradients it updates live
//! there too).
template <class T, class Backend = backend::Host>
class AdamW {
  using Ops = ops::Ops<Backend>;

 public:
  using Options = AdamWOptions;

  AdamW() = default;
  AdamW(std::size_t n, Options o) : options_(o) {
    for (auto* b : {&m_, &v_}) {
      b->resize({std::int64_t(n)});
      Ops::zero(b->data(), n);
    }
  }

  //! The (offset, count) ranges, in increasing order, that get weight decay: the trainer passes
  //! the matrices; norms and biases get none (the usual choice; the paper does not say).
  void set_decay_ranges(std::vector<std::pair<std::size_t, std::size_t>> ranges) { decay_ = std::move(ranges); }
  const Options& options() const { return options_; }
  std::int64_t steps() const { return t_; }
  std::span<T> first_moment() { return {m_.data(), size()}; }
  std::span<T> second_moment() { return {v_.data(), size()}; }
  void set_steps(std::int64_t t) { t_ = t; }

  //! One update of `params` with `grads` at learning rate `lr`.
  void update(std::span<T> params, std::span<const T> grads, double lr) {
    require(params.size() == size() && grads.size() == size(), "AdamW: ", params.size(), " parameters and ",
            grads.size(), " gradients for an optimiser of ", size());
    ++t_;
    const double b1 = options_.beta1, b2 = options_.beta2;
    const double c1 = 1.0 - std::pow(b1, double(t_)), c2 = 1.0 - std::pow(b2, double(t_));
    const ops::AdamWStep<T> step{T(b1), T(b2), T(lr / c1), T(1.0 / std::sqrt(c2)), T(options_.eps),
                            T(1.0 - lr * options_.weight_decay)};
    auto body = [&](std::size_t begin, std::size_t end, bool decay) {
      Ops::adamw(params.data(), grads.data(), m_.data(), v_.data(), begin, end, step, decay);
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
  std::size_t size() const { return std::size_t(m_.numel()); }
  Options options_{};
  typename Ops::template buffer<T> m_, v_;
  std::vector<std::pair<std::size_t, std::size_t>> decay_;
  std::int64_t t_ = 0;
};

}  // namespace blockdiff::train
