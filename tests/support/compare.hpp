// What the kernel tests share: seeded normal operands, and the error of a result relative to the
// largest value of its reference (a naive loop's, or the host's for a device result).
#pragma once

#include <doctest/doctest.h>

#include <cstdint>
#include <vector>

#include "largest.hpp"
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
  return relative_error(a, b);
}

}  // namespace blockdiff::test
