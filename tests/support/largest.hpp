// The largest of a set of errors, where an error that is not a number is the largest of all.
// `std::max(worst, e)` keeps `worst` when e is NaN (a NaN compares false), so a result that is not
// a number would pass every check of the largest error taken that way.
#pragma once

#include <cmath>

namespace blockdiff::test {

//! worst = max(worst, e), NaN winning: once a NaN is taken, worst stays NaN, and every
//! `worst < bound` check fails.
inline void take_largest(double& worst, double e) {
  if (!(e <= worst)) worst = e;
}

//! Whether |a − b| exceeds `bound`, a NaN difference counted as exceeding it.
inline bool beyond(double a, double b, double bound) { return !(std::fabs(a - b) <= bound); }

}  // namespace blockdiff::test
