// The vocabulary-wide statistics pass on the device: one thread block per logit row.
//
// Pass 1 reduces (max, argmax, second max) with a CUB block reduction; pass 2 reduces the
// softmax denominator and, only when the policy's traits ask for it, the entropy numerator.
// The kernel is chosen by the traits (SecondProb, Entropy) at compile time, so the paper's
// Threshold policy never pays for an entropy. Ties resolve to the lowest index, as on the host.
#pragma once

#include <cfloat>
#include <cub/block/block_reduce.cuh>

#include "blockdiff/backend/cuda/runtime.cuh"

namespace blockdiff {
namespace detail::cuda {

struct Top2 {
  float v1;
  int i1;
  float v2;
};

struct MergeTop2 {
  __device__ Top2 operator()(const Top2& a, const Top2& b) const {
    const bool a_wins = a.v1 > b.v1 || (a.v1 == b.v1 && a.i1 < b.i1);
    const Top2& w = a_wins ? a : b;
    const Top2& o = a_wins ? b : a;
    return Top2{w.v1, w.i1, fmaxf(w.v2, o.v1)};
  }
};

struct SumPair {
  __device__ double2 operator()(const double2& a, const double2& b) const { return double2{a.x + b.x, a.y + b.y}; }
};

template <int Threads, bool SecondProb, bool Entropy>
__global__ void vocab_stats_kernel(const float* logits, int vocab, PositionStats* stats) {
  using Reduce1 = cub::BlockReduce<Top2, Threads>;
  using Reduce2 = cub::BlockReduce<double2, Threads>;
  __shared__ union {
    typename Reduce1::TempStorage r1;
    typename Reduce2::TempStorage r2;
  } tmp;
  __shared__ Top2 top;
  const float* l = logits + static_cast<std::int64_t>(blockIdx.x) * vocab;
  Top2 local{-FLT_MAX, 0x7fffffff, -FLT_MAX};
  for (int i = threadIdx.x; i < vocab; i += Threads) local = MergeTop2{}(local, Top2{l[i], i, -FLT_MAX});
  const Top2 best = Reduce1(tmp.r1).Reduce(local, MergeTop2{});
  if (threadIdx.x == 0) top = best;
  __syncthreads();
  const float m = top.v1;
  double2 part{0.0, 0.0};
  for (int i = threadIdx.x; i < vocab; i += Threads) {
    const double z = static_cast<double>(l[i]) - m;
    const double e = exp(z);
    part.x += e;
    if constexpr (Entropy) part.y += e * z;
  }
  const double2 sums = Reduce2(tmp.r2).Reduce(part, SumPair{});
  if (threadIdx.x == 0) {
    PositionStats s;
    s.token = top.i1;
    s.p1 = static_cast<float>(1.0 / sums.x);
    s.p2 = SecondProb ? static_cast<float>(exp(static_cast<double>(top.v2) - m) / sums.x) : 0.0f;
    s.entropy = Entropy ? static_cast<float>(log(sums.x) - sums.y / sums.x) : 0.0f;
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
    detail::cuda::vocab_stats_kernel<256, SecondProb, Entropy>
        <<<static_cast<unsigned>(rows), 256, 0, backend::Cuda::stream()>>>(logits, vocab, device_stats);
    BLOCKDIFF_CUDA_CHECK(cudaGetLastError());
    backend::Cuda::download(stats, device_stats, static_cast<std::size_t>(rows));
  }
};

}  // namespace blockdiff
