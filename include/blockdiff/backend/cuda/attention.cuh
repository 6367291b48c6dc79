// Attention on the device: blocks per (key split, row x query, head), online softmax over the keys.
//
// The mask kind is a type: `key_end` bounds the keys a query can see for the structured masks
// (Causal, BlockCausal), so keys past the bound are never read; the predicate is still evaluated
// inside the bound, which is what makes the training mask work. GQA maps a query head to its key
// head by division. This is a decode-oriented kernel (few queries against a cache, split over
// the keys as flash-decoding does); it does not tile queries through shared memory as a prefill
// kernel would.
#pragma once

#include <algorithm>
#include <cfloat>

#include "blockdiff/backend/cuda/runtime.cuh"
#include "blockdiff/model/mask.hpp"

namespace blockdiff {
namespace detail::cuda {

//! One past the last key slot that query slot `q` may attend (a bound; the predicate decides).
template <class Mask>
__device__ inline int key_end(const Mask&, int, int kv_end) {
  return kv_end;
}
template <>
__device__ inline int key_end(const mask::Causal&, int q, int kv_end) {
  return min(q + 1, kv_end);
}
template <int B>
__device__ inline int key_end(const mask::BlockCausal<B>&, int q, int kv_end) {
  return min((q / B + 1) * B, kv_end);
}

constexpr int max_head_dim = 256;
constexpr int attention_warps = 4;
constexpr int attention_block_keys = 32 * attention_warps;  //!< keys a block scores per pass
constexpr int attention_max_splits = 16;

//! How a call divides each query's keys among blocks.
struct AttentionSplit {
  int splits = 1;          //!< blocks per (query, head); more than 1 writes partials to merge
  int keys_per_split = 0;  //!< consecutive key slots per block
};

//! Few queries (a decode step, a sub-block, a small batch) split their keys over up to 16
//! blocks so that the GPU has work; many queries (a prefill) have work enough with one each.
inline AttentionSplit attention_split(std::int64_t queries, int max_keys) {
  const int passes = (max_keys + attention_block_keys - 1) / attention_block_keys;
  const int splits = queries >= 128 ? 1 : std::clamp(passes, 1, attention_max_splits);
  return {splits, (max_keys + splits - 1) / splits};
}

//! Adds a query's split partials (max, sum, unscaled output each) in split order into `o`.
__device__ inline void merge_splits(const float* part, int splits, int d, float* o) {
  float big = -FLT_MAX;
  for (int s = 0; s < splits; ++s)
    if (__ldcg(part + s * (d + 2) + 1) > 0.0f) big = fmaxf(big, __ldcg(part + s * (d + 2)));
  float total = 0.0f;
  for (int s = 0; s < splits; ++s) {
    const float ls = __ldcg(part + s * (d + 2) + 1);
    total += ls > 0.0f ? ls * expf(__ldcg(part + s * (d + 2)) - big) : 0.0f;
  }
  const float inv = total > 0.0f ? 1.0f / total : 0.0f;  // a query with no allowed key outputs zeros
  for (int dim = threadIdx.x; dim < d; dim += blockDim.x) {
    float v = 0.0f;
    for (int s = 0; s < splits; ++s) {
      const float ls = __ldcg(part + s * (d + 2) + 1);
      if (ls > 0.0f) v += __ldcg(part + s * (d + 2) + 2 + dim) * expf(__ldcg(part + s * (d + 2)) - big);
    }
    o[dim] = v * inv;
  }
}

//! One block of 4 warps per (key split, row x query, head). A warp scores 32 keys at a time, one
//! per lane (q sits in shared memory, each lane reads its key row with 16-byte loads), takes the
//! tile's max and sum with two warp reductions, then accumulates p·V with the lanes splitting
//! head_dim (coalesced V rows). Each warp keeps an online softmax; the warps meet in shared
//! memory. With one split the block writes the output. With more it writes (max, sum, unscaled
//! output) to `partial`, and the last block of the query to finish (a ticket in `done`, which it
//! resets) merges them in split order, so the result does not depend on which block was last.
//! D is head_dim when it is compiled for (128: every load of a tile is issued at once), or 0.
template <class Mask, int D>
__global__ void __launch_bounds__(32 * attention_warps)
    attention_kernel(const float* q, float* out, const AttentionRow* rows, int max_queries, int heads, int kv_heads,
                     int d_runtime, float scale, Mask mask, int keys_per_split, float* partial, unsigned* done) {
  const int d = D > 0 ? D : d_runtime;
  const AttentionRow row = rows[blockIdx.y / max_queries];
  const int i = static_cast<int>(blockIdx.y % max_queries);  // query within the row
  if (i >= row.n_q) return;
  const int h = blockIdx.z, lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int g = h / (heads / kv_heads);
  const float* K = row.k + static_cast<std::int64_t>(g) * row.capacity * d;
  const float* V = row.v + static_cast<std::int64_t>(g) * row.capacity * d;
  const int qs = row.first_slot + i;
  const int k_begin = static_cast<int>(blockIdx.x) * keys_per_split;
  const int k_end = min(key_end(mask, qs, row.kv_end), k_begin + keys_per_split);

  __shared__ __align__(16) float qsh[max_head_dim];
  const float* qv = q + ((row.q_begin + i) * heads + h) * static_cast<std::int64_t>(d);
  for (int e = threadIdx.x; e < d; e += blockDim.x) qsh[e] = qv[e] * scale;
  __syncthreads();

  constexpr int per_lane = D > 0 ? D / 32 : max_head_dim / 32;
  float acc[per_lane] = {};
  float m = -FLT_MAX, l = 0.0f;
  const bool vec = d % 4 == 0;
  for (int j0 = k_begin + 32 * warp; j0 < k_end; j0 += attention_block_keys) {
    const int j = j0 + lane;
    float s = -FLT_MAX;
    if (j < k_end && mask.allowed(qs, j)) {
      const float* kj = K + static_cast<std::int64_t>(j) * d;
      float dot = 0.0f;
      if constexpr (D > 0) {
        float4 kv[D / 4];
#pragma unroll
        for (int e = 0; e < D / 4; ++e) kv[e] = *reinterpret_cast<const float4*>(kj + 4 * e);
#pragma unroll
        for (int e = 0; e < D / 4; ++e) {
          const float4 qv4 = *reinterpret_cast<const float4*>(qsh + 4 * e);
          dot += qv4.x * kv[e].x + qv4.y * kv[e].y + qv4.z * kv[e].z + qv4.w * kv[e].w;
        }
      } else if (vec) {
#pragma unroll 8
        for (int e = 0; e < d; e += 4) {
          const float4 kv = *reinterpret_cast<const float4*>(kj + e);
          const float4 qv4 = *reinterpret_cast<const float4*>(qsh + e);
          dot += qv4.x * kv.x + qv4.y * kv.y + qv4.z * kv.z + qv4.w * kv.w;
        }
      } else {
        for (int e = 0; e < d; ++e) dot += qsh[e] * kj[e];
      }
      s = dot;
    }
    float tile_max = s;
    for (int off = 16; off > 0; off >>= 1) tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, off));
    if (tile_max == -FLT_MAX) continue;  // no allowed key in this tile (uniform across the warp)
    const float m_new = fmaxf(m, tile_max);
    const float correction = expf(m - m_new);  // 0 on the first tile
    const float p = s == -FLT_MAX ? 0.0f : expf(s - m_new);
    float p_sum = p;
    for (int off = 16; off > 0; off >>= 1) p_sum += __shfl_xor_sync(0xffffffffu, p_sum, off);
    l = l * correction + p_sum;
    for (int e = 0; e < per_lane; ++e) acc[e] *= correction;
    const int tile = min(32, k_end - j0);
    if (D > 0 && tile == 32) {  // a whole tile: every V load is issued before the first FMA
      float vv[32][per_lane];
#pragma unroll
      for (int t = 0; t < 32; ++t)
        for (int e = 0; e < per_lane; ++e) vv[t][e] = V[static_cast<std::int64_t>(j0 + t) * d + lane + 32 * e];
#pragma unroll
      for (int t = 0; t < 32; ++t) {
        const float pt = __shfl_sync(0xffffffffu, p, t);
        for (int e = 0; e < per_lane; ++e) acc[e] = fmaf(pt, vv[t][e], acc[e]);
      }
    } else {
#pragma unroll 8
      for (int t = 0; t < 32; ++t) {  // unrolled so that several V rows are in flight at once
        const float pt = __shfl_sync(0xffffffffu, p, t);
        if (t >= tile) break;  // uniform across the warp
        const float* vj = V + static_cast<std::int64_t>(j0 + t) * d;
        for (int e = 0; e < per_lane; ++e)
          if (lane + 32 * e < d) acc[e] = fmaf(pt, vj[lane + 32 * e], acc[e]);
      }
    }
    m = m_new;
  }

  // Merge the warps' partial softmaxes.
  __shared__ float warp_m[attention_warps], warp_l[attention_warps];
  __shared__ float warp_acc[attention_warps][max_head_dim];
  if (lane == 0) warp_m[warp] = m, warp_l[warp] = l;
  for (int e = 0; e < per_lane; ++e)
    if (lane + 32 * e < d) warp_acc[warp][lane + 32 * e] = acc[e];
  __syncthreads();
  float big = -FLT_MAX;
  for (int w = 0; w < attention_warps; ++w)
    if (warp_l[w] > 0.0f) big = fmaxf(big, warp_m[w]);
  float total = 0.0f;
  for (int w = 0; w < attention_warps; ++w) total += warp_l[w] > 0.0f ? warp_l[w] * expf(warp_m[w] - big) : 0.0f;
  float* o = out + ((row.q_begin + i) * heads + h) * static_cast<std::int64_t>(d);
  if (gridDim.x == 1) {
    const float inv = total > 0.0f ? 1.0f / total : 0.0f;  // a query with no allowed key outputs zeros
    for (int dim = threadIdx.x; dim < d; dim += blockDim.x) {
      float v = 0.0f;
      for (int w = 0; w < attention_warps; ++w)
        if (warp_l[w] > 0.0f) v += warp_acc[w][dim] * expf(warp_m[w] - big);
      o[dim] = v * inv;
    }
    return;
  }
  const std::int64_t qh = static_cast<std::int64_t>(blockIdx.y) * heads + h;  // (row x query, head)
  float* part = partial + qh * gridDim.x * (d + 2);
  float* mine = part + blockIdx.x * (d + 2);
  if (threadIdx.x == 0) mine[0] = big, mine[1] = total;
  for (int dim = threadIdx.x; dim < d; dim += blockDim.x) {
    float v = 0.0f;
    for (int w = 0; w < attention_warps; ++w)
      if (warp_l[w] > 0.0f) v += warp_acc[w][dim] * expf(warp_m[w] - big);
    mine[2 + dim] = v;
  }
  // The last block of this (query, head) merges: publish the partial, then take a ticket.
  __threadfence();
  __shared__ bool last;
  __syncthreads();
  if (threadIdx.x == 0) {
    last = atomicAdd(done + qh, 1u) == gridDim.x - 1;
    if (last) done[qh] = 0;  // ready for the next launch (and the next replay of a graph)
  }
  __syncthreads();
  if (!last) return;
  __threadfence();
  merge_splits(part, static_cast<int>(gridDim.x), d, o);
}

}  // namespace detail::cuda

template <class Mask>
struct Kernel<backend::Cuda, op::Attention<Mask>> {
  //! `rows` in device memory; shape.max_queries and shape.max_keys bound their n_q and kv_end.
  static void run(const float* q, float* out, std::span<const AttentionRow> rows, const AttentionShape& shape,
                  const Mask& mask) {
    using namespace detail::cuda;
    if (rows.empty() || shape.max_queries == 0) return;
    require(shape.head_dim <= max_head_dim, "CUDA attention: head_dim ", shape.head_dim, " exceeds ", max_head_dim);
    require(shape.max_keys > 0, "CUDA attention: shape.max_keys (the rows' largest cache capacity) is not set");
    const std::int64_t queries = static_cast<std::int64_t>(rows.size()) * shape.max_queries;
    const auto split = attention_split(queries, shape.max_keys);
    float* partial = nullptr;
    unsigned* done = nullptr;
    if (split.splits > 1) {
      partial = backend::Cuda::scratch<float>(static_cast<std::size_t>(queries * shape.heads * split.splits *
                                                                       (shape.head_dim + 2)));
      done = backend::Cuda::scratch<unsigned>(static_cast<std::size_t>(queries * shape.heads), /*zeroed=*/true);
    }
    const dim3 grid(static_cast<unsigned>(split.splits), static_cast<unsigned>(queries),
                    static_cast<unsigned>(shape.heads));
    auto launch = [&]<int D>() {
      attention_kernel<Mask, D><<<grid, 32 * attention_warps, 0, backend::Cuda::stream()>>>(
          q, out, rows.data(), shape.max_queries, shape.heads, shape.kv_heads, shape.head_dim, shape.scale, mask,
          split.keys_per_split, partial, done);
    };
    // The head_dim-128 kernel holds a whole tile's loads in registers (about 170 a thread): on
    // an H100 it made a 1.5B-shaped AR step (36 blocks) and sub-block forward (288) faster and a
    // 32-token block forward (1152) slower, where occupancy matters more than latency.
    const std::int64_t blocks = static_cast<std::int64_t>(grid.x) * grid.y * grid.z;
    if (shape.head_dim == 128 && blocks <= 4 * backend::Cuda::multiprocessors()) launch.template operator()<128>();
    else launch.template operator()<0>();
    BLOCKDIFF_CUDA_CHECK(cudaGetLastError());
  }
};

}  // namespace blockdiff
