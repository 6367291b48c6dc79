// Small CUDA kernels: embedding lookup, KV-cache writes, RMSNorm, RoPE, SwiGLU.
//
// Each is the device twin of a host kernel in backend/host/elementwise.hpp and is checked against it by
// tests/cuda. RMSNorm reduces each row with a CUB block reduction; the others are one thread
// per element.
#pragma once

#include <cub/block/block_reduce.cuh>

#include "blockdiff/backend/cuda/runtime.cuh"
#include "blockdiff/core/dtype.hpp"

namespace blockdiff {
namespace detail::cuda {

//! Blocks of `threads` for one thread per element of n.
inline unsigned blocks_for(std::int64_t n, int threads = 256) {
  return static_cast<unsigned>((n + threads - 1) / threads);
}

template <class T>
__global__ void embedding_kernel(const T* table, const int* ids, std::int64_t n, int h, float* out) {
  after_upstream();
  const std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x;
  if (i >= n * h) return;
  const std::int64_t t = i / h;
  out[i] = to_float(table[static_cast<std::int64_t>(ids[t]) * h + i % h]);
}

//! Grid (max_queries, rows); the threads of a block copy one token's kv_heads x d values.
__global__ void kv_write_kernel(const float* k, const float* v, const AttentionRow* rows, int kv_heads, int d) {
  after_upstream();
  const AttentionRow row = rows[blockIdx.y];
  const int t = blockIdx.x;
  if (t >= row.n_q) return;
  const std::int64_t src = (row.q_begin + t) * kv_heads * static_cast<std::int64_t>(d);
  for (int i = threadIdx.x; i < kv_heads * d; i += blockDim.x) {
    const int h = i / d, e = i % d;
    const std::int64_t dst = (static_cast<std::int64_t>(h) * row.capacity + row.first_slot + t) * d + e;
    row.k[dst] = k[src + i];
    row.v[dst] = v[src + i];
  }
}

//! Grid (tokens, heads + kv_heads): a block rotates one head of q, or one head of k and then
//! writes it and the same head of v into the cache slot of its token's row.
__global__ void rope_kv_write_kernel(float* q, float* k, const float* v, const int* positions, const float* cos_t,
                                     const float* sin_t, const AttentionRow* rows, int n_rows, int heads, int kv_heads,
                                     int d) {
  after_upstream();
  const int t = static_cast<int>(blockIdx.x), hh = static_cast<int>(blockIdx.y), half = d / 2;
  const bool is_q = hh < heads;
  float* x = is_q ? q + (static_cast<std::int64_t>(t) * heads + hh) * d
                  : k + (static_cast<std::int64_t>(t) * kv_heads + (hh - heads)) * d;
  const std::int64_t p = static_cast<std::int64_t>(positions[t]) * half;
  float* ck = nullptr;
  float* cv = nullptr;
  const float* vh = nullptr;
  if (!is_q) {
    int r = 0;
    while (r + 1 < n_rows && t >= rows[r + 1].q_begin) ++r;  // rows lie in token order
    const AttentionRow& row = rows[r];
    const int kh = hh - heads;
    const std::int64_t dst = (static_cast<std::int64_t>(kh) * row.capacity + row.first_slot + (t - row.q_begin)) * d;
    ck = row.k + dst, cv = row.v + dst;
    vh = v + (static_cast<std::int64_t>(t) * kv_heads + kh) * d;
  }
  for (int i = threadIdx.x; i < half; i += blockDim.x) {
    const float a = x[i], b = x[i + half], c = cos_t[p + i], s = sin_t[p + i];
    const float ra = a * c - b * s, rb = b * c + a * s;  // as op::Rope computes them
    x[i] = ra, x[i + half] = rb;
    if (!is_q) {
      ck[i] = ra, ck[i + half] = rb;
      cv[i] = vh[i], cv[i + half] = vh[i + half];
    }
  }
}

//! The factor an RMSNorm scales a row by, from the sum of its k squares (as op::RmsNorm computes it).
__device__ inline float rms_scale(float sum_squares, int k, float eps) {
  return 1.0f / sqrtf(sum_squares / static_cast<float>(k) + eps);
}

template <int Threads>
__global__ void rmsnorm_kernel(const float* x, int h, const float* w, float eps, float* y) {
  after_upstream();
  using Reduce = cub::BlockReduce<float, Threads>;
  __shared__ typename Reduce::TempStorage tmp;
  __shared__ float inv;
  const float* xi = x + static_cast<std::int64_t>(blockIdx.x) * h;
  float* yi = y + static_cast<std::int64_t>(blockIdx.x) * h;
  float ss = 0.0f;
  for (int j = threadIdx.x; j < h; j += Threads) ss += xi[j] * xi[j];
  const float total = Reduce(tmp).Sum(ss);
  if (threadIdx.x == 0) inv = rms_scale(total, h, eps);
  __syncthreads();
  for (int j = threadIdx.x; j < h; j += Threads) yi[j] = (xi[j] * inv) * w[j];
}

__global__ void rope_kernel(float* x, std::int64_t n, int heads, int d, const int* positions, const float* cos_t,
                            const float* sin_t) {
  after_upstream();
  const int half = d / 2;
  const std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x;
  if (i >= n * heads * half) return;
  const int k = static_cast<int>(i % half);
  const std::int64_t th = i / half;  // token * heads + head
  const std::int64_t t = th / heads;
  float* v = x + th * d;
  const std::int64_t p = static_cast<std::int64_t>(positions[t]) * half + k;
  const float a = v[k], b = v[k + half], c = cos_t[p], s = sin_t[p];
  v[k] = a * c - b * s;
  v[k + half] = b * c + a * s;
}

__global__ void swiglu_kernel(float* gate, const float* up, std::int64_t n) {
  after_upstream();
  const std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x;
  if (i >= n) return;
  const float g = gate[i];
  gate[i] = g / (1.0f + expf(-g)) * up[i];
}

}  // namespace detail::cuda

template <>
struct Kernel<backend::Cuda, op::Embedding> {
  //! The table in f32 or BF16; rows come out f32.
  template <class T>
  static void run(const T* table, const int* ids, std::int64_t n, int h, float* out) {
    if (n == 0) return;
    backend::Cuda::launch(detail::cuda::embedding_kernel<T>, detail::cuda::blocks_for(n * h), 256, 0,
                          backend::Cuda::stream(), table, ids, n, h, out);
  }
};

template <>
struct Kernel<backend::Cuda, op::KvWrite> {
  //! `rows` in device memory; one launch for the whole batch.
  static void run(const float* k, const float* v, std::span<const AttentionRow> rows, const AttentionShape& shape) {
    if (rows.empty() || shape.max_queries == 0) return;
    const dim3 grid(static_cast<unsigned>(shape.max_queries), static_cast<unsigned>(rows.size()));
    backend::Cuda::launch(detail::cuda::kv_write_kernel, grid, 256, 0, backend::Cuda::stream(), k, v, rows.data(),
                          shape.kv_heads, shape.head_dim);
  }
};

template <>
struct Kernel<backend::Cuda, op::RmsNorm> {
  static void run(const float* x, std::int64_t n, int h, const float* w, float eps, float* y) {
    if (n == 0) return;
    backend::Cuda::launch(detail::cuda::rmsnorm_kernel<256>, static_cast<unsigned>(n), 256, 0, backend::Cuda::stream(),
                          x, h, w, eps, y);
  }
};

template <>
struct Kernel<backend::Cuda, op::Rope> {
  static void run(float* x, std::int64_t n, int heads, int d, const int* positions, const float* cos_t,
                  const float* sin_t) {
    if (n == 0) return;
    backend::Cuda::launch(detail::cuda::rope_kernel, detail::cuda::blocks_for(n * heads * (d / 2)), 256, 0,
                          backend::Cuda::stream(), x, n, heads, d, positions, cos_t, sin_t);
  }
};

template <>
struct Kernel<backend::Cuda, op::SwiGlu> {
  static void run(float* gate, const float* up, std::int64_t n) {
    if (n == 0) return;
    backend::Cuda::launch(detail::cuda::swiglu_kernel, detail::cuda::blocks_for(n), 256, 0, backend::Cuda::stream(),
                          gate, up, n);
  }
};

template <>
struct Kernel<backend::Cuda, op::RopeKvWrite> {
  //! One launch for RoPE on q and k and the cache writes of the whole batch (`rows` on the device).
  static void run(float* q, float* k, const float* v, std::int64_t n, const int* positions, const float* cos_t,
                  const float* sin_t, std::span<const AttentionRow> rows, const AttentionShape& shape) {
    if (n == 0 || rows.empty()) return;
    const dim3 grid(static_cast<unsigned>(n), static_cast<unsigned>(shape.heads + shape.kv_heads));
    backend::Cuda::launch(detail::cuda::rope_kv_write_kernel, grid, 64, 0, backend::Cuda::stream(), q, k, v, positions,
                          cos_t, sin_t, rows.data(), static_cast<int>(rows.size()), shape.heads, shape.kv_heads,
                          shape.head_dim);
  }
};

}  // namespace blockdiff
