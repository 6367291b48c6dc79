// Attention on the device: one warp per (row, query, head), online softmax over the keys.
//
// Each lane scores one key of a 32-key tile, the warp agrees on the running max and sum by
// shuffles, and every lane accumulates head_dim / 32 output dimensions. The mask kind is a type:
// `key_end` bounds the keys a query can see for the structured masks (Causal, BlockCausal), so
// whole tiles past the bound are never read; the predicate is still evaluated inside the bound,
// which is what makes the training mask work. GQA maps a query head to its key head by division.
#pragma once

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

template <class Mask>
__global__ void attention_kernel(const float* q, float* out, const AttentionRow* rows, int heads, int kv_heads, int d,
                                 float scale, Mask mask) {
  const AttentionRow row = rows[blockIdx.y];
  const int i = blockIdx.x;  // query within the row
  if (i >= row.n_q) return;
  const int h = blockIdx.z, lane = threadIdx.x;
  const int g = h / (heads / kv_heads);
  const float* qv = q + ((row.q_begin + i) * heads + h) * static_cast<std::int64_t>(d);
  const float* K = row.k + static_cast<std::int64_t>(g) * row.capacity * d;
  const float* V = row.v + static_cast<std::int64_t>(g) * row.capacity * d;
  const int qs = row.first_slot + i;
  const int end = key_end(mask, qs, row.kv_end);

  float acc[max_head_dim / 32];
  const int per_lane = (d + 31) / 32;
  for (int e = 0; e < per_lane; ++e) acc[e] = 0.0f;
  float m = -FLT_MAX, l = 0.0f;
  for (int base = 0; base < end; base += 32) {
    const int j = base + lane;
    float s = -FLT_MAX;
    if (j < end && mask.allowed(qs, j)) {
      const float* kj = K + static_cast<std::int64_t>(j) * d;
      float dot = 0.0f;
      for (int e = 0; e < d; ++e) dot += qv[e] * kj[e];
      s = dot * scale;
    }
    float tile_max = s;
    for (int off = 16; off > 0; off >>= 1) tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, off));
    if (tile_max == -FLT_MAX) continue;  // the whole tile is masked
    const float m_new = fmaxf(m, tile_max);
    const float correction = m == -FLT_MAX ? 0.0f : expf(m - m_new);
    const float p = s == -FLT_MAX ? 0.0f : expf(s - m_new);
    float tile_sum = p;
    for (int off = 16; off > 0; off >>= 1) tile_sum += __shfl_xor_sync(0xffffffffu, tile_sum, off);
    l = l * correction + tile_sum;
    for (int e = 0; e < per_lane; ++e) acc[e] *= correction;
    const int tile = min(32, end - base);
    for (int t = 0; t < tile; ++t) {
      const float pt = __shfl_sync(0xffffffffu, p, t);
      if (pt == 0.0f) continue;
      const float* vt = V + static_cast<std::int64_t>(base + t) * d;
      for (int e = 0; e < per_lane; ++e) {
        const int dim = lane + 32 * e;
        if (dim < d) acc[e] += pt * vt[dim];
      }
    }
    m = m_new;
  }
  float* o = out + ((row.q_begin + i) * heads + h) * static_cast<std::int64_t>(d);
  const float inv = l > 0.0f ? 1.0f / l : 0.0f;
  for (int e = 0; e < per_lane; ++e) {
    const int dim = lane + 32 * e;
    if (dim < d) o[dim] = acc[e] * inv;
  }
}

}  // namespace detail::cuda

template <class Mask>
struct Kernel<backend::Cuda, op::Attention<Mask>> {
  static void run(const float* q, float* out, std::span<const AttentionRow> rows, const AttentionShape& shape,
                  const Mask& mask) {
    if (rows.empty()) return;
    require(shape.head_dim <= detail::cuda::max_head_dim, "CUDA attention: head_dim ", shape.head_dim, " exceeds ",
            detail::cuda::max_head_dim);
    static thread_local DeviceBuffer<AttentionRow> device_rows;
    device_rows.resize({static_cast<std::int64_t>(rows.size())});
    backend::Cuda::upload(device_rows.data(), rows.data(), rows.size());
    int max_q = 0;
    for (auto& r : rows) max_q = r.n_q > max_q ? r.n_q : max_q;
    if (max_q == 0) return;
    const dim3 grid(static_cast<unsigned>(max_q), static_cast<unsigned>(rows.size()), static_cast<unsigned>(shape.heads));
    detail::cuda::attention_kernel<Mask><<<grid, 32>>>(q, out, device_rows.data(), shape.heads, shape.kv_heads,
                                                       shape.head_dim, shape.scale, mask);
    BLOCKDIFF_CUDA_CHECK(cudaGetLastError());
  }
};

}  // namespace blockdiff
