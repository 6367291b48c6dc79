// Attention on the device: online softmax over the keys, split over blocks as flash-decoding
// does when there are few queries, the splits merged by the last block of each query to finish.
//
// The mask kind is a type: `mask::key_bound` bounds the keys a query can see for the structured
// masks (Causal, BlockCausal), so keys past the bound are never read; the predicate is still
// evaluated inside the bound, which is what makes the training mask work. GQA maps a query head to its key
// head by division.
//
// Two kernels. The grouped one (the default, head_dim a multiple of 4 up to 128) gives a block a
// key head and up to 32 (query, head) pairs of its group: every query head that shares the key
// head and as many queries as fit, so each K and V tile is read from memory once and staged in
// shared memory for all of them (an AR step of a 6:1 GQA model reads its cache once instead of
// six times; its 32-token block forward 7 times instead of 192). The per-head one gives a block one
// (query, head) pair and reads K and V itself; it serves other head_dims and
// `Cuda::use_grouped_attention(false)`, for comparison. Either runs a call whose rows need more
// blocks along the grid's y than it holds (65,535: a batched prefill of long prompts on the
// per-head kernel) in several launches of whole rows, one after another on the stream.
#pragma once

#include <algorithm>
#include <cfloat>

#include "blockdiff/backend/cuda/runtime.cuh"
#include "blockdiff/backend/mask.hpp"

namespace blockdiff {
namespace detail::cuda {

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

// A score that is not a number makes its query's output NaN, as on the host. The maxima below
// keep a NaN (fmaxf would pass over it, and a tile whose only allowed key scores NaN would look
// like a tile of none), and a partial softmax takes part in a merge where its sum is not 0:
// 0 is a partial that saw no allowed key, NaN one that saw a score that is not a number.

//! The larger of a and b, or NaN where either is.
__device__ inline float max_or_nan(float a, float b) { return a > b || a != a ? a : b; }

//! The factor 1 / sum that normalises a query's output: 0 where it saw no allowed key (its output
//! is zeros), NaN where its sum is.
__device__ inline float inverse_sum(float sum) { return sum != 0.0f ? 1.0f / sum : 0.0f; }

//! Adds a query's split partials (max, sum, unscaled output each, d + 2 floats apart) in split
//! order into `o`; the calling threads share its dims, thread `first` of `stride`.
__device__ inline void merge_splits(const float* part, int splits, int d, float* o, int first, int stride) {
  float big = -FLT_MAX;
  for (int s = 0; s < splits; ++s)
    if (__ldcg(part + s * (d + 2) + 1) != 0.0f) big = max_or_nan(big, __ldcg(part + s * (d + 2)));
  float total = 0.0f;
  for (int s = 0; s < splits; ++s) {
    const float ls = __ldcg(part + s * (d + 2) + 1);
    total += ls != 0.0f ? ls * expf(__ldcg(part + s * (d + 2)) - big) : 0.0f;
  }
  const float inv = inverse_sum(total);
  for (int dim = first; dim < d; dim += stride) {
    float v = 0.0f;
    for (int s = 0; s < splits; ++s) {
      const float ls = __ldcg(part + s * (d + 2) + 1);
      if (ls != 0.0f) v += __ldcg(part + s * (d + 2) + 2 + dim) * expf(__ldcg(part + s * (d + 2)) - big);
    }
    o[dim] = v * inv;
  }
}

//! Called by every thread of a block once the block has written its split partials: whether it
//! is the last of the `gridDim.x` splits of its group to finish, and so the one to merge them.
//! A ticket per group counts the finished splits; the last block resets it, ready for the next
//! launch (and the next replay of a graph). The fences make every split's partials visible to
//! the last block.
__device__ inline bool last_split(unsigned* ticket) {
  __shared__ bool last;
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) {
    last = atomicAdd(ticket, 1u) == gridDim.x - 1;
    if (last) *ticket = 0;
  }
  __syncthreads();
  if (last) __threadfence();
  return last;
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
  after_upstream();
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
  const int k_end = min(mask::key_bound(mask, qs, row.kv_end), k_begin + keys_per_split);

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
    for (int off = 16; off > 0; off >>= 1) tile_max = max_or_nan(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, off));
    if (tile_max == -FLT_MAX) continue;  // no allowed key in this tile (uniform across the warp)
    const float m_new = max_or_nan(m, tile_max);
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
    if (warp_l[w] != 0.0f) big = max_or_nan(big, warp_m[w]);
  float total = 0.0f;
  for (int w = 0; w < attention_warps; ++w) total += warp_l[w] != 0.0f ? warp_l[w] * expf(warp_m[w] - big) : 0.0f;
  float* o = out + ((row.q_begin + i) * heads + h) * static_cast<std::int64_t>(d);
  if (gridDim.x == 1) {
    const float inv = inverse_sum(total);
    for (int dim = threadIdx.x; dim < d; dim += blockDim.x) {
      float v = 0.0f;
      for (int w = 0; w < attention_warps; ++w)
        if (warp_l[w] != 0.0f) v += warp_acc[w][dim] * expf(warp_m[w] - big);
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
      if (warp_l[w] != 0.0f) v += warp_acc[w][dim] * expf(warp_m[w] - big);
    mine[2 + dim] = v;
  }
  if (!last_split(done + qh)) return;
  merge_splits(part, static_cast<int>(gridDim.x), d, o, static_cast<int>(threadIdx.x), static_cast<int>(blockDim.x));
}

constexpr int group_tile_keys = 32;  //!< keys of K and V a grouped block stages per pass, one per lane
constexpr int group_max_pairs = 32;  //!< (query, head) pairs a grouped block serves: 8 per warp
constexpr int group_max_head_dim = 128;
constexpr int group_max_splits = 32;
constexpr int group_target_blocks = 256;  //!< splits are added until a call has about this many blocks
//! The dynamic shared memory of a grouped block: within the 48 KB a block gets without asking,
//! less room for the kernel's static shared variables (16 bytes on sm_90).
constexpr int group_smem_floats = (48 * 1024 - 256) / 4;

//! Whether the grouped kernel takes a head_dim (its rows are staged with 16-byte loads).
inline bool grouped_attention_fits(int d) { return d > 0 && d % 4 == 0 && d <= group_max_head_dim; }

//! How a grouped call divides its work: blocks per (row, key head) over the row's (query, head)
//! pairs, and splits over the keys. It depends on the call's shape only (not on the device), so
//! that a result does not depend on the GPU it ran on, and not on the keys in use (the shape's
//! max_keys is the caches' capacity), so that a recorded graph replays as the rows grow.
struct GroupPlan {
  int pairs = 0;       //!< pairs a block serves (the last tile of a row may have fewer)
  int pair_tiles = 0;  //!< blocks per (row, key head) over its max_queries x group pairs
  int splits = 1;      //!< blocks that share each group's keys
  std::size_t shared_bytes = 0;  //!< Q of the pairs, K (rows padded by 4 floats), V
};

inline GroupPlan group_plan(std::int64_t rows, int max_queries, int group, int kv_heads, int max_keys, int d) {
  GroupPlan p;
  const int kv_tile_floats = group_tile_keys * (2 * d + 4);
  p.pairs = std::min({group_max_pairs, (group_smem_floats - kv_tile_floats) / d, max_queries * group});
  p.pair_tiles = (max_queries * group + p.pairs - 1) / p.pairs;
  const std::int64_t blocks = rows * p.pair_tiles * kv_heads;
  const int tiles = (max_keys + group_tile_keys - 1) / group_tile_keys;
  const auto want = static_cast<int>(
      std::clamp<std::int64_t>((group_target_blocks + blocks - 1) / blocks, 1, group_max_splits));
  p.splits = std::min(want, tiles);
  p.shared_bytes = static_cast<std::size_t>(p.pairs * d + kv_tile_floats) * sizeof(float);
  return p;
}

//! The most blocks a grid takes along y: a call of more rows runs in launches of whole rows.
constexpr std::int64_t max_grid_y = 65535;

//! Rows a launch takes when each row needs `blocks_per_row` blocks along y (`what` names them,
//! for the error where one row alone needs more than a grid holds).
inline std::int64_t rows_per_launch(std::int64_t blocks_per_row, const char* what) {
  require(blocks_per_row <= max_grid_y, what, " need ", blocks_per_row, " blocks along a grid's y, which holds ",
          max_grid_y);
  return max_grid_y / std::max<std::int64_t>(blocks_per_row, 1);
}

//! One block of 4 warps per (key split, row x pair tile, key head), serving `pairs_per_block`
//! (query, head) pairs of one row that share the key head: pair t of the row is query t / group
//! and head kv_head * group + t % group. Each pass stages 32 keys of K (rows padded so that the
//! lanes' 16-byte reads of different rows fall in different banks) and V in shared memory with
//! coalesced 16-byte loads, read once from memory for every pair. A warp owns pairs w, w + 4, ...
//! (up to 8): it scores the tile one key per lane, each key against all its pairs at once (one K
//! read serves them all; q is in shared memory, scaled), keeps an online softmax per pair, then
//! accumulates p·V with the lanes splitting head_dim (each V read serving every pair). With one
//! split the warps write their pairs' outputs; with more, (max, sum, unscaled output) partials,
//! which the last block of the group to finish merges in split order (merge_splits).
//! D is head_dim when it is compiled for (128), or 0 for any multiple of 4 up to 128.
template <class Mask, int D>
__global__ void __launch_bounds__(32 * attention_warps, 2)
    attention_group_kernel(const float* q, float* out, const AttentionRow* rows, int pair_tiles, int pairs_per_block,
                           int heads, int kv_heads, int d_runtime, float scale, Mask mask, float* partial,
                           unsigned* done) {
  after_upstream();
  constexpr int per_warp = group_max_pairs / attention_warps;
  constexpr int per_lane = group_max_head_dim / 32;
  // 16-byte loads a thread makes of a tile's K (and as many of V)
  constexpr int tile_loads = group_tile_keys * group_max_head_dim / 4 / (32 * attention_warps);
  const int d = D > 0 ? D : d_runtime;
  const int stride = d + 4;  // a K row in shared memory
  const int group = heads / kv_heads, g = static_cast<int>(blockIdx.z);
  const AttentionRow row = rows[blockIdx.y / pair_tiles];
  const int first_pair = static_cast<int>(blockIdx.y % pair_tiles) * pairs_per_block;
  const int pairs = min(pairs_per_block, row.n_q * group - first_pair);
  if (pairs <= 0) return;  // past this row's queries: so is every split of the group
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int mine = pairs > warp ? (pairs - warp + attention_warps - 1) / attention_warps : 0;

  extern __shared__ float4 group_shared[];
  float* qsh = reinterpret_cast<float*>(group_shared);  // [pairs_per_block][d], times scale
  float* ksh = qsh + pairs_per_block * d;               // [32][d + 4]
  float* vsh = ksh + group_tile_keys * stride;          // [32][d]
  const int chunks = d / 4;
  for (int c = threadIdx.x; c < pairs * chunks; c += blockDim.x) {
    const int t = first_pair + c / chunks;
    const std::int64_t at = (row.q_begin + t / group) * heads + g * group + t % group;
    float4 v = __ldg(reinterpret_cast<const float4*>(q + at * d + 4 * (c % chunks)));
    v.x *= scale, v.y *= scale, v.z *= scale, v.w *= scale;
    *reinterpret_cast<float4*>(qsh + (c / chunks) * d + 4 * (c % chunks)) = v;
  }
  // The keys this block reads: the group's keys, up to the furthest bound of its queries, in
  // whole tiles shared evenly by the splits (which the caches' capacity sized, so that a short
  // row's keys still spread over all of them).
  int bound = 0;
  for (int i = first_pair / group; i <= (first_pair + pairs - 1) / group; ++i)
    bound = max(bound, mask::key_bound(mask, row.first_slot + i, row.kv_end));
  const int splits = static_cast<int>(gridDim.x);
  const int bound_tiles = (bound + group_tile_keys - 1) / group_tile_keys;
  const int per_split = (bound_tiles + splits - 1) / splits * group_tile_keys;
  const int k_begin = static_cast<int>(blockIdx.x) * per_split;
  const int k_end = min(bound, k_begin + per_split);

  float m[per_warp], l[per_warp], acc[per_warp][per_lane];
#pragma unroll
  for (int pp = 0; pp < per_warp; ++pp) {
    m[pp] = -FLT_MAX, l[pp] = 0.0f;
#pragma unroll
    for (int e = 0; e < per_lane; ++e) acc[pp][e] = 0.0f;
  }
  const float* K = row.k + static_cast<std::int64_t>(g) * row.capacity * d;
  const float* V = row.v + static_cast<std::int64_t>(g) * row.capacity * d;
  for (int j0 = k_begin; j0 < k_end; j0 += group_tile_keys) {
    const int tile = min(group_tile_keys, k_end - j0);
    __syncthreads();  // the last tile's readers are done (and, the first time, Q is staged)
    // Every load of the tile is issued before the first store (read-only loads: the cache does
    // not change during the call), so a thread has all of its 16 in flight at once.
    float4 kt[tile_loads], vt[tile_loads];
#pragma unroll
    for (int u = 0; u < tile_loads; ++u) {
      const int c = static_cast<int>(threadIdx.x) + u * 32 * attention_warps;
      if (c < tile * chunks) {
        const std::int64_t at = static_cast<std::int64_t>(j0 + c / chunks) * d + 4 * (c % chunks);
        kt[u] = __ldg(reinterpret_cast<const float4*>(K + at));
        vt[u] = __ldg(reinterpret_cast<const float4*>(V + at));
      }
    }
#pragma unroll
    for (int u = 0; u < tile_loads; ++u) {
      const int c = static_cast<int>(threadIdx.x) + u * 32 * attention_warps;
      if (c < tile * chunks) {
        *reinterpret_cast<float4*>(ksh + (c / chunks) * stride + 4 * (c % chunks)) = kt[u];
        *reinterpret_cast<float4*>(vsh + 4 * c) = vt[u];
      }
    }
    __syncthreads();

    float s[per_warp] = {};
    if (lane < tile) {
      const float* kr = ksh + lane * stride;
#pragma unroll 4
      for (int e = 0; e < d; e += 4) {
        const float4 k4 = *reinterpret_cast<const float4*>(kr + e);
#pragma unroll
        for (int pp = 0; pp < per_warp; ++pp) {
          if (pp < mine) {
            const float4 q4 = *reinterpret_cast<const float4*>(qsh + (warp + attention_warps * pp) * d + e);
            s[pp] += q4.x * k4.x + q4.y * k4.y + q4.z * k4.z + q4.w * k4.w;
          }
        }
      }
    }
    float p[per_warp] = {};  // each pair's softmax weight of this lane's key
#pragma unroll
    for (int pp = 0; pp < per_warp; ++pp) {
      if (pp < mine) {
        const int slot = row.first_slot + (first_pair + warp + attention_warps * pp) / group;  // the pair's query
        const float sc = lane < tile && mask.allowed(slot, j0 + lane) ? s[pp] : -FLT_MAX;
        float tile_max = sc;
        for (int off = 16; off > 0; off >>= 1) tile_max = max_or_nan(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, off));
        if (tile_max != -FLT_MAX) {  // uniform across the warp
          const float m_new = max_or_nan(m[pp], tile_max);
          const float correction = expf(m[pp] - m_new);  // 0 on the pair's first tile
          p[pp] = sc == -FLT_MAX ? 0.0f : expf(sc - m_new);
          float p_sum = p[pp];
          for (int off = 16; off > 0; off >>= 1) p_sum += __shfl_xor_sync(0xffffffffu, p_sum, off);
          l[pp] = l[pp] * correction + p_sum;
#pragma unroll
          for (int e = 0; e < per_lane; ++e) acc[pp][e] *= correction;
          m[pp] = m_new;
        }
      }
    }
    for (int t = 0; t < tile; ++t) {  // uniform across the warp
      float v[per_lane];
#pragma unroll
      for (int e = 0; e < per_lane; ++e) v[e] = lane + 32 * e < d ? vsh[t * d + lane + 32 * e] : 0.0f;
#pragma unroll
      for (int pp = 0; pp < per_warp; ++pp) {
        if (pp < mine) {
          const float pt = __shfl_sync(0xffffffffu, p[pp], t);
#pragma unroll
          for (int e = 0; e < per_lane; ++e) acc[pp][e] = fmaf(pt, v[e], acc[pp][e]);
        }
      }
    }
  }

  const std::int64_t grp = static_cast<std::int64_t>(blockIdx.y) * gridDim.z + g;  // (row x pair tile, key head)
  auto output = [&](int pp) {  // where the warp's pp-th pair writes its result
    const int t = first_pair + warp + attention_warps * pp;
    return out + ((row.q_begin + t / group) * heads + g * group + t % group) * static_cast<std::int64_t>(d);
  };
  auto partials = [&](int pp) {  // the warp's pp-th pair's partials, split by split
    return partial + (grp * pairs_per_block + warp + attention_warps * pp) * splits * (d + 2);
  };
#pragma unroll
  for (int pp = 0; pp < per_warp; ++pp) {
    if (pp < mine) {
      if (splits == 1) {
        const float inv = inverse_sum(l[pp]);
        float* o = output(pp);
#pragma unroll
        for (int e = 0; e < per_lane; ++e)
          if (lane + 32 * e < d) o[lane + 32 * e] = acc[pp][e] * inv;
      } else {
        float* part = partials(pp) + blockIdx.x * (d + 2);
        if (lane == 0) part[0] = m[pp], part[1] = l[pp];
#pragma unroll
        for (int e = 0; e < per_lane; ++e)
          if (lane + 32 * e < d) part[2 + lane + 32 * e] = acc[pp][e];
      }
    }
  }
  if (splits == 1 || !last_split(done + grp)) return;
  for (int pp = 0; pp < mine; ++pp) merge_splits(partials(pp), splits, d, output(pp), lane, 32);
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
    require(shape.kv_heads > 0 && shape.heads % shape.kv_heads == 0, "CUDA attention: ", shape.heads,
            " heads are not a multiple of ", shape.kv_heads, " key heads");
    if (backend::Cuda::grouped_attention() && grouped_attention_fits(shape.head_dim))
      run_grouped(q, out, rows, shape, mask);
    else
      run_per_head(q, out, rows, shape, mask);
  }

 private:
  static void run_grouped(const float* q, float* out, std::span<const AttentionRow> rows, const AttentionShape& shape,
                          const Mask& mask) {
    using namespace detail::cuda;
    const auto rows_n = static_cast<std::int64_t>(rows.size());
    const GroupPlan plan = group_plan(rows_n, shape.max_queries, shape.heads / shape.kv_heads, shape.kv_heads,
                                      shape.max_keys, shape.head_dim);
    const std::int64_t per_launch = rows_per_launch(plan.pair_tiles, "CUDA attention (grouped): a row's pair tiles");
    float* partial = nullptr;
    unsigned* done = nullptr;
    if (plan.splits > 1) {
      const auto groups = static_cast<std::size_t>(std::min(rows_n, per_launch) * plan.pair_tiles * shape.kv_heads);
      partial = backend::Cuda::scratch<float>(groups * plan.pairs * plan.splits * (shape.head_dim + 2));
      done = backend::Cuda::scratch<unsigned>(groups, /*zeroed=*/true);
    }
    for (std::int64_t first = 0; first < rows_n; first += per_launch) {
      const std::int64_t n = std::min(per_launch, rows_n - first);
      const dim3 grid(static_cast<unsigned>(plan.splits), static_cast<unsigned>(n * plan.pair_tiles),
                      static_cast<unsigned>(shape.kv_heads));
      auto launch = [&]<int D>() {
        backend::Cuda::launch(attention_group_kernel<Mask, D>, grid, 32 * attention_warps, plan.shared_bytes,
                              backend::Cuda::stream(), q, out, rows.data() + first, plan.pair_tiles, plan.pairs,
                              shape.heads, shape.kv_heads, shape.head_dim, shape.scale, mask, partial, done);
      };
      if (shape.head_dim == 128) launch.template operator()<128>();
      else launch.template operator()<0>();
    }
  }

  static void run_per_head(const float* q, float* out, std::span<const AttentionRow> rows, const AttentionShape& shape,
                           const Mask& mask) {
    using namespace detail::cuda;
    const auto rows_n = static_cast<std::int64_t>(rows.size());
    const std::int64_t queries = rows_n * shape.max_queries;
    const auto split = attention_split(queries, shape.max_keys);
    const std::int64_t per_launch = rows_per_launch(shape.max_queries, "CUDA attention (per head): a row's queries");
    const std::int64_t launch_queries = std::min(rows_n, per_launch) * shape.max_queries;
    float* partial = nullptr;
    unsigned* done = nullptr;
    if (split.splits > 1) {
      partial = backend::Cuda::scratch<float>(
          static_cast<std::size_t>(launch_queries * shape.heads * split.splits * (shape.head_dim + 2)));
      done = backend::Cuda::scratch<unsigned>(static_cast<std::size_t>(launch_queries * shape.heads), /*zeroed=*/true);
    }
    for (std::int64_t first = 0; first < rows_n; first += per_launch) {
      const std::int64_t n = std::min(per_launch, rows_n - first);
      const dim3 grid(static_cast<unsigned>(split.splits), static_cast<unsigned>(n * shape.max_queries),
                      static_cast<unsigned>(shape.heads));
      auto launch = [&]<int D>() {
        backend::Cuda::launch(attention_kernel<Mask, D>, grid, 32 * attention_warps, 0, backend::Cuda::stream(), q,
                              out, rows.data() + first, shape.max_queries, shape.heads, shape.kv_heads,
                              shape.head_dim, shape.scale, mask, split.keys_per_split, partial, done);
      };
      // The head_dim-128 kernel holds a whole tile's loads in registers (about 170 a thread): on
      // an H100 it made a 1.5B-shaped AR step (36 blocks) and sub-block forward (288) faster and a
      // 32-token block forward (1152) slower, where occupancy matters more than latency.
      const std::int64_t blocks = static_cast<std::int64_t>(grid.x) * grid.y * grid.z;
      if (shape.head_dim == 128 && blocks <= 4 * backend::Cuda::multiprocessors()) launch.template operator()<128>();
      else launch.template operator()<0>();
    }
  }
};

}  // namespace blockdiff
