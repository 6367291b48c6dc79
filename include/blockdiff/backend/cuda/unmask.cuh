// Unmask selection on the device (op::Unmask): the policy's own `select`, the code the host
// runs, in a kernel of one thread a row, for every policy that declares `device_select` (all the
// built-in ones). A policy without the trait takes the host's kernel (policy/unmask.hpp).
//
// A row's decision is a serial walk over at most a block's candidates (the order-based policies
// sort them by insertion), so a thread a row is the natural grain: a batch's rows run side by
// side, and a row's candidates stay in the thread's registers and local memory. The call moves
// its inputs up in one copy and its results down in another: the candidates, the rows and the
// caller's flags go up together, and the rows (with the generators a policy advanced) come down
// with the flags, so a flag that no row owns comes back as it went.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstring>
#include <span>
#include <vector>

#include "blockdiff/backend/cuda/runtime.cuh"
#include "blockdiff/policy/unmask.hpp"

namespace blockdiff {
namespace detail::cuda {

template <class P>
__global__ void unmask_kernel(P policy, const Candidate* candidates, UnmaskRow* rows, int n_rows, bool* chosen) {
  after_upstream();
  const int r = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x);
  if (r >= n_rows) return;
  UnmaskRow row = rows[r];
  select_row(policy, candidates, row, chosen);
  rows[r].rng = row.rng;
}

//! Where an op::Unmask call's parts lie in its working space: [candidates | rows | flags], so
//! that what comes down ([rows | flags]) is one contiguous range.
struct UnmaskLayout {
  std::size_t rows = 0, flags = 0, end = 0;  //!< byte offsets (the candidates start at 0)

  UnmaskLayout(std::size_t n_candidates, std::size_t n_rows) {
    rows = (n_candidates * sizeof(Candidate) + alignof(UnmaskRow) - 1) / alignof(UnmaskRow) * alignof(UnmaskRow);
    flags = rows + n_rows * sizeof(UnmaskRow);
    end = flags + n_candidates * sizeof(bool);
  }
};

}  // namespace detail::cuda

template <DeviceSelectable P>
struct Kernel<backend::Cuda, op::Unmask<P>> {
  //! As the host's kernel: `candidates`, `rows` and `chosen` in host memory; each row's `rng`
  //! comes back as the policy left it.
  static void run(const P& policy, const Candidate* candidates, std::span<UnmaskRow> rows, bool* chosen) {
    using namespace detail::cuda;
    if (rows.empty()) return;
    std::size_t n_candidates = 0;
    for (std::size_t r = 0; r < rows.size(); ++r) {
      detail::check_unmask_row(rows[r], r);
      n_candidates = std::max(n_candidates, static_cast<std::size_t>(rows[r].first + rows[r].n));
    }
    const UnmaskLayout at(n_candidates, rows.size());
    Workspace& w = workspace();
    w.host.resize(at.end);
    w.device.resize(Shape{static_cast<std::int64_t>(at.end)});
    std::memcpy(w.host.data(), candidates, n_candidates * sizeof(Candidate));
    std::memcpy(w.host.data() + at.rows, rows.data(), rows.size_bytes());
    std::memcpy(w.host.data() + at.flags, chosen, n_candidates * sizeof(bool));
    backend::Cuda::upload(w.device.data(), w.host.data(), at.end);

    constexpr int threads = 32;
    const int n_rows = static_cast<int>(rows.size());
    backend::Cuda::launch(unmask_kernel<P>, static_cast<unsigned>((n_rows + threads - 1) / threads), threads, 0,
                          backend::Cuda::stream(), policy, reinterpret_cast<const Candidate*>(w.device.data()),
                          reinterpret_cast<UnmaskRow*>(w.device.data() + at.rows), n_rows,
                          reinterpret_cast<bool*>(w.device.data() + at.flags));
    backend::Cuda::download(w.host.data() + at.rows, w.device.data() + at.rows, at.end - at.rows);
    std::memcpy(rows.data(), w.host.data() + at.rows, rows.size_bytes());
    std::memcpy(chosen, w.host.data() + at.flags, n_candidates * sizeof(bool));
  }

 private:
  //! The process's working space for selection (it only grows; no recorded graph holds it).
  struct Workspace {
    std::vector<unsigned char> host;
    DeviceBuffer<unsigned char> device;
  };
  static Workspace& workspace() {
    static Workspace w;
    return w;
  }
};

}  // namespace blockdiff
