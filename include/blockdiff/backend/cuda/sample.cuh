// Sampling with temperature and top-p on the device (op::Sample), so that a sampled decode copies
// a few floats per position back, not its logits.
//
// It draws what the host draws (op::Sample in backend/kernel.hpp), in f64 throughout:
// 1. One block per draw: the row's maximum and second largest logit (CUB BlockReduce), the
//    softmax sum and the entropy's numerator at temperature T, then every token's probability.
// 2. With a nucleus (top_p < 1), CUB's stable segmented sort orders each draw's probabilities,
//    descending, with the token indices as values: ties keep the lower index first, as the host's
//    order does. With top_p = 1 the order is the vocabulary's.
// 3. One block per draw walks the cumulative probability in that order: each thread sums a
//    contiguous chunk, a CUB BlockScan gives each chunk the sum before it, and each thread walks
//    its chunk from there to the first position where the cumulative exceeds a target; the
//    lowest such position over the block wins. The first walk cuts the nucleus at top_p, the
//    second draws at u times its mass (where rounding leaves no crossing, the last position with
//    a probability above 0).
// The sums run in another order than the host's (lanes and 256-token chunks there), and the host
// multiplies by 1/T where this divides by T, so a draw can differ from the host's only where u
// falls within rounding (about 1e-15) of a boundary between two tokens.
#pragma once

#include <climits>
#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>
#include <cub/device/device_segmented_sort.cuh>

#include "blockdiff/backend/cuda/runtime.cuh"
#include "blockdiff/backend/cuda/vocab_stats.cuh"

namespace blockdiff {
namespace detail::cuda {

//! What pass 1 keeps of a draw's tempered distribution for the statistics, and the row's top
//! logit, which decides whether there is a distribution at all.
struct Tempered {
  double p2 = 0.0;
  double entropy = 0.0;
  float top = 0.0f;
  int top_index = 0;
};

//! Pass 1: probs[b, :] = softmax(logits[row_b] / T) in f64, order[b, :] = 0, 1, ... when a nucleus
//! is to be sorted (order not null), and offsets[b] = b · vocab (offsets[n] too) for the sort.
template <int Threads>
__global__ void tempered_probs_kernel(const float* logits, int vocab, const SampleRequest* requests, int n,
                                      double temperature, double* probs, int* order, int* offsets, Tempered* tempered) {
  after_upstream();
  __shared__ double sum;
  const float* l = logits + requests[blockIdx.x].row * vocab;
  const std::int64_t out = static_cast<std::int64_t>(blockIdx.x) * vocab;
  const RowSoftmax r = row_softmax<Threads, true>(l, vocab, temperature);
  const double m = r.top.v1;
  if (threadIdx.x == 0) {
    sum = r.sums.x;
    tempered[blockIdx.x] = {exp((static_cast<double>(r.top.v2) - m) / temperature) / r.sums.x,
                            log(r.sums.x) - r.sums.y / r.sums.x, r.top.v1, r.top.i1};
    offsets[blockIdx.x] = static_cast<int>(out);
    if (blockIdx.x == n - 1) offsets[n] = static_cast<int>(out + vocab);
  }
  __syncthreads();
  for (int i = threadIdx.x; i < vocab; i += Threads) {
    const double e = exp((static_cast<double>(l[i]) - m) / temperature);
    probs[out + i] = e > 0.0 ? e / sum : 0.0;  // a NaN logit is never drawn, as on the host
    if (order != nullptr) order[out + i] = i;
  }
}

//! A position of a walk and the cumulative probability through it.
struct Crossing {
  int index;
  double cumulative;
};

struct FirstCrossing {
  __device__ Crossing operator()(const Crossing& a, const Crossing& b) const { return a.index <= b.index ? a : b; }
};
struct LastCrossing {
  __device__ Crossing operator()(const Crossing& a, const Crossing& b) const { return a.index >= b.index ? a : b; }
};

//! Pass 3: each draw's token from its probabilities in walking order (sorted, with `order` the
//! token of each position, or the vocabulary's own order when `order` is null).
template <int Threads>
__global__ void draw_kernel(const double* probs, const int* order, int vocab, const SampleRequest* requests,
                            double top_p, const Tempered* tempered, PositionStats* stats) {
  after_upstream();
  using Scan = cub::BlockScan<double, Threads>;
  using Reduce = cub::BlockReduce<Crossing, Threads>;
  __shared__ union {
    typename Scan::TempStorage scan;
    typename Reduce::TempStorage reduce;
  } tmp;
  __shared__ Crossing found;
  __shared__ double total;
  const std::int64_t row = static_cast<std::int64_t>(blockIdx.x) * vocab;
  const double* p = probs + row;
  const int chunk = (vocab + Threads - 1) / Threads;
  const int begin = min(vocab, static_cast<int>(threadIdx.x) * chunk), end = min(vocab, begin + chunk);
  double own = 0.0;
  for (int i = begin; i < end; ++i) own += p[i];
  double before = 0.0;
  Scan(tmp.scan).ExclusiveSum(own, before);
  if (threadIdx.x == Threads - 1) total = before + own;
  __syncthreads();

  // The block's reduction of each thread's crossing, in every thread.
  const auto reduce = [&](Crossing mine, auto op) {
    const Crossing r = Reduce(tmp.reduce).Reduce(mine, op);
    if (threadIdx.x == 0) found = r;
    __syncthreads();
    const Crossing result = found;
    __syncthreads();  // before the next walk reuses the storage
    return result;
  };
  // The first position, up to `last`, where the cumulative probability exceeds x (index INT_MAX
  // where none does).
  const auto first_above = [&](double x, int last) {
    Crossing mine{INT_MAX, 0.0};
    double acc = before;
    for (int i = begin; i < end && i <= last; ++i) {
      acc += p[i];
      if (x < acc) {
        mine = {i, acc};
        break;
      }
    }
    return reduce(mine, FirstCrossing{});
  };
  // The last position, up to `last`, with a probability above 0 (the row's largest has 1/total).
  const auto last_drawable = [&](int last) {
    Crossing mine{-1, 0.0};
    for (int i = min(end, last + 1) - 1; i >= begin; --i)
      if (p[i] > 0.0) {
        mine = {i, 0.0};
        break;
      }
    return reduce(mine, LastCrossing{}).index;
  };

  int last = vocab - 1;
  double mass = 1.0;  // without a nucleus, the host's mass is 1 exactly
  if (order != nullptr) {
    const Crossing cut = first_above(top_p, vocab - 1);
    if (cut.index != INT_MAX) {
      last = cut.index;
      mass = cut.cumulative;
    } else {
      mass = total;  // rounding kept every token
    }
  }
  const Crossing pick = first_above(requests[blockIdx.x].u * mass, last);
  // Where rounding leaves the target at the kept mass (the same in every thread, so the whole
  // block reduces or none does).
  const int at = pick.index != INT_MAX ? pick.index : last_drawable(last);
  if (threadIdx.x == 0) {
    const Tempered& t = tempered[blockIdx.x];
    PositionStats s;
    if (isfinite(t.top)) {
      s.token = order != nullptr ? order[row + at] : at;
      s.p1 = static_cast<float>(p[at] / mass);
      s.p2 = static_cast<float>(t.p2);
      s.entropy = static_cast<float>(t.entropy);
    } else {  // no distribution (every logit −inf or NaN, or one +inf): the top index, as on the host
      s.token = t.top_index;
      s.p1 = 1.0f;
    }
    stats[blockIdx.x] = s;
  }
}

}  // namespace detail::cuda

template <>
struct Kernel<backend::Cuda, op::Sample> {
  //! logits on the device; requests and out in host memory (op::Sample states what is drawn).
  static void run(const float* logits, int vocab, std::span<const SampleRequest> requests, float temperature,
                  float top_p, PositionStats* out) {
    using namespace detail::cuda;
    constexpr int threads = 256;
    const bool nucleus = top_p < 1.0f;
    // Draws go in groups whose working space (24 bytes a token) stays near 64 MB.
    const std::size_t group = std::max<std::size_t>(1, (std::size_t{64} << 20) / (24 * static_cast<std::size_t>(vocab)));
    Workspace& w = workspace();
    for (std::size_t first = 0; first < requests.size(); first += group) {
      const int n = static_cast<int>(std::min(group, requests.size() - first));
      const Shape tokens{static_cast<std::int64_t>(n) * vocab};
      w.requests.resize(Shape{n});
      w.tempered.resize(Shape{n});
      w.stats.resize(Shape{n});
      w.offsets.resize(Shape{n + 1});
      w.probs.resize(tokens);
      backend::Cuda::upload(w.requests.data(), requests.data() + first, static_cast<std::size_t>(n));
      if (nucleus) {
        w.order.resize(tokens);
        w.sorted_probs.resize(tokens);
        w.sorted_order.resize(tokens);
      }
      const cudaStream_t stream = backend::Cuda::stream();
      backend::Cuda::launch(tempered_probs_kernel<threads>, static_cast<unsigned>(n), threads, 0, stream, logits, vocab,
                            w.requests.data(), n, static_cast<double>(temperature), w.probs.data(),
                            nucleus ? w.order.data() : nullptr, w.offsets.data(), w.tempered.data());
      if (nucleus) {
        std::size_t bytes = 0;
        const auto sort = [&](void* space) {
          BLOCKDIFF_CUDA_CHECK(cub::DeviceSegmentedSort::StableSortPairsDescending(
              space, bytes, w.probs.data(), w.sorted_probs.data(), w.order.data(), w.sorted_order.data(),
              tokens.numel(), n, w.offsets.data(), w.offsets.data() + 1, stream));
        };
        sort(nullptr);
        w.sort_space.resize(Shape{static_cast<std::int64_t>(std::max<std::size_t>(bytes, 1))});
        sort(w.sort_space.data());
      }
      backend::Cuda::launch(draw_kernel<threads>, static_cast<unsigned>(n), threads, 0, stream,
                            nucleus ? w.sorted_probs.data() : w.probs.data(), nucleus ? w.sorted_order.data() : nullptr,
                            vocab, w.requests.data(), static_cast<double>(top_p), w.tempered.data(), w.stats.data());
      backend::Cuda::download(out + first, w.stats.data(), static_cast<std::size_t>(n));
    }
  }

 private:
  //! The process's working space for sampling (it only grows; no recorded graph holds it).
  struct Workspace {
    DeviceBuffer<SampleRequest> requests;
    DeviceBuffer<detail::cuda::Tempered> tempered;
    DeviceBuffer<PositionStats> stats;
    DeviceBuffer<int> offsets, order, sorted_order;
    DeviceBuffer<double> probs, sorted_probs;
    DeviceBuffer<char> sort_space;
  };
  static Workspace& workspace() {
    static Workspace w;
    return w;
  }
};

}  // namespace blockdiff
