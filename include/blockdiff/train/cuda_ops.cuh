// The training operations on the device: `train::ops::Ops<backend::Cuda>`, the twins of the host
// functions of train/ops.hpp, in f32, so that `kernels::TrainableQwen2<float, backend::Cuda>` runs
// the model's training step (forward, loss, backward) on the GPU.
//
// - GEMMs are cuBLAS SGEMMs (full f32, as the backend's handle is set: no TF32), row-major
//   products computed as their column-major transposes.
// - RMSNorm: a block per row for y (and rstd) and for dx; dw by column, in two passes (partial
//   sums over fixed chunks of rows, then their sum in chunk order), so it is deterministic.
// - Attention keeps the host's contract: the forward stores the output and the log-sum-exp of
//   each query; the backward rebuilds the probabilities from them, as flash attention does, in
//   two kernels: one block per query for dq (it also stores the query's rowsum(dO ∘ O)), one
//   block per key and K/V head for dk and dv, summing over the heads of its group, so that no
//   two blocks write the same value (no atomics). A block holds one query's (or key's) scores
//   for the whole sequence in shared memory, so the length is bounded (attention_max_length);
//   the kernels are written to be right and simple, not tiled for speed.
// - The embedding's backward and the scatter of the loss rows add with atomics: a token that
//   repeats adds its rows in an unspecified order (a rounding difference from the host).
// - The optimiser: the global norm is a sum of squares in double (fixed partial sums, added in
//   order), and AdamW applies the host's per-element update (ops::AdamWStep::apply) in a kernel.
//
// Each operation is checked against its host twin by tests/cuda/train.cpp.
#pragma once

#include <cub/block/block_reduce.cuh>

#include <cmath>
#include <cstdint>
#include <vector>

#include "blockdiff/backend/cuda/linear.cuh"
#include "blockdiff/backend/cuda/runtime.cuh"
#include "blockdiff/core/error.hpp"
#include "blockdiff/train/ops.hpp"

namespace blockdiff {
namespace detail::cuda::training {

using ::blockdiff::train::ops::AttentionDims;
using detail::cuda::blocks_for;
constexpr int kThreads = 128;

__device__ inline float warp_sum(float v) {
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}
struct MaxOf {
  __device__ float operator()(float a, float b) const { return fmaxf(a, b); }
};
struct SumOf {
  __device__ float operator()(float a, float b) const { return a + b; }
};

//! The block's reduction of `v` by `op`, returned to every thread of the block.
template <class Op>
__device__ float block_all_reduce(float v, Op op) {
  using Reduce = cub::BlockReduce<float, kThreads>;
  __shared__ typename Reduce::TempStorage tmp;
  __shared__ float result;
  const float r = Reduce(tmp).Reduce(v, op);
  if (threadIdx.x == 0) result = r;
  __syncthreads();
  const float out = result;
  __syncthreads();  // tmp and result may be reused by the next call
  return out;
}

//! C[M, N] (= | +=) op(A) · op(B), row-major: the column-major product Cᵀ = op(B)ᵀ · op(A)ᵀ.
inline void gemm(bool ta, bool tb, std::int64_t M, std::int64_t N, std::int64_t K, const float* A, std::int64_t lda,
                 const float* B, std::int64_t ldb, bool accumulate, float* C, std::int64_t ldc) {
  if (M == 0 || N == 0) return;
  if (K == 0) {
    if (!accumulate)
      BLOCKDIFF_CUDA_CHECK(cudaMemset2DAsync(C, std::size_t(ldc) * sizeof(float), 0, std::size_t(N) * sizeof(float),
                                             std::size_t(M), backend::Cuda::stream()));
    return;
  }
  const float alpha = 1.0f, beta = accumulate ? 1.0f : 0.0f;
  BLOCKDIFF_CUBLAS_CHECK(cublasSgemm(backend::Cuda::blas(), tb ? CUBLAS_OP_T : CUBLAS_OP_N,
                                     ta ? CUBLAS_OP_T : CUBLAS_OP_N, int(N), int(M), int(K), &alpha, B, int(ldb), A,
                                     int(lda), &beta, C, int(ldc)));
}

__global__ void embedding_forward_kernel(const float* table, const int* ids, std::int64_t n, int H, float* x) {
  const std::int64_t i = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x;
  if (i < n * H) x[i] = table[std::int64_t(ids[i / H]) * H + i % H];
}
__global__ void embedding_backward_kernel(const float* dx, const int* ids, std::int64_t n, int H, float* dtable) {
  const std::int64_t i = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x;
  if (i < n * H) atomicAdd(dtable + std::int64_t(ids[i / H]) * H + i % H, dx[i]);
}

__global__ void rmsnorm_forward_kernel(const float* x, int H, const float* w, float eps, float* y, float* rstd) {
  const std::int64_t t = blockIdx.x;
  const float* xr = x + t * H;
  float ss = 0.0f;
  for (int i = threadIdx.x; i < H; i += kThreads) ss += xr[i] * xr[i];
  const float r = 1.0f / sqrtf(block_all_reduce(ss, SumOf{}) / float(H) + eps);
  if (threadIdx.x == 0) rstd[t] = r;
  for (int i = threadIdx.x; i < H; i += kThreads) y[t * H + i] = xr[i] * r * w[i];
}

//! dx += rstd · (dy·w) − x · rstd³ / H · Σ(dy·w·x), a block per row.
__global__ void rmsnorm_backward_dx_kernel(const float* dy, const float* x, const float* rstd, int H, const float* w,
                                           float* dx) {
  const std::int64_t t = blockIdx.x;
  const float* xr = x + t * H;
  const float* g = dy + t * H;
  const float r = rstd[t];
  float dot = 0.0f;
  for (int i = threadIdx.x; i < H; i += kThreads) dot += g[i] * w[i] * xr[i];
  const float c = block_all_reduce(dot, SumOf{}) * r * r * r / float(H);
  for (int i = threadIdx.x; i < H; i += kThreads) dx[t * H + i] += r * g[i] * w[i] - c * xr[i];
}

//! Chunks of rows whose dw partial sums rmsnorm_backward keeps.
inline std::int64_t rmsnorm_parts(std::int64_t n) { return std::max<std::int64_t>(1, std::min<std::int64_t>(n, 64)); }

//! partial[p, i] = Σ over chunk p's rows of dy · x · rstd; grid (columns / threads, parts).
__global__ void rmsnorm_backward_dw_partial_kernel(const float* dy, const float* x, const float* rstd, std::int64_t n,
                                                   int H, std::int64_t chunk, float* partial) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= H) return;
  const std::int64_t p = blockIdx.y, begin = p * chunk, end = std::min(n, begin + chunk);
  float s = 0.0f;
  for (std::int64_t t = begin; t < end; ++t) s += dy[t * H + i] * x[t * H + i] * rstd[t];
  partial[p * H + i] = s;
}

__global__ void add_bias_kernel(float* y, std::int64_t n, int m, const float* b) {
  const std::int64_t i = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x;
  if (i < n * m) y[i] += b[i % m];
}
//! db[o] += Σ_t dy[t, o]: a thread per column, the rows in order (a bias's gradient, and the
//! per-chunk partial sums of RMSNorm's weight gradient).
__global__ void column_sum_kernel(const float* dy, std::int64_t n, int m, float* db) {
  const int o = blockIdx.x * blockDim.x + threadIdx.x;
  if (o >= m) return;
  float s = 0.0f;
  for (std::int64_t t = 0; t < n; ++t) s += dy[t * m + o];
  db[o] += s;
}

__global__ void rope_kernel(float* x, std::int64_t n, int heads, int d, const int* positions, const float* cos_t,
                            const float* sin_t, float sign) {
  const int half = d / 2;
  const std::int64_t i = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x;
  if (i >= n * heads * half) return;
  const int k = int(i % half);
  const std::int64_t th = i / half, t = th / heads;
  float* v = x + th * d;
  const std::int64_t p = std::int64_t(positions[t]) * half + k;
  const float a = v[k], b = v[k + half], c = cos_t[p], s = sin_t[p];
  v[k] = a * c - sign * b * s;
  v[k + half] = b * c + sign * a * s;
}

__device__ inline float sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }
__global__ void swiglu_forward_kernel(const float* gate, const float* up, std::int64_t n, float* h) {
  const std::int64_t i = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x;
  if (i < n) h[i] = gate[i] * sigmoid(gate[i]) * up[i];
}
__global__ void swiglu_backward_kernel(const float* dh, const float* gate, const float* up, std::int64_t n,
                                       float* dgate, float* dup) {
  const std::int64_t i = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x;
  if (i >= n) return;
  const float g = gate[i], s = sigmoid(g);
  dgate[i] = dh[i] * up[i] * s * (1.0f + g * (1.0f - s));
  dup[i] = dh[i] * g * s;
}

//! Values per token of q (all heads) and of k or v (all K/V heads).
__device__ inline std::int64_t q_width(const AttentionDims& dims) { return std::int64_t(dims.heads) * dims.head_dim; }
__device__ inline std::int64_t kv_width(const AttentionDims& dims) {
  return std::int64_t(dims.kv_heads) * dims.head_dim;
}
//! Where query or key `i` of row `r` starts in a packed [rows·S, width] array, at head `h`.
__device__ inline std::int64_t at(const AttentionDims& dims, int r, int i, std::int64_t width, int h) {
  return (std::int64_t(r) * dims.length + i) * width + std::int64_t(h) * dims.head_dim;
}
//! a · b over head_dim, by one warp; every lane gets the sum.
__device__ inline float warp_dot(const float* a, const float* b, int d) {
  float s = 0.0f;
  for (int c = threadIdx.x % 32; c < d; c += 32) s += a[c] * b[c];
  return warp_sum(s);
}

//! Grid (S, heads, rows): a block per query. Scores of every allowed key in shared memory, then
//! softmax, the log-sum-exp, and out = P · V.
__global__ void attention_forward_kernel(const float* q, const float* k, const float* v, AttentionDims dims,
                                         const unsigned char* allowed, float scale, float* out, float* lse) {
  extern __shared__ float smem[];
  const int S = dims.length, d = dims.head_dim, i = blockIdx.x, h = blockIdx.y, r = blockIdx.z;
  const int kh = h / (dims.heads / dims.kv_heads);
  const std::int64_t qd = q_width(dims), kvd = kv_width(dims);
  float* qs = smem;
  float* p = smem + d;
  for (int c = threadIdx.x; c < d; c += kThreads) qs[c] = q[at(dims, r, i, qd, h) + c];
  __syncthreads();
  const unsigned char* a = allowed + std::int64_t(i) * S;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int j = warp; j < S; j += kThreads / 32) {
    const float s = a[j] ? warp_dot(qs, k + at(dims, r, j, kvd, kh), d) * scale : -INFINITY;
    if (lane == 0) p[j] = s;
  }
  __syncthreads();
  float mx = -INFINITY;
  for (int j = threadIdx.x; j < S; j += kThreads) mx = fmaxf(mx, p[j]);
  mx = block_all_reduce(mx, MaxOf{});
  float sum = 0.0f;
  for (int j = threadIdx.x; j < S; j += kThreads) {
    const float e = a[j] ? expf(p[j] - mx) : 0.0f;
    p[j] = e;
    sum += e;
  }
  sum = block_all_reduce(sum, SumOf{});  // synchronises, so every p[j] is written
  if (threadIdx.x == 0) lse[(std::int64_t(r) * dims.heads + h) * S + i] = mx + logf(sum);
  const float inv = 1.0f / sum;
  for (int c = threadIdx.x; c < d; c += kThreads) {
    float acc = 0.0f;
    for (int j = 0; j < S; ++j)
      if (a[j]) acc += p[j] * v[at(dims, r, j, kvd, kh) + c];
    out[at(dims, r, i, qd, h) + c] = acc * inv;
  }
}

//! Grid (S, heads, rows): a block per query. delta = rowsum(dO ∘ O) (kept for the dk/dv
//! kernel); dS_j = P_j (dO · v_j − delta); dq = scale · Σ_j dS_j k_j.
__global__ void attention_backward_dq_kernel(const float* dout, const float* q, const float* k, const float* v,
                                             const float* out, const float* lse, AttentionDims dims,
                                             const unsigned char* allowed, float scale, float* dq, float* delta) {
  extern __shared__ float smem[];
  const int S = dims.length, d = dims.head_dim, i = blockIdx.x, h = blockIdx.y, r = blockIdx.z;
  const int kh = h / (dims.heads / dims.kv_heads);
  const std::int64_t qd = q_width(dims), kvd = kv_width(dims), qi = at(dims, r, i, qd, h);
  const std::int64_t stat = (std::int64_t(r) * dims.heads + h) * S + i;
  float* qs = smem;
  float* dos = smem + d;
  float* ds = smem + 2 * d;
  float part = 0.0f;
  for (int c = threadIdx.x; c < d; c += kThreads) {
    qs[c] = q[qi + c];
    dos[c] = dout[qi + c];
    part += dout[qi + c] * out[qi + c];
  }
  const float D = block_all_reduce(part, SumOf{});  // synchronises: qs and dos are loaded
  if (threadIdx.x == 0) delta[stat] = D;
  const float l = lse[stat];
  const unsigned char* a = allowed + std::int64_t(i) * S;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int j = warp; j < S; j += kThreads / 32) {
    float g = 0.0f;
    if (a[j]) {
      const float pj = expf(warp_dot(qs, k + at(dims, r, j, kvd, kh), d) * scale - l);
      g = pj * (warp_dot(dos, v + at(dims, r, j, kvd, kh), d) - D);
    }
    if (lane == 0) ds[j] = g;
  }
  __syncthreads();
  for (int c = threadIdx.x; c < d; c += kThreads) {
    float acc = 0.0f;
    for (int j = 0; j < S; ++j)
      if (a[j]) acc += ds[j] * k[at(dims, r, j, kvd, kh) + c];
    dq[qi + c] = scale * acc;
  }
}

//! Grid (S, kv_heads, rows): a block per key and K/V head, over the heads of its group:
//! dk = scale · Σ_h Σ_i dS_ij q_i, dv = Σ_h Σ_i P_ij dO_i (both overwritten).
__global__ void attention_backward_dkdv_kernel(const float* dout, const float* q, const float* k, const float* v,
                                               const float* lse, const float* delta, AttentionDims dims,
                                               const unsigned char* allowed, float scale, float* dk, float* dv) {
  extern __shared__ float smem[];
  const int S = dims.length, d = dims.head_dim, j = blockIdx.x, kh = blockIdx.y, r = blockIdx.z;
  const int group = dims.heads / dims.kv_heads;
  const std::int64_t qd = q_width(dims), kvd = kv_width(dims), kj = at(dims, r, j, kvd, kh);
  float* ks = smem;
  float* vs = smem + d;
  float* acc_k = smem + 2 * d;
  float* acc_v = smem + 3 * d;
  float* p = smem + 4 * d;
  float* ds = p + S;
  for (int c = threadIdx.x; c < d; c += kThreads) {
    ks[c] = k[kj + c];
    vs[c] = v[kj + c];
    acc_k[c] = acc_v[c] = 0.0f;
  }
  __syncthreads();
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int h = kh * group; h < (kh + 1) * group; ++h) {
    const std::int64_t stat = (std::int64_t(r) * dims.heads + h) * S;
    for (int i = warp; i < S; i += kThreads / 32) {
      float pi = 0.0f, g = 0.0f;
      if (allowed[std::int64_t(i) * S + j]) {
        pi = expf(warp_dot(ks, q + at(dims, r, i, qd, h), d) * scale - lse[stat + i]);
        g = pi * (warp_dot(vs, dout + at(dims, r, i, qd, h), d) - delta[stat + i]);
      }
      if (lane == 0) p[i] = pi, ds[i] = g;
    }
    __syncthreads();
    for (int c = threadIdx.x; c < d; c += kThreads) {
      float sk = 0.0f, sv = 0.0f;
      for (int i = 0; i < S; ++i) {
        sk += ds[i] * q[at(dims, r, i, qd, h) + c];
        sv += p[i] * dout[at(dims, r, i, qd, h) + c];
      }
      acc_k[c] += sk;
      acc_v[c] += sv;
    }
    __syncthreads();  // p and ds are rewritten by the next head
  }
  for (int c = threadIdx.x; c < d; c += kThreads) {
    dk[kj + c] = scale * acc_k[c];
    dv[kj + c] = acc_v[c];
  }
}

//! A block per row of logits z[V]: loss_i = logsumexp(z) − z[label]; with `backward`, z becomes
//! weight · (softmax(z) − onehot(label)).
__global__ void cross_entropy_kernel(float* logits, int V, const int* labels, float weight, bool backward,
                                     double* row_loss) {
  __shared__ float lse_shared;
  const std::int64_t i = blockIdx.x;
  float* z = logits + i * V;
  float mx = -INFINITY;
  for (int j = threadIdx.x; j < V; j += kThreads) mx = fmaxf(mx, z[j]);
  mx = block_all_reduce(mx, MaxOf{});
  float sum = 0.0f;
  for (int j = threadIdx.x; j < V; j += kThreads) sum += expf(z[j] - mx);
  sum = block_all_reduce(sum, SumOf{});
  if (threadIdx.x == 0) {
    const float lse = mx + logf(sum);
    lse_shared = lse;
    row_loss[i] = double(lse - z[labels[i]]);
  }
  __syncthreads();  // z[label] is read before anyone overwrites it
  if (!backward) return;
  const float lse = lse_shared;
  for (int j = threadIdx.x; j < V; j += kThreads) z[j] = weight * expf(z[j] - lse) - (j == labels[i] ? weight : 0.0f);
}

__global__ void gather_rows_kernel(const float* src, const std::int64_t* index, std::int64_t n, int H, float* dst) {
  const std::int64_t i = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x;
  if (i < n * H) dst[i] = src[index[i / H] * H + i % H];
}
__global__ void scatter_add_rows_kernel(const float* src, const std::int64_t* index, std::int64_t n, int H,
                                        float* dst) {
  const std::int64_t i = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x;
  if (i < n * H) atomicAdd(dst + index[i / H] * H + i % H, src[i]);
}

//! partial[block] = Σ x² over a grid-strided share, in double; then total = Σ partial in order.
constexpr int kNormBlocks = 256;
__global__ void sum_squares_kernel(const float* x, std::size_t n, double* partial) {
  using Reduce = cub::BlockReduce<double, kThreads>;
  __shared__ typename Reduce::TempStorage tmp;
  double s = 0.0;
  for (std::size_t i = blockIdx.x * std::size_t(kThreads) + threadIdx.x; i < n; i += std::size_t(gridDim.x) * kThreads)
    s += double(x[i]) * double(x[i]);
  const double total = Reduce(tmp).Sum(s);
  if (threadIdx.x == 0) partial[blockIdx.x] = total;
}
__global__ void add_partials_kernel(double* partial, int parts) {
  if (threadIdx.x != 0 || blockIdx.x != 0) return;
  double s = 0.0;
  for (int p = 0; p < parts; ++p) s += partial[p];
  partial[0] = s;
}
__global__ void scale_kernel(float* x, std::size_t n, float s) {
  const std::size_t i = blockIdx.x * std::size_t(blockDim.x) + threadIdx.x;
  if (i < n) x[i] *= s;
}
__global__ void adamw_kernel(float* params, const float* grads, float* m, float* v, std::size_t begin,
                             std::size_t end, ::blockdiff::train::ops::AdamWStep<float> step, bool decay) {
  const std::size_t i = begin + blockIdx.x * std::size_t(blockDim.x) + threadIdx.x;
  if (i < end) step.apply(params[i], grads[i], m[i], v[i], decay);
}

inline void check_launch() { BLOCKDIFF_CUDA_CHECK(cudaGetLastError()); }

}  // namespace detail::cuda::training

namespace train::ops {

namespace kernels = ::blockdiff::detail::cuda::training;

template <>
struct Ops<backend::Cuda> : backend::Cuda {
  using Backend = backend::Cuda;
  struct Scope {};

  template <class T>
  static void zero(T* dst, std::size_t n) {
    if (n) BLOCKDIFF_CUDA_CHECK(cudaMemsetAsync(dst, 0, n * sizeof(T), Backend::stream()));
  }

  //! The longest sequence and the widest head the attention kernels take: a block keeps a score
  //! per key (two in the backward) and up to four head_dim vectors in the 48 KB of shared memory
  //! a kernel gets without opting in (4 · 256 + 2 · 5,120 floats: 44 KB).
  static constexpr int attention_max_length = 5 * 1024;
  static constexpr int attention_max_head_dim = 256;

  static std::int64_t rmsnorm_scratch(std::int64_t n, int H) { return kernels::rmsnorm_parts(n) * H; }
  static std::int64_t attention_scratch(const AttentionDims& dims) {
    return std::max<std::int64_t>(1, std::int64_t(dims.rows) * dims.heads * dims.length);
  }

  static void embedding_forward(const float* table, const int* ids, std::int64_t n, int H, float* x) {
    if (n == 0) return;
    kernels::embedding_forward_kernel<<<kernels::blocks_for(n * H), 256, 0, Backend::stream()>>>(table, ids, n, H, x);
    kernels::check_launch();
  }
  static void embedding_backward(const float* dx, const int* ids, std::int64_t n, int H, float* dtable) {
    if (n == 0) return;
    kernels::embedding_backward_kernel<<<kernels::blocks_for(n * H), 256, 0, Backend::stream()>>>(dx, ids, n, H, dtable);
    kernels::check_launch();
  }
  static void rmsnorm_forward(const float* x, std::int64_t n, int H, const float* w, float eps, float* y, float* rstd) {
    if (n == 0) return;
    kernels::rmsnorm_forward_kernel<<<unsigned(n), kernels::kThreads, 0, Backend::stream()>>>(x, H, w, eps, y, rstd);
    kernels::check_launch();
  }
  //! `scratch` holds rmsnorm_scratch(n, H) values.
  static void rmsnorm_backward(const float* dy, const float* x, const float* rstd, std::int64_t n, int H,
                               const float* w, float* dx, float* dw, float* scratch) {
    if (n == 0) return;
    const cudaStream_t s = Backend::stream();
    kernels::rmsnorm_backward_dx_kernel<<<unsigned(n), kernels::kThreads, 0, s>>>(dy, x, rstd, H, w, dx);
    kernels::check_launch();
    const std::int64_t parts = kernels::rmsnorm_parts(n), chunk = (n + parts - 1) / parts;
    kernels::rmsnorm_backward_dw_partial_kernel<<<dim3(kernels::blocks_for(H), unsigned(parts)), 256, 0, s>>>(dy, x, rstd, n, H,
                                                                                                     chunk, scratch);
    kernels::check_launch();
    kernels::column_sum_kernel<<<kernels::blocks_for(H), 256, 0, s>>>(scratch, parts, H, dw);
    kernels::check_launch();
  }
  static void linear_forward(const float* x, std::int64_t n, int k, const float* w, int m, const float* b, float* y,
                             bool accumulate = false) {
    kernels::gemm(false, true, n, m, k, x, k, w, k, accumulate, y, m);
    if (b == nullptr || n == 0 || m == 0) return;
    kernels::add_bias_kernel<<<kernels::blocks_for(n * m), 256, 0, Backend::stream()>>>(y, n, m, b);
    kernels::check_launch();
  }
  static void linear_backward(const float* dy, const float* x, std::int64_t n, int k, const float* w, int m, float* dx,
                              float* dw, float* db, bool accumulate_dx = false) {
    if (dx != nullptr) kernels::gemm(false, false, n, k, m, dy, m, w, k, accumulate_dx, dx, k);
    kernels::gemm(true, false, m, k, n, dy, m, x, k, true, dw, k);
    if (db == nullptr || m == 0) return;
    kernels::column_sum_kernel<<<kernels::blocks_for(m), 256, 0, Backend::stream()>>>(dy, n, m, db);
    kernels::check_launch();
  }
  static void rope(float* x, std::int64_t n, int heads, int d, const int* positions, const float* cos,
                   const float* sin, bool inverse = false) {
    if (n == 0) return;
    kernels::rope_kernel<<<kernels::blocks_for(n * heads * (d / 2)), 256, 0, Backend::stream()>>>(x, n, heads, d, positions, cos,
                                                                                        sin, inverse ? -1.0f : 1.0f);
    kernels::check_launch();
  }
  static void swiglu_forward(const float* gate, const float* up, std::int64_t n, float* h) {
    if (n == 0) return;
    kernels::swiglu_forward_kernel<<<kernels::blocks_for(n), 256, 0, Backend::stream()>>>(gate, up, n, h);
    kernels::check_launch();
  }
  static void swiglu_backward(const float* dh, const float* gate, const float* up, std::int64_t n, float* dgate,
                              float* dup) {
    if (n == 0) return;
    kernels::swiglu_backward_kernel<<<kernels::blocks_for(n), 256, 0, Backend::stream()>>>(dh, gate, up, n, dgate, dup);
    kernels::check_launch();
  }
  //! `allowed` is the [S, S] mask in device memory; `scratch` is unused (the host's signature).
  static void attention_forward(const float* q, const float* k, const float* v, const AttentionDims& dims,
                                const unsigned char* allowed, float scale, float* out, float* lse, float* /*scratch*/) {
    if (dims.rows == 0 || dims.length == 0) return;
    check(dims);
    const std::size_t shared = std::size_t(dims.head_dim + dims.length) * sizeof(float);
    kernels::attention_forward_kernel<<<grid(dims, dims.heads), kernels::kThreads, shared,
                                                    Backend::stream()>>>(q, k, v, dims, allowed, scale, out, lse);
    kernels::check_launch();
  }
  //! `scratch` holds attention_scratch(dims) values (each query's rowsum(dO ∘ O)).
  static void attention_backward(const float* dout, const float* q, const float* k, const float* v, const float* out,
                                 const float* lse, const AttentionDims& dims, const unsigned char* allowed, float scale,
                                 float* dq, float* dk, float* dv, float* scratch) {
    if (dims.rows == 0 || dims.length == 0) return;
    check(dims);
    const std::size_t dq_shared = std::size_t(2 * dims.head_dim + dims.length) * sizeof(float);
    kernels::attention_backward_dq_kernel<<<grid(dims, dims.heads), kernels::kThreads, dq_shared, Backend::stream()>>>(
        dout, q, k, v, out, lse, dims, allowed, scale, dq, scratch);
    kernels::check_launch();
    const std::size_t kv_shared = std::size_t(4 * dims.head_dim + 2 * dims.length) * sizeof(float);
    kernels::attention_backward_dkdv_kernel<<<grid(dims, dims.kv_heads), kernels::kThreads, kv_shared, Backend::stream()>>>(
        dout, q, k, v, lse, scratch, dims, allowed, scale, dk, dv);
    kernels::check_launch();
  }
  //! As the host's: the summed loss of n rows, and with `dx` the gradients; `logits` holds n·V
  //! values of device memory. Waits for the device (the loss comes back to the host).
  static double cross_entropy_head(const float* x, std::int64_t n, int H, const float* head, int V, const int* labels,
                                   float weight, float* logits, float* dx, float* dhead) {
    if (n == 0) return 0.0;
    kernels::gemm(false, true, n, V, H, x, H, head, H, false, logits, V);
    double* row_loss = Backend::scratch<double>(std::size_t(n));
    kernels::cross_entropy_kernel<<<unsigned(n), kernels::kThreads, 0, Backend::stream()>>>(logits, V, labels, weight,
                                                                                         dx != nullptr, row_loss);
    kernels::check_launch();
    if (dx != nullptr) {
      kernels::gemm(false, false, n, H, V, logits, V, head, H, false, dx, H);
      kernels::gemm(true, false, V, H, n, logits, V, x, H, true, dhead, H);
    }
    std::vector<double> losses(static_cast<std::size_t>(n));
    Backend::download(losses.data(), row_loss, losses.size());
    double loss = 0.0;
    for (double l : losses) loss += l;
    return loss;
  }
  static void gather_rows(const float* src, const std::int64_t* index, std::int64_t n, int H, float* dst) {
    if (n == 0) return;
    kernels::gather_rows_kernel<<<kernels::blocks_for(n * H), 256, 0, Backend::stream()>>>(src, index, n, H, dst);
    kernels::check_launch();
  }
  //! Σ x², in double, back on the host (waits for the device).
  static double sum_squares(const float* x, std::size_t n) {
    if (n == 0) return 0.0;
    double* partial = Backend::scratch<double>(kernels::kNormBlocks);
    const int blocks = int(std::min<std::size_t>(kernels::kNormBlocks, (n + kernels::kThreads - 1) / kernels::kThreads));
    kernels::sum_squares_kernel<<<blocks, kernels::kThreads, 0, Backend::stream()>>>(x, n, partial);
    kernels::check_launch();
    kernels::add_partials_kernel<<<1, 32, 0, Backend::stream()>>>(partial, blocks);
    kernels::check_launch();
    double total = 0.0;
    Backend::download(&total, partial, 1);
    return total;
  }
  static void scale(float* x, std::size_t n, float s) {
    if (n == 0) return;
    kernels::scale_kernel<<<kernels::blocks_for(std::int64_t(n)), 256, 0, Backend::stream()>>>(x, n, s);
    kernels::check_launch();
  }
  //! The AdamW update of elements [begin, end).
  static void adamw(float* params, const float* grads, float* m, float* v, std::size_t begin, std::size_t end,
                    const AdamWStep<float>& step, bool decay) {
    if (end <= begin) return;
    kernels::adamw_kernel<<<kernels::blocks_for(std::int64_t(end - begin)), 256, 0, Backend::stream()>>>(
        params, grads, m, v, begin, end, step, decay);
    kernels::check_launch();
  }
  static void scatter_add_rows(const float* src, const std::int64_t* index, std::int64_t n, int H, float* dst) {
    if (n == 0) return;
    kernels::scatter_add_rows_kernel<<<kernels::blocks_for(n * H), 256, 0, Backend::stream()>>>(src, index, n, H, dst);
    kernels::check_launch();
  }

 private:
  static dim3 grid(const AttentionDims& dims, int heads) {
    return dim3(unsigned(dims.length), unsigned(heads), unsigned(dims.rows));
  }
  static void check(const AttentionDims& dims) {
    require(dims.length <= attention_max_length, "CUDA training attention: sequences of ", dims.length,
            " tokens are longer than the kernels take (", attention_max_length, ")");
    require(dims.head_dim <= attention_max_head_dim, "CUDA training attention: head_dim ", dims.head_dim,
            " is wider than the kernels take (", attention_max_head_dim, ")");
    require(dims.kv_heads > 0 && dims.heads % dims.kv_heads == 0, "CUDA training attention: ", dims.heads,
            " heads do not divide into ", dims.kv_heads, " K/V heads");
  }
};

}  // namespace train::ops
}  // namespace blockdiff
