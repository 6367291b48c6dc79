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

//! One block of 4 warps per (key split, row x query, head). A warp scores 32 keys at a time, one
//! per lane (q sits in shared memory, each lane reads its key row with 16-byte loads), takes the
//! tile's max and sum with two warp reductions, then accumulates p·V with the lanes splitting
//! head_dim (coalesced V rows). Each warp keeps an online softmax; the warps meet in shared
//! memory. With one split the block writes the output; with more it writes (max, sum, unscaled
//! output) for attention_merge_kernel.
template <class Mask>
__global__ void __launch_bounds__(32 * attention_warps)
    attention_kernel(const float* q, float* out, const AttentionRow* rows, int max_queries, int heads, int kv_heads,
                     int d, float scale, Mask mask, int keys_per_split, float* partial) {
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

  constexpr int per_lane_max = max_head_dim / 32;
  float acc[per_lane_max] = {};
  float m = -FLT_MAX, l = 0.0f;
  const bool vec = d % 4 == 0;
  for (int j0 = k_begin + 32 * warp; j0 < k_end; j0 += attention_block_keys) {
    const int j = j0 + lane;
    float s = -FLT_MAX;
    if (j < k_end && mask.allowed(qs, j)) {
      const float* kj = K + static_cast<std::int64_t>(j) * d;
      float dot = 0.0f;
      if (vec) {
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
    for (int e = 0; e < per_lane_max; ++e) acc[e] *= correction;
    const int tile = min(32, k_end - j0);
#pragma unroll 8
    for (int t = 0; t < 32; ++t) {  // unrolled so that several V rows are in flight at once
      const float pt = __shfl_sync(0xffffffffu, p, t);
      if (t >= tile) break;  // uniform across the warp
      const float* vj = V + static_cast<std::int64_t>(j0 + t) * d;
      for (int e = 0; e < per_lane_max; ++e)
        if (lane + 32 * e < d) acc[e] = fmaf(pt, vj[lane + 32 * e], acc[e]);
    }
    m = m_new;
  }

  // Merge the warps' partial softmaxes.
  __shared__ float warp_m[attention_warps], warp_l[attention_warps];
  __shared__ float warp_acc[attention_warps][max_head_dim];
  if (lane == 0) warp_m[warp] = m, warp_l[warp] = l;
  for (int e = 0; e < per_lane_max; ++e)
    if (lane + 32 * e < d) warp_acc[warp][lane + 32 * e] = acc[e];
  __syncthreads();
  float big = -FLT_MAX;
  for (int w = 0; w < attention_warps; ++w)
    if (warp_l[w] > 0.0f) big = fmaxf(big, warp_m[w]);
  float total = 0.0f;
  for (int w = 0; w < attention_warps; ++w) total += warp_l[w] > 0.0f ? warp_l[w] * expf(warp_m[w] - big) : 0.0f;
  const std::int64_t qh = static_cast<std::int64_t>(blockIdx.y) * heads + h;  // (row x query, head)
  if (gridDim.x == 1) {
    const float inv = total > 0.0f ? 1.0f / total : 0.0f;  // a query with no allowed key outputs zeros
    float* o = out + ((row.q_begin + i) * heads + h) * static_cast<std::int64_t>(d);
    for (int dim = threadIdx.x; dim < d; dim += blockDim.x) {
      float v = 0.0f;
      for (int w = 0; w < attention_warps; ++w)
        if (warp_l[w] > 0.0f) v += warp_acc[w][dim] * expf(warp_m[w] - big);
      o[dim] = v * inv;
    }
    return;
  }
  float* part = partial + (qh * gridDim.x + blockIdx.x) * (d + 2);
  if (threadIdx.x == 0) part[0] = big, part[1] = total;
  for (int dim = threadIdx.x; dim < d; dim += blockDim.x) {
    float v = 0.0f;
    for (int w = 0; w < attention_warps; ++w)
      if (warp_l[w] > 0.0f) v += warp_acc[w][dim] * expf(warp_m[w] - big);
    part[2 + dim] = v;
  }
}

//! One block per (row x query, head): adds the splits' partial softmaxes in a fixed order.
__global__ void attention_merge_kernel(const float* partial, float* out, const AttentionRow* rows, int max_queries,
                                       int heads, int d, int splits) {
  const AttentionRow row = rows[blockIdx.x / max_queries];
  const int i = static_cast<int>(blockIdx.x % max_queries);
  if (i >= row.n_q) return;
  const int h = blockIdx.y;
  const float* part = partial + (static_cast<std::int64_t>(blockIdx.x) * heads + h) * splits * (d + 2);
  float big = -FLT_MAX;
  for (int s = 0; s < splits; ++s)
    if (part[s * (d + 2) + 1] > 0.0f) big = fmaxf(big, part[s * (d + 2)]);
  float total = 0.0f;
  for (int s = 0; s < splits; ++s) {
    const float ls = part[s * (d + 2) + 1];
    total += ls > 0.0f ? ls * expf(part[s * (d + 2)] - big) : 0.0f;
  }
  const float inv = total > 0.0f ? 1.0f / total : 0.0f;
  float* o = out + ((row.q_begin + i) * heads + h) * static_cast<std::int64_t>(d);
  for (int dim = threadIdx.x; dim < d; dim += blockDim.x) {
    float v = 0.0f;
    for (int s = 0; s < splits; ++s)
      if (part[s * (d + 2) + 1] > 0.0f) v += part[s * (d + 2) + 2 + dim] * expf(part[s * (d + 2)] - big);
    o[dim] = v * inv;
  }
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
    if (split.splits > 1)
      partial = backend::Cuda::scratch<float>(static_cast<std::size_t>(queries * shape.heads * split.splits *
                                                                       (shape.head_dim + 2)));
    const cudaStream_t stream = backend::Cuda::stream();
    const dim3 grid(static_cast<unsigned>(split.splits), static_cast<unsigned>(queries),
                    static_cast<unsigned>(shape.heads));
    attention_kernel<Mask><<<grid, 32 * attention_warps, 0, stream>>>(q, out, rows.data(), shape.max_queries,
                                                                      shape.heads, shape.kv_heads, shape.head_dim,
                                                                      shape.scale, mask, split.keys_per_split, partial);
    BLOCKDIFF_CUDA_CHECK(cudaGetLastError());
    if (split.splits > 1) {
      attention_merge_kernel<<<dim3(static_cast<unsigned>(queries), static_cast<unsigned>(shape.heads)), 128, 0,
                               stream>>>(partial, out, rows.data(), shape.max_queries, shape.heads, shape.head_dim,
                                         split.splits);
      BLOCKDIFF_CUDA_CHECK(cudaGetLastError());
    }
  }
};

}  // namespace blockdiff
