// The OpenMP thread of the caller and the size of its team, with or without OpenMP, and the loops
// that split work over the threads only where it pays.
#pragma once

#include <cstdint>

#if defined(_OPENMP)
#include <omp.h>
#endif

namespace blockdiff {

//! This thread's index in the current parallel region (0 outside one, or without OpenMP).
inline int thread_index() {
#if defined(_OPENMP)
  return omp_get_thread_num();
#else
  return 0;
#endif
}

//! Threads in the current parallel region (1 outside one, or without OpenMP).
inline int thread_count() {
#if defined(_OPENMP)
  return omp_get_num_threads();
#else
  return 1;
#endif
}

//! Threads a parallel region started here would have.
inline int max_threads() {
#if defined(_OPENMP)
  return omp_get_max_threads();
#else
  return 1;
#endif
}

//! How parallel_for hands out indices: equal contiguous parts, or one at a time as threads free up.
enum class Schedule { even, dynamic };

//! Calls body(i) for every i in [0, n): over OpenMP's threads when `worth_threads`, else in the
//! calling thread without entering a parallel region. A region whose `if` clause is false still
//! sets up a team of one and wakes a futex (about a microsecond, a system call), and a small
//! model's decode step runs dozens of them; so the serial case here touches no OpenMP at all.
template <Schedule S = Schedule::even, class Body>
void parallel_for(std::int64_t n, bool worth_threads, Body&& body) {
#if defined(_OPENMP)
  if (worth_threads && n > 1 && omp_get_max_threads() > 1 && !omp_in_parallel()) {
    if constexpr (S == Schedule::even) {
#pragma omp parallel for schedule(static)
      for (std::int64_t i = 0; i < n; ++i) body(i);
    } else {
#pragma omp parallel for schedule(dynamic)
      for (std::int64_t i = 0; i < n; ++i) body(i);
    }
    return;
  }
#else
  (void)worth_threads;
#endif
  for (std::int64_t i = 0; i < n; ++i) body(i);
}

//! Calls body(thread, threads) once on each thread of a parallel region when `worth_threads`,
//! else body(0, 1) in the calling thread (no region, as in parallel_for).
template <class Body>
void parallel_team(bool worth_threads, Body&& body) {
#if defined(_OPENMP)
  if (worth_threads && omp_get_max_threads() > 1 && !omp_in_parallel()) {
#pragma omp parallel
    body(omp_get_thread_num(), omp_get_num_threads());
    return;
  }
#else
  (void)worth_threads;
#endif
  body(0, 1);
}

}  // namespace blockdiff
