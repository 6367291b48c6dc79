// op::Linear on the device: y[n, m] (=|+=) x[n, k] · w[m, k]ᵀ (+ bias[m]), w in f32 or BF16.
//
// Two implementations, chosen by the number of rows:
//  - up to `few_rows_max` rows (a decode step, a sub-block): our own kernel on the CUDA cores.
//    A block owns 2 or 4 output features over all of k; its threads stream the weight rows
//    with 16-byte loads (8 BF16 or 4 f32 values), widen BF16 by a shift, and keep one f32
//    accumulator per (feature, row). The activations stay f32 and are read through L1, where
//    every block of the SM shares them. Bias and accumulation into y are applied as the result is
//    stored, so a residual add costs no extra pass. Each weight byte is read once whatever the
//    number of rows, which is what makes a sub-block forward cost about what an AR step costs.
//  - more rows (a block, a prompt): cuBLAS. f32 weights use an f32 GEMM (full f32 math, no TF32);
//    BF16 weights use cublasGemmEx with the activations rounded to BF16 and f32 accumulation
//    and output, on the tensor cores.
#pragma once

#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <span>

#include "blockdiff/backend/cuda/runtime.cuh"
#include "blockdiff/core/dtype.hpp"

namespace blockdiff {
namespace detail::cuda {

inline unsigned blocks_for(std::int64_t n, int threads = 256) {
  return static_cast<unsigned>((n + threads - 1) / threads);
}

constexpr int few_rows_max = 8;        //!< rows up to which the CUDA-core kernel runs
constexpr int few_rows_threads = 128;  //!< threads per block; a block owns few_rows_features<R> features
//! Output features per block: more rows share each activation load among more features.
template <int R>
constexpr int few_rows_features = R >= 4 ? 4 : 2;

//! 16 bytes of weights widened to f32.
template <class W>
struct Weights16;
template <>
struct Weights16<float> {
  static constexpr int n = 4;
  __device__ static void load(const float* p, float (&out)[n]) {
    const float4 v = __ldcs(reinterpret_cast<const float4*>(p));  // streamed: keep L1 for the activations
    out[0] = v.x, out[1] = v.y, out[2] = v.z, out[3] = v.w;
  }
};
template <>
struct Weights16<bf16> {
  static constexpr int n = 8;
  __device__ static void load(const bf16* p, float (&out)[n]) {
    const uint4 v = __ldcs(reinterpret_cast<const uint4*>(p));
    const unsigned words[4] = {v.x, v.y, v.z, v.w};
    for (int i = 0; i < 4; ++i) {  // element 2i is the low half of word i (little-endian)
      out[2 * i] = __uint_as_float(words[i] << 16);
      out[2 * i + 1] = __uint_as_float(words[i] & 0xffff0000u);
    }
  }
};

//! Sums each of the N values a lane holds over the warp's 32 lanes. With N = 32 it is a
//! butterfly that halves the values every step (31 shuffles instead of 5 N): afterwards lane l
//! holds the sum of value l. Smaller N use plain reductions and every lane holds every sum.
template <int N>
__device__ inline void warp_sums(float (&v)[N]) {
  if constexpr (N == 32) {
    const int lane = threadIdx.x % 32;
    for (int half = 16; half >= 1; half /= 2) {
      const bool upper = (lane & half) != 0;
      for (int i = 0; i < half; ++i) {
        const float send = upper ? v[i] : v[i + half];
        const float keep = upper ? v[i + half] : v[i];
        v[i] = keep + __shfl_xor_sync(0xffffffffu, send, half);
      }
    }
  } else {
    for (int i = 0; i < N; ++i)
      for (int off = 16; off > 0; off >>= 1) v[i] += __shfl_xor_sync(0xffffffffu, v[i], off);
  }
}

//! What a few-row launch computes, as a block sees it: which weight rows its F features read,
//! and what it stores once their sums over k are known.
//!
//! Stack: up to three products of the same input (q, k and v; or one Linear), each with its
//! bias, one after another in the grid, a block never straddling two.
template <class W, int F, int R>
struct StackPlan {
  static constexpr int max_products = 3;
  const W* w[max_products] = {};
  int m[max_products] = {};
  const float* bias[max_products] = {};
  float* y[max_products] = {};
  int first_block[max_products + 1] = {};  //!< blocks [first_block[i], first_block[i + 1]) compute product i
  int count = 0;
  bool accumulate = false;

  __host__ void add(const W* wi, int mi, const float* bi, float* yi) {
    w[count] = wi, m[count] = mi, bias[count] = bi, y[count] = yi;
    first_block[count + 1] = first_block[count] + (mi + F - 1) / F;
    ++count;
  }
  int blocks() const { return first_block[count]; }

  //! a[i] with constant indices only: a kernel parameter indexed by a variable would be copied
  //! to local memory by every thread.
  template <class T, int N>
  __device__ static T pick(const T (&a)[N], int i) {
    static_assert(N >= max_products);
    return i == 0 ? a[0] : i == 1 ? a[1] : a[2];
  }
  __device__ int product(int block) const {
    return (count > 1 && block >= first_block[1]) + (count > 2 && block >= first_block[2]);
  }
  __device__ void rows(int block, int k, const W* (&row)[F]) const {
    const int i = product(block), f0 = (block - pick(first_block, i)) * F, mi = pick(m, i);
    const W* wi = pick(w, i);
    for (int f = 0; f < F; ++f) row[f] = wi + static_cast<std::int64_t>(min(f0 + f, mi - 1)) * k;  // clamped
  }
  //! sums[f * R + r]; thread t < F * R stores feature t / R of row t % R.
  __device__ void store(int block, const float* sums) const {
    if (threadIdx.x >= F * R) return;
    const int i = product(block), mi = pick(m, i);
    const int f = (block - pick(first_block, i)) * F + static_cast<int>(threadIdx.x) / R;
    const int r = static_cast<int>(threadIdx.x) % R;
    if (f >= mi) return;
    const float* bi = pick(bias, i);
    const float v = sums[threadIdx.x] + (bi != nullptr ? bi[f] : 0.0f);
    float* out = pick(y, i) + static_cast<std::int64_t>(r) * mi + f;
    *out = accumulate ? *out + v : v;
  }
};

//! SwiGLU: a block's first F/2 features are gate rows, the next F/2 the same up rows; it stores
//! silu(gate) · up, so neither product is written out.
template <class W, int F, int R>
struct SwiGluPlan {
  static constexpr int half = F / 2;
  const W* gate = nullptr;
  const W* up = nullptr;
  int m = 0;
  float* out = nullptr;

  int blocks() const { return (m + half - 1) / half; }
  __device__ void rows(int block, int k, const W* (&row)[F]) const {
    for (int f = 0; f < half; ++f) {
      const std::int64_t feature = min(block * half + f, m - 1);  // clamped, not stored
      row[f] = gate + feature * k;
      row[half + f] = up + feature * k;
    }
  }
  __device__ void store(int block, const float* sums) const {
    if (threadIdx.x >= half * R) return;
    const int fl = static_cast<int>(threadIdx.x) / R, r = static_cast<int>(threadIdx.x) % R, f = block * half + fl;
    if (f >= m) return;
    const float g = sums[fl * R + r], u = sums[(half + fl) * R + r];
    out[static_cast<std::int64_t>(r) * m + f] = g / (1.0f + expf(-g)) * u;  // as op::SwiGlu computes it
  }
};

//! R rows for the F features of each block (which rows, and what is stored, is the Plan's).
//! The block's threads stride over k together (a block-wide split of k: many loads in flight
//! even for a short matrix), each keeping F x R partial sums; the warps' sums meet in shared
//! memory and are added in a fixed order, so the result is deterministic. Columns [0, k_vec)
//! run vectorised (k_vec is a multiple of the vector width, 0 when the operands are not 16-byte
//! aligned), the rest one element per thread.
template <class W, int R, class Plan>
__global__ void __launch_bounds__(few_rows_threads)
    few_rows_kernel(const float* __restrict__ x, int k, const Plan plan, int k_vec) {
  constexpr int V = Weights16<W>::n, F = few_rows_features<R>, warps = few_rows_threads / 32;
  constexpr int N = F * R > 6 ? 32 : F * R;  // values per thread, padded for the butterfly
  const W* row[F];
  plan.rows(static_cast<int>(blockIdx.x), k, row);
  float acc[N] = {};  // acc[f * R + r]
#pragma unroll 2
  for (int j = threadIdx.x * V; j < k_vec; j += few_rows_threads * V) {
    float wf[F][V];
    for (int f = 0; f < F; ++f) Weights16<W>::load(row[f] + j, wf[f]);
#pragma unroll
    for (int r = 0; r < R; ++r) {
      float xv[V];
      const float4* xp = reinterpret_cast<const float4*>(x + static_cast<std::int64_t>(r) * k + j);
      for (int q = 0; q < V / 4; ++q) {
        const float4 t = __ldg(xp + q);
        xv[4 * q] = t.x, xv[4 * q + 1] = t.y, xv[4 * q + 2] = t.z, xv[4 * q + 3] = t.w;
      }
      for (int f = 0; f < F; ++f)
        for (int e = 0; e < V; ++e) acc[f * R + r] = fmaf(wf[f][e], xv[e], acc[f * R + r]);
    }
  }
  for (int j = k_vec + threadIdx.x; j < k; j += few_rows_threads) {
    for (int f = 0; f < F; ++f) {
      const float wv = to_float(row[f][j]);
      for (int r = 0; r < R; ++r) acc[f * R + r] = fmaf(wv, x[static_cast<std::int64_t>(r) * k + j], acc[f * R + r]);
    }
  }
  warp_sums(acc);
  __shared__ float partial[warps][F * R];
  __shared__ float sums[F * R];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if constexpr (N == 32) {
    if (lane < F * R) partial[warp][lane] = acc[0];
  } else if (lane == 0) {
    for (int i = 0; i < F * R; ++i) partial[warp][i] = acc[i];
  }
  __syncthreads();
  if (threadIdx.x < F * R) {
    float v = 0.0f;
    for (int i = 0; i < warps; ++i) v += partial[i][threadIdx.x];
    sums[threadIdx.x] = v;
  }
  __syncthreads();
  plan.store(static_cast<int>(blockIdx.x), sums);
}

//! Launches the kernel for R rows with the plan that make_plan(F) returns.
template <class W, int R, template <class, int, int> class Plan, class Make>
void few_rows_launch(const float* x, int k, bool aligned, Make&& make_plan, cudaStream_t stream) {
  constexpr int F = few_rows_features<R>;
  const Plan<W, F, R> plan = make_plan.template operator()<Plan<W, F, R>>();
  if (plan.blocks() == 0) return;
  few_rows_kernel<W, R, Plan<W, F, R>>
      <<<static_cast<unsigned>(plan.blocks()), few_rows_threads, 0, stream>>>(x, k, plan, aligned ? k : 0);
  BLOCKDIFF_CUDA_CHECK(cudaGetLastError());
}

//! Dispatches n (1 to few_rows_max) to its compiled row count.
template <class W, template <class, int, int> class Plan, class Make>
void few_rows_dispatch(const float* x, int n, int k, bool aligned, Make&& make_plan, cudaStream_t stream) {
  switch (n) {
    case 1: return few_rows_launch<W, 1, Plan>(x, k, aligned, make_plan, stream);
    case 2: return few_rows_launch<W, 2, Plan>(x, k, aligned, make_plan, stream);
    case 3: return few_rows_launch<W, 3, Plan>(x, k, aligned, make_plan, stream);
    case 4: return few_rows_launch<W, 4, Plan>(x, k, aligned, make_plan, stream);
    case 5: return few_rows_launch<W, 5, Plan>(x, k, aligned, make_plan, stream);
    case 6: return few_rows_launch<W, 6, Plan>(x, k, aligned, make_plan, stream);
    case 7: return few_rows_launch<W, 7, Plan>(x, k, aligned, make_plan, stream);
    case 8: return few_rows_launch<W, 8, Plan>(x, k, aligned, make_plan, stream);
    default: fail("few-row product: ", n, " rows; this kernel takes 1 to ", few_rows_max);
  }
}

inline bool aligned16(const void* p) { return reinterpret_cast<std::uintptr_t>(p) % 16 == 0; }

//! Whether the vectorised path may run: k a multiple of the vector width, operands 16-byte aligned.
template <class W>
bool few_rows_aligned(const float* x, int k, std::initializer_list<const W*> ws) {
  return k % Weights16<W>::n == 0 && aligned16(x) && std::all_of(ws.begin(), ws.end(), aligned16);
}

//! The CUDA-core product for 1 <= n <= few_rows_max rows.
template <class W>
void few_rows_linear(const float* x, int n, int k, const W* w, int m, const float* bias, float* y, bool accumulate,
                     cudaStream_t stream) {
  few_rows_dispatch<W, StackPlan>(
      x, n, k, few_rows_aligned<W>(x, k, {w}),
      [&]<class P>() {
        P p;
        p.add(w, m, bias, y);
        p.accumulate = accumulate;
        return p;
      },
      stream);
}

__global__ void broadcast_rows_kernel(const float* bias, std::int64_t n, int m, float* y) {
  const std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x;
  if (i < n * m) y[i] = bias[i % m];
}

__global__ void round_to_bf16_kernel(const float* x, std::int64_t n, bf16* out) {
  const std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x;
  if (i < n) out[i] = to_bf16(x[i]);
}

//! The activations as cuBLAS takes them for weights of type W: x itself for f32 weights; for
//! BF16 weights, x rounded to BF16 into scratch (once for all the products of one input).
template <class W>
const void* blas_input(const float* x, std::int64_t n, int k) {
  if constexpr (std::is_same_v<W, float>) {
    return x;
  } else {
    bf16* xb = backend::Cuda::scratch<bf16>(static_cast<std::size_t>(n * k));
    round_to_bf16_kernel<<<blocks_for(n * k), 256, 0, backend::Cuda::stream()>>>(x, n * k, xb);
    BLOCKDIFF_CUDA_CHECK(cudaGetLastError());
    return xb;
  }
}

//! One cuBLAS product of an input from blas_input: an f32 GEMM for f32 weights (no TF32), GemmEx
//! with BF16 operands and f32 accumulation and output for BF16 weights. A bias is broadcast
//! into y first and accumulated (beta = 1).
template <class W>
void blas_product(const void* input, std::int64_t n, int k, const W* w, int m, const float* bias, float* y,
                  bool accumulate) {
  float beta = accumulate ? 1.0f : 0.0f;
  if (bias != nullptr && !accumulate) {
    broadcast_rows_kernel<<<blocks_for(n * m), 256, 0, backend::Cuda::stream()>>>(bias, n, m, y);
    BLOCKDIFF_CUDA_CHECK(cudaGetLastError());
    beta = 1.0f;
  }
  const float alpha = 1.0f;
  // Row-major y[n, m] is column-major yᵀ[m, n] = w · xᵀ, w read as the transpose of column-major [k, m].
  constexpr cudaDataType_t type = std::is_same_v<W, float> ? CUDA_R_32F : CUDA_R_16BF;
  BLOCKDIFF_CUBLAS_CHECK(cublasGemmEx(backend::Cuda::blas(), CUBLAS_OP_T, CUBLAS_OP_N, m, static_cast<int>(n), k, &alpha,
                                      w, type, k, input, type, k, &beta, y, CUDA_R_32F, m, CUBLAS_COMPUTE_32F,
                                      CUBLAS_GEMM_DEFAULT));
}

//! The cuBLAS path for any n.
template <class W>
void blas_linear(const float* x, std::int64_t n, int k, const W* w, int m, const float* bias, float* y,
                 bool accumulate) {
  blas_product(blas_input<W>(x, n, k), n, k, w, m, bias, y, accumulate);
}

}  // namespace detail::cuda

template <>
struct Kernel<backend::Cuda, op::Linear> {
  //! y[n, m] (=|+=) x[n, k] · w[m, k]ᵀ (+ bias), w in f32 or BF16 (see the top of this file).
  template <class W>
  static void run(const float* x, std::int64_t n, int k, const W* w, int m, const float* bias, float* y,
                  bool accumulate = false) {
    static_assert(std::is_same_v<W, float> || std::is_same_v<W, bf16>, "CUDA Linear: weights are f32 or BF16");
    if (n == 0 || m == 0) return;
    require(bias == nullptr || !accumulate, "Linear on CUDA: bias with accumulate is not supported");
    if (n <= detail::cuda::few_rows_max)
      detail::cuda::few_rows_linear(x, static_cast<int>(n), k, w, m, bias, y, accumulate, backend::Cuda::stream());
    else
      detail::cuda::blas_linear(x, n, k, w, m, bias, y, accumulate);
  }
};

template <>
struct Kernel<backend::Cuda, op::Linears> {
  //! Up to 8 rows: one launch for each 3 products. More: the input rounded once, one cuBLAS
  //! product each.
  template <class W>
  static void run(const float* x, std::int64_t n, int k, std::span<const LinearOut<W>> outs) {
    using namespace detail::cuda;
    if (n == 0) return;
    if (n > few_rows_max) {
      const void* input = blas_input<W>(x, n, k);
      for (const auto& o : outs) blas_product(input, n, k, o.w, o.m, o.bias, o.y, false);
      return;
    }
    constexpr std::size_t per_launch = StackPlan<W, 2, 1>::max_products;
    for (std::size_t first = 0; first < outs.size(); first += per_launch) {
      const auto group = outs.subspan(first, std::min(per_launch, outs.size() - first));
      const bool aligned = few_rows_aligned<W>(x, k, {}) &&
                           std::all_of(group.begin(), group.end(), [](const auto& o) { return aligned16(o.w); });
      few_rows_dispatch<W, StackPlan>(
          x, static_cast<int>(n), k, aligned,
          [&]<class P>() {
            P p;
            for (const auto& o : group) p.add(o.w, o.m, o.bias, o.y);
            return p;
          },
          backend::Cuda::stream());
    }
  }
};

}  // namespace blockdiff
