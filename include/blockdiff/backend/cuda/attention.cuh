// Attention on the device: one block per (row, query, head), online softmax over the keys.
//
// The mask kind is a type: `key_end` bounds the keys a query can see for the structured masks
// (Causal, BlockCausal), so keys past the bound are never read; the predicate is still evaluated
// inside the bound, which is what makes the training mask work. GQA maps a query head to its key
// head by division. This is a decode-oriented kernel (few queries against a cache); it does not
// tile queries through shared memory as a prefill kernel would.
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
//! Rows travel as a kernel parameter (no upload, no synchronisation) up to this many.
constexpr int max_param_rows = 64;

struct RowsParam {
  AttentionRow rows[max_param_rows];
};

//! One block of `attention_warps` warps per (query, row, head). The warps split the keys into
//! contiguous ranges; within a warp the lanes split head_dim, so every K and V row is read with
//! coalesced loads, and a score is a shuffle reduction. Each warp keeps an online softmax
//! (running max, sum, and its share of the output); the warps are merged through shared memory.
template <class Mask>
__global__ void attention_kernel(const float* q, float* out, const AttentionRow* rows_ptr, RowsParam rows_param,
                                 int heads, int kv_heads, int d, float scale, Mask mask) {
  const AttentionRow row = rows_ptr != nullptr ? rows_ptr[blockIdx.y] : rows_param.rows[blockIdx.y];
  const int i = blockIdx.x;  // query within the row
  if (i >= row.n_q) return;
  const int h = blockIdx.z, lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int g = h / (heads / kv_heads);
  const float* qv = q + ((row.q_begin + i) * heads + h) * static_cast<std::int64_t>(d);
  const float* K = row.k + static_cast<std::int64_t>(g) * row.capacity * d;
  const float* V = row.v + static_cast<std::int64_t>(g) * row.capacity * d;
  const int qs = row.first_slot + i;
  const int end = key_end(mask, qs, row.kv_end);
  const int per_lane = (d + 31) / 32;

  float qr[max_head_dim / 32], acc[max_head_dim / 32];
  for (int e = 0; e < per_lane; ++e) {
    const int dim = lane + 32 * e;
    qr[e] = dim < d ? qv[dim] * scale : 0.0f;
    acc[e] = 0.0f;
  }
  const int chunk = (end + attention_warps - 1) / attention_warps;
  const int j0 = warp * chunk, j1 = min(end, j0 + chunk);
  float m = -FLT_MAX, l = 0.0f;
  for (int j = j0; j < j1; ++j) {
    if (!mask.allowed(qs, j)) continue;  // uniform across the warp
    const float* kj = K + static_cast<std::int64_t>(j) * d;
    float dot = 0.0f;
    for (int e = 0; e < per_lane; ++e) {
      const int dim = lane + 32 * e;
      if (dim < d) dot += qr[e] * kj[dim];
    }
    for (int off = 16; off > 0; off >>= 1) dot += __shfl_xor_sync(0xffffffffu, dot, off);
    const float m_new = fmaxf(m, dot);
    const float correction = expf(m - m_new);  // exp(-inf) = 0 on the first key
    const float p = expf(dot - m_new);
    l = l * correction + p;
    const float* vj = V + static_cast<std::int64_t>(j) * d;
    for (int e = 0; e < per_lane; ++e) {
      const int dim = lane + 32 * e;
      acc[e] = acc[e] * correction + (dim < d ? p * vj[dim] : 0.0f);
    }
    m = m_new;
  }
  // Merge the warps' partial softmaxes.
  __shared__ float warp_m[attention_warps], warp_l[attention_warps];
  __shared__ float warp_acc[attention_warps][max_head_dim];
  if (lane == 0) warp_m[warp] = m, warp_l[warp] = l;
  for (int e = 0; e < per_lane; ++e) {
    const int dim = lane + 32 * e;
    if (dim < d) warp_acc[warp][dim] = acc[e];
  }
  __syncthreads();
  float big = -FLT_MAX;
  for (int w = 0; w < attention_warps; ++w) big = fmaxf(big, warp_m[w]);
  float total = 0.0f;
  for (int w = 0; w < attention_warps; ++w) total += warp_l[w] > 0.0f ? warp_l[w] * expf(warp_m[w] - big) : 0.0f;
  const float inv = total > 0.0f ? 1.0f / total : 0.0f;  // a query with no allowed key outputs zeros
  float* o = out + ((row.q_begin + i) * heads + h) * static_cast<std::int64_t>(d);
  for (int dim = threadIdx.x; dim < d; dim += 32 * attention_warps) {
    float v = 0.0f;
    for (int w = 0; w < attention_warps; ++w)
      if (warp_l[w] > 0.0f) v += warp_acc[w][dim] * expf(warp_m[w] - big);
    o[dim] = v * inv;
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
    int max_q = 0;
    for (auto& r : rows) max_q = r.n_q > max_q ? r.n_q : max_q;
    if (max_q == 0) return;
    detail::cuda::RowsParam param{};
    const AttentionRow* device_ptr = nullptr;
    static thread_local DeviceBuffer<AttentionRow> device_rows;
    if (rows.size() <= static_cast<std::size_t>(detail::cuda::max_param_rows)) {
      std::copy(rows.begin(), rows.end(), param.rows);
    } else {
      device_rows.resize({static_cast<std::int64_t>(rows.size())});
      backend::Cuda::upload(device_rows.data(), rows.data(), rows.size());
      device_ptr = device_rows.data();
    }
    const dim3 grid(static_cast<unsigned>(max_q), static_cast<unsigned>(rows.size()), static_cast<unsigned>(shape.heads));
    detail::cuda::attention_kernel<Mask><<<grid, 32 * detail::cuda::attention_warps>>>(
        q, out, device_ptr, param, shape.heads, shape.kv_heads, shape.head_dim, shape.scale, mask);
    BLOCKDIFF_CUDA_CHECK(cudaGetLastError());
  }
};

}  // namespace blockdiff
