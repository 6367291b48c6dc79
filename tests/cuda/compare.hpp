// What the CUDA parity tests share: seeded normal operands, and the error of a device result
// relative to the largest value of the host's.
#pragma once

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "../support/largest.hpp"
#include "blockdiff/core/rng.hpp"

namespace blockdiff::test {

//! n values ~ N(0, scale²), from `seed`.
inline std::vector<float> randn(std::size_t n, std::uint64_t seed, double scale = 1.0) {
  Rng r(seed);
  std::vector<float> v(n);
  for (auto& x : v) x = static_cast<float>(scale * r.normal());
  return v;
}

//! max |a − b| over max |b|; NaN where any difference is NaN.
inline double rel(const std::vector<float>& a, const std::vector<float>& b) {
  REQUIRE(a.size() == b.size());
  double num = 0, den = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    take_largest(num, static_cast<double>(std::fabs(a[i] - b[i])));
    den = std::max(den, static_cast<double>(std::fabs(b[i])));
  }
  return num / std::max(den, 1e-30);
}

}  // namespace blockdiff::test
