// The vocabulary-wide statistics pass on the device: one thread block per logit row.
//
// Pass 1 reduces (max, argmax, second max) with a CUB block reduction; pass 2 reduces the
// softmax denominator and, only when the policy's traits ask for it, the entropy numerator.
// The kernel is chosen by the traits (SecondProb, Entropy) at compile time, so the paper's
// Threshold policy never pays for an entropy. Ties resolve to the lowest index, as on the host.
#pragma once

#include <cmath>
#include <cub/block/block_reduce.cuh>

#include "blockdiff/backend/cuda/runtime.cuh"

namespace blockdiff {
namespace detail::cuda {

struct Top2 {
  float v1;
  int i1;
  float v2;
};

//! The larger first (a NaN never wins, as on the host), the lower index on ties; the second is
//! the larger of the rest (fmaxf passes over a NaN).
struct MergeTop2 {
  __device__ Top2 operator()(const Top2& a, const Top2& b) const {
    const bool a_wins = b.v1 != b.v1 || a.v1 > b.v1 || (a.v1 == b.v1 && a.i1 < b.i1);
    const Top2& w = a_wins ? a : b;
    const Top2& o = a_wins ? b : a;
    return Top2{w.v1, w.i1, fmaxf(w.v2, o.v1)};
  }
};

struct SumPair {
  __device__ double2 operator()(const double2& a, const double2& b) const { return double2{a.x + b.x, a.y + b.y}; }
};

//! A logit row's softmax at temperature T, reduced over the block: its top two logits (`top`,
//! in every thread; index 0 where no logit is above −inf, as on the host) and, with
//! y = (z - max) / T, Σ e^y and, when Weighted, Σ e^y · y (`sums`, in thread 0 only). A −inf or
//! NaN logit is a term of 0 in both, as on the host. The statistics pass runs it at T = 1,
//! sampling at its temperature.
struct RowSoftmax {
  Top2 top;
  double2 sums;
};

template <int Threads, bool Weighted>
__device__ RowSoftmax row_softmax(const float* l, int vocab, double temperature) {
  using Reduce1 = cub::BlockReduce<Top2, Threads>;
  using Reduce2 = cub::BlockReduce<double2, Threads>;
  __shared__ union {
    typename Reduce1::TempStorage r1;
    typename Reduce2::TempStorage r2;
  } tmp;
  __shared__ Top2 top;
  Top2 local{-INFINITY, 0x7fffffff, -INFINITY};
  for (int i = threadIdx.x; i < vocab; i += Threads) local = MergeTop2{}(local, Top2{l[i], i, -INFINITY});
  Top2 best = Reduce1(tmp.r1).Reduce(local, MergeTop2{});
  if (best.i1 >= vocab) best.i1 = 0;  // every logit NaN
  if (threadIdx.x == 0) top = best;
  __syncthreads();
  const Top2 row_top = top;
  const double m = row_top.v1;
  double2 part{0.0, 0.0};
  for (int i = threadIdx.x; i < vocab; i += Threads) {
    const double y = (static_cast<double>(l[i]) - m) / temperature, e = exp(y);
    if (!(e > 0.0)) continue;  // −inf or NaN (or an underflow): not 0·(−inf) or NaN in the sums
    part.x += e;
    if constexpr (Weighted) part.y += e * y;
  }
  return {row_top, Reduce2(tmp.r2).Reduce(part, SumPair{})};
}

template <int Threads, bool SecondProb, bool Entropy>
__global__ void vocab_stats_kernel(const float* logits, int vocab, PositionStats* stats) {
  after_upstream();
  const RowSoftmax r = row_softmax<Threads, Entropy>(logits + static_cast<std::int64_t>(blockIdx.x) * vocab, vocab, 1.0);
  if (threadIdx.x == 0) {
    PositionStats s;
    s.token = r.top.i1;
    if (isfinite(r.top.v1)) {
      s.p1 = static_cast<float>(1.0 / r.sums.x);
      s.p2 = SecondProb ? static_cast<float>(exp(static_cast<double>(r.top.v2) - r.top.v1) / r.sums.x) : 0.0f;
      s.entropy = Entropy ? static_cast<float>(log(r.sums.x) - r.sums.y / r.sums.x) : 0.0f;
    } else {
      s.p1 = 1.0f;  // no distribution (op::VocabStats), as on the host
    }
    stats[blockIdx.x] = s;
  }
}

}  // namespace detail::cuda

template <bool SecondProb, bool Entropy>
struct Kernel<backend::Cuda, op::VocabStats<SecondProb, Entropy>> {
  //! logits on the device; stats written to host memory.
  static void run(const float* logits, std::int64_t rows, int vocab, PositionStats* stats) {
    if (rows == 0) return;
    PositionStats* device_stats = backend::Cuda::scratch<PositionStats>(static_cast<std::size_t>(rows));
    backend::Cuda::launch(detail::cuda::vocab_stats_kernel<256, SecondProb, Entropy>, static_cast<unsigned>(rows), 256,
                          0, backend::Cuda::stream(), logits, vocab, device_stats);
    backend::Cuda::download(stats, device_stats, static_cast<std::size_t>(rows));
  }
};

}  // namespace blockdiff
