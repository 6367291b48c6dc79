// parallel_for and parallel_team: every index exactly once, on the threads they promise, and no
// OpenMP region at all when the work is not worth one.
#include <doctest/doctest.h>

#include <atomic>
#include <vector>

#include "blockdiff/core/threads.hpp"

#if defined(_OPENMP)
#include <omp.h>
#endif

using namespace blockdiff;

namespace {
// Regions entered around the caller, inactive ones (an `if` clause that was false) included.
int region_level() {
#if defined(_OPENMP)
  return omp_get_level();
#else
  return 0;
#endif
}

template <Schedule S>
void check_each_index_once(std::int64_t n, bool worth_threads) {
  CAPTURE(n);
  CAPTURE(worth_threads);
  std::vector<std::atomic<int>> seen(static_cast<std::size_t>(n));
  std::atomic<int> in_region{0}, teams{1};
  parallel_for<S>(n, worth_threads, [&](std::int64_t i) {
    seen[static_cast<std::size_t>(i)].fetch_add(1);
    if (region_level() > 0) in_region.store(1);
    teams.store(thread_count());
  });
  for (std::int64_t i = 0; i < n; ++i) CHECK(seen[static_cast<std::size_t>(i)].load() == 1);
  // Not worth threads: the body runs in the caller, outside any region, even an inactive one.
  if (!worth_threads) CHECK(in_region.load() == 0);
  // Worth it, with more than one thread to use and more than one index: a real team.
  if (worth_threads && n > 1 && max_threads() > 1) CHECK(teams.load() == max_threads());
}
}  // namespace

TEST_CASE("parallel_for visits every index once, in a team only when the work is worth one") {
  for (std::int64_t n : {0, 1, 2, 7, 1000}) {
    for (bool worth : {false, true}) {
      check_each_index_once<Schedule::even>(n, worth);
      check_each_index_once<Schedule::dynamic>(n, worth);
    }
  }
}

TEST_CASE("parallel_team calls the body once per thread with its index, or once in the caller") {
  for (bool worth : {false, true}) {
    CAPTURE(worth);
    const int expected = worth ? max_threads() : 1;
    std::vector<std::atomic<int>> calls(static_cast<std::size_t>(max_threads()));
    std::atomic<int> team_size{0}, in_region{0};
    parallel_team(worth, [&](int t, int nt) {
      calls[static_cast<std::size_t>(t)].fetch_add(1);
      team_size.store(nt);
      if (region_level() > 0) in_region.store(1);
    });
    CHECK(team_size.load() == expected);
    if (!worth) CHECK(in_region.load() == 0);
    for (int t = 0; t < max_threads(); ++t) CHECK(calls[static_cast<std::size_t>(t)].load() == (t < expected ? 1 : 0));
  }
}
