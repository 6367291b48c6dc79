// The OpenMP thread of the caller and the size of its team, with or without OpenMP.
#pragma once

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

}  // namespace blockdiff
