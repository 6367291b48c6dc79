// Noise schedules: t in [0, 1] -> the probability that a token is masked.
//
// Training draws t per block and masks each position with probability mask_prob(t) (§2.2: the
// paper's Linear with eps = 1e-3). Step-scheduled decoding (Scheduled<NoiseSchedule>) uses the
// same function to decide how many tokens to reveal at step s of n, as LLaDA and Dream do.
// Fast-dLLM v2 itself uses no schedule at inference (§3.3).
#pragma once

#include <cmath>
#include <concepts>
#include <string>

#include "blockdiff/core/description.hpp"
#include "blockdiff/core/error.hpp"
#include "blockdiff/core/macros.hpp"
#include "blockdiff/policy/kind.hpp"

namespace blockdiff {

template <class S>
concept NoiseSchedule = PolicyOfKind<S, kind::noise_schedule> && requires(const S& s, float t) {
  { s.mask_prob(t) } -> std::convertible_to<float>;
  { S::name } -> std::convertible_to<const char*>;
};

namespace schedule {

//! The eps of Linear and LogLinear unless given: the paper's 1e-3.
inline constexpr float default_eps = 1e-3f;

//! A schedule with an eps, described as a run records it: its name, and eps where it is off the
//! default ("linear (eps 0.01)").
inline std::string describe_eps(const char* name, float eps) {
  return eps == default_eps ? std::string(name) : ::blockdiff::detail::concat(name, " (eps ", eps, ")");
}

//! The paper's schedule: p = (1 - eps) t + eps, so even t = 0 masks with probability eps.
struct Linear {
  using policy_kind = kind::noise_schedule;
  static constexpr const char* name = "linear";
  float eps = default_eps;
  BLOCKDIFF_HOST_DEVICE float mask_prob(float t) const { return (1.0f - eps) * t + eps; }
  std::string describe() const { return describe_eps(name, eps); }
};

//! MDLM / BD3-LM's log-linear noise: sigma(t) = -log(1 - (1 - eps) t), so p = 1 - e^-sigma = (1 - eps) t.
struct LogLinear {
  using policy_kind = kind::noise_schedule;
  static constexpr const char* name = "loglinear";
  float eps = default_eps;
  BLOCKDIFF_HOST_DEVICE float mask_prob(float t) const {
    const float sigma = -std::log1p(-(1.0f - eps) * t);
    return -std::expm1(-sigma);
  }
  std::string describe() const { return describe_eps(name, eps); }
};

//! p = 1 - cos(pi t / 2): few masks early, many late.
struct Cosine {
  using policy_kind = kind::noise_schedule;
  static constexpr const char* name = "cosine";
  BLOCKDIFF_HOST_DEVICE float mask_prob(float t) const { return 1.0f - std::cos(1.5707963267948966f * t); }
};

//! p = t^2.
struct Square {
  using policy_kind = kind::noise_schedule;
  static constexpr const char* name = "square";
  BLOCKDIFF_HOST_DEVICE float mask_prob(float t) const { return t * t; }
};

//! p = sqrt(t).
struct SquareRoot {
  using policy_kind = kind::noise_schedule;
  static constexpr const char* name = "sqrt";
  BLOCKDIFF_HOST_DEVICE float mask_prob(float t) const { return std::sqrt(t); }
};

//! BD3-LM's clipped schedules: t is drawn from [lo, hi] instead of [0, 1].
template <NoiseSchedule Base>
struct Clipped {
  using policy_kind = kind::noise_schedule;
  static constexpr const char* name = "clipped";
  float lo = 0.3f, hi = 0.8f;
  Base base{};
  BLOCKDIFF_HOST_DEVICE float mask_prob(float t) const { return base.mask_prob(lo + (hi - lo) * t); }
  std::string describe() const {
    return ::blockdiff::detail::concat(name, " [", lo, ", ", hi, "] of ", ::blockdiff::description(base));
  }
};

}  // namespace schedule

static_assert(NoiseSchedule<schedule::Linear>);
static_assert(NoiseSchedule<schedule::LogLinear>);
static_assert(NoiseSchedule<schedule::Cosine>);
static_assert(NoiseSchedule<schedule::Square>);
static_assert(NoiseSchedule<schedule::SquareRoot>);
static_assert(NoiseSchedule<schedule::Clipped<schedule::Linear>>);

}  // namespace blockdiff
