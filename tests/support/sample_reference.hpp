// op::Sample's definition computed plainly, the reference that the tests and bench_components
// hold the host's draws to: every probability in f64 (a NaN logit has none), all tokens sorted
// stably by probability when a nucleus is cut, the cut, the draw.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <functional>
#include <limits>
#include <numeric>
#include <span>
#include <vector>

namespace blockdiff::test {

struct SampleDistribution {
  std::vector<double> p;
  std::vector<int> order;  //!< the walking order of the kept tokens
  double mass = 1.0, entropy = 0.0, second = 0.0;

  SampleDistribution(std::span<const float> l, float temperature, float top_p) : p(l.size()) {
    float m = -std::numeric_limits<float>::infinity();
    for (float x : l)
      if (x > m) m = x;
    double sum = 0;
    for (std::size_t i = 0; i < l.size(); ++i)
      sum += p[i] = std::isnan(l[i]) ? 0.0 : std::exp((double(l[i]) - m) / temperature);
    for (auto& x : p) {
      x /= sum;
      if (x > 0) entropy -= x * std::log(x);
    }
    std::vector<double> sorted_p = p;
    std::nth_element(sorted_p.begin(), sorted_p.begin() + 1, sorted_p.end(), std::greater<>());
    second = sorted_p[1];
    order.resize(p.size());
    std::iota(order.begin(), order.end(), 0);
    if (top_p < 1.0f) {
      std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return p[a] > p[b]; });
      mass = 0;
      std::size_t kept = 0;
      while (kept < order.size() && !(mass > top_p)) mass += p[order[kept++]];
      order.resize(kept);
    }
  }
  //! The token drawn at u in [0, 1).
  int draw(double u) const {
    double acc = 0;
    for (int t : order)
      if (u * mass < (acc += p[t])) return t;
    for (auto t = order.rbegin(); t != order.rend(); ++t)  // rounding: the last that can be drawn
      if (p[*t] > 0) return *t;
    return order.front();
  }
};

}  // namespace blockdiff::test
