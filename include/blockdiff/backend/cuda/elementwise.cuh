// Small CUDA kernels: embedding lookup, KV-cache writes, RMSNorm, RoPE, SwiGLU, bias broadcast.
//
// Each is the device twin of a host kernel in backend/host.hpp and is checked against it by
// tests/cuda. RMSNorm reduces each row with a CUB block reduction; the others are one thread
// per element.
#pragma once

#include <cub/block/block_reduce.cuh>

#include "blockdiff/backend/cuda/runtime.cuh"

namespace blockdiff {
namespace detail::cuda {

inline unsigned blocks_for(std::int64_t n, int threads = 256) {
  return static_cast<unsigned>((n + threads - 1) / threads);
}

__global__ void embedding_kernel(const float* table, const int* ids, std::int64_t n, int h, float* out) {
  const std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x;
  if (i >= n * h) return;
  const std::int64_t t = i / h;
  out[i] = table[static_cast<std::int64_t>(ids[t]) * h + i % h];
}

__global__ void kv_write_kernel(const float* k, const float* v, int n, int kv_heads, int d, float* ck, float* cv,
                                int capacity, int first) {
  const std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x;
  if (i >= static_cast<std::int64_t>(n) * kv_heads * d) return;
  const int e = static_cast<int>(i % d);
  const int h = static_cast<int>((i / d) % kv_heads);
  const int t = static_cast<int>(i / (static_cast<std::int64_t>(d) * kv_heads));
  const std::int64_t dst = (static_cast<std::int64_t>(h) * capacity + first + t) * d + e;
  ck[dst] = k[i];
  cv[dst] = v[i];
}

template <int Threads>
__global__ void rmsnorm_kernel(const float* x, int h, const float* w, float eps, float* y) {
  using Reduce = cub::BlockReduce<float, Threads>;
  __shared__ typename Reduce::TempStorage tmp;
  __shared__ float inv;
  const float* xi = x + static_cast<std::int64_t>(blockIdx.x) * h;
  float* yi = y + static_cast<std::int64_t>(blockIdx.x) * h;
  float ss = 0.0f;
  for (int j = threadIdx.x; j < h; j += Threads) ss += xi[j] * xi[j];
  const float total = Reduce(tmp).Sum(ss);
  if (threadIdx.x == 0) inv = 1.0f / sqrtf(total / static_cast<float>(h) + eps);
  __syncthreads();
  for (int j = threadIdx.x; j < h; j += Threads) yi[j] = (xi[j] * inv) * w[j];
}

__global__ void rope_kernel(float* x, std::int64_t n, int heads, int d, const int* positions, const float* cos_t,
                            const float* sin_t) {
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
  const std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x;
  if (i >= n) return;
  const float g = gate[i];
  gate[i] = g / (1.0f + expf(-g)) * up[i];
}

__global__ void broadcast_rows_kernel(const float* bias, std::int64_t n, int m, float* y) {
  const std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x;
  if (i < n * m) y[i] = bias[i % m];
}

}  // namespace detail::cuda

template <>
struct Kernel<backend::Cuda, op::Embedding> {
  static void run(const float* table, const int* ids, std::int64_t n, int h, float* out) {
    if (n == 0) return;
    detail::cuda::embedding_kernel<<<detail::cuda::blocks_for(n * h), 256>>>(table, ids, n, h, out);
    BLOCKDIFF_CUDA_CHECK(cudaGetLastError());
  }
};

template <>
struct Kernel<backend::Cuda, op::KvWrite> {
  static void run(const float* k, const float* v, int n, int kv_heads, int d, float* ck, float* cv, int capacity,
                  int first) {
    if (n == 0) return;
    detail::cuda::kv_write_kernel<<<detail::cuda::blocks_for(std::int64_t{n} * kv_heads * d), 256>>>(
        k, v, n, kv_heads, d, ck, cv, capacity, first);
    BLOCKDIFF_CUDA_CHECK(cudaGetLastError());
  }
};

template <>
struct Kernel<backend::Cuda, op::RmsNorm> {
  static void run(const float* x, std::int64_t n, int h, const float* w, float eps, float* y) {
    if (n == 0) return;
    detail::cuda::rmsnorm_kernel<256><<<static_cast<unsigned>(n), 256>>>(x, h, w, eps, y);
    BLOCKDIFF_CUDA_CHECK(cudaGetLastError());
  }
};

template <>
struct Kernel<backend::Cuda, op::Rope> {
  static void run(float* x, std::int64_t n, int heads, int d, const int* positions, const float* cos_t,
                  const float* sin_t) {
    if (n == 0) return;
    detail::cuda::rope_kernel<<<detail::cuda::blocks_for(n * heads * (d / 2)), 256>>>(x, n, heads, d, positions, cos_t,
                                                                                         sin_t);
    BLOCKDIFF_CUDA_CHECK(cudaGetLastError());
  }
};

template <>
struct Kernel<backend::Cuda, op::SwiGlu> {
  static void run(float* gate, const float* up, std::int64_t n) {
    if (n == 0) return;
    detail::cuda::swiglu_kernel<<<detail::cuda::blocks_for(n), 256>>>(gate, up, n);
    BLOCKDIFF_CUDA_CHECK(cudaGetLastError());
  }
};

template <>
struct Kernel<backend::Cuda, op::Linear> {
  //! y[n, m] (=|+=) x[n, k] · w[m, k]ᵀ (+ bias): one cuBLAS SGEMM on the row-major operands
  //! (y as column-major yᵀ = w · xᵀ); the bias is broadcast into y first and accumulated (beta = 1).
  static void run(const float* x, std::int64_t n, int k, const float* w, int m, const float* bias, float* y,
                  bool accumulate = false) {
    if (n == 0 || m == 0) return;
    require(bias == nullptr || !accumulate, "Linear on CUDA: bias with accumulate is not supported");
    float beta = accumulate ? 1.0f : 0.0f;
    if (bias != nullptr && !accumulate) {
      detail::cuda::broadcast_rows_kernel<<<detail::cuda::blocks_for(n * m), 256>>>(bias, n, m, y);
      BLOCKDIFF_CUDA_CHECK(cudaGetLastError());
      beta = 1.0f;
    }
    const float alpha = 1.0f;
    if (n == 1) {
      // The decode step: a GEMV (y = W x), which cuBLAS runs at memory bandwidth.
      BLOCKDIFF_CUBLAS_CHECK(cublasSgemv(backend::Cuda::blas(), CUBLAS_OP_T, k, m, &alpha, w, k, x, 1, &beta, y, 1));
        return;
    }
    BLOCKDIFF_CUBLAS_CHECK(cublasSgemm(backend::Cuda::blas(), CUBLAS_OP_T, CUBLAS_OP_N, m, static_cast<int>(n), k,
                                       &alpha, w, k, x, k, &beta, y, m));
  }
};

}  // namespace blockdiff
