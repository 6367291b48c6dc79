// The largest of a set of errors, where an error that is not a number is the largest of all.
// `std::max(worst, e)` keeps `worst` when e is NaN (a NaN compares false), so a result that is not
// a number would pass every check of the largest error taken that way.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>

namespace blockdiff::test {

//! worst = max(worst, e), NaN winning: once a NaN is taken, worst stays NaN, and every
//! `worst < bound` check fails.
inline void take_largest(double& worst, double e) {
  if (!(e <= worst)) worst = e;
}

//! Whether |a − b| exceeds `bound`, a NaN difference counted as exceeding it.
inline bool beyond(double a, double b, double bound) { return !(std::fabs(a - b) <= bound); }

//! max |got − want| over max |want| (floored at 1e-30), element by element; NaN where any
//! difference is NaN, or where the two differ in size, so that every `< bound` check fails.
template <class Got, class Want>
double relative_error(const Got& got, const Want& want) {
  if (std::size(got) != std::size(want)) return std::numeric_limits<double>::quiet_NaN();
  double num = 0, den = 0;
  for (std::size_t i = 0; i < std::size(got); ++i) {
    const double g = static_cast<double>(got[i]), w = static_cast<double>(want[i]);
    take_largest(num, std::fabs(g - w));
    den = std::max(den, std::fabs(w));
  }
  return num / std::max(den, 1e-30);
}

}  // namespace blockdiff::test
