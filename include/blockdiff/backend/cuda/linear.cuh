// The products on the device: op::Linear, y[n, m] (=|+=) x[n, k] · w[m, k]ᵀ (+ bias[m]), w in f32 or
// BF16; op::Linears (several products of one input) and op::SwiGluLinear (gate, up and SwiGLU).
//
// Three implementations, chosen by the number of rows and the weights' type:
//  - up to `few_rows_max` rows (a decode step, a sub-block): our own kernel on the CUDA cores.
//    A block owns 2 or 4 output features over all of k; its threads stream the weight rows
//    with 16-byte loads (8 BF16 or 4 f32 values), widen BF16 by a shift, and keep one f32
//    accumulator per (feature, row). The activations stay f32 and are read through L1, where
//    every block of the SM shares them. Bias and accumulation into y are applied as the result is
//    stored, so a residual add costs no extra pass. Each weight byte is read once whatever the
//    number of rows, which is what makes a sub-block forward cost about what an AR step costs.
//  - 9 to `mma_rows_max` rows with BF16 weights (a block forward): our own kernel on the tensor
//    cores (mma.sync, m16n8k16), a block owning 16 or 32 features, the activations rounded to BF16 and
//    f32 accumulation, as cuBLAS computes it; it streams the weights as the CUDA-core kernel does,
//    without cuBLAS's fixed cost of about 11 µs a product on the small matrices.
//    `Cuda::use_mma_rows(false)` sends these products to cuBLAS instead.
//  - the rest (a prompt; f32 weights past 8 rows): cuBLAS. f32 weights use an f32 GEMM (full f32
//    math, no TF32); BF16 weights use cublasGemmEx with the activations rounded to BF16 and f32
//    accumulation and output, on the tensor cores.
// op::Linears and op::SwiGluLinear may normalise their input first (InputNorm). Both of our
// kernels fold that RMSNorm into the product: every block reads whole rows of x anyway, so it
// applies the norm weights as it reads (on the CUDA cores to the weights, so that no norm weight
// stays live while the rows are read; on the tensor cores to the activations before they are
// rounded), sums the squares of x on the way, and scales each row's sums by the row's
// rsqrt(mean(x²) + eps) before the plan stores them. A norm then costs neither a launch nor a pass
// over x. cuBLAS products normalise into scratch first.
#pragma once

#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <span>
#include <utility>

#include <cuda_bf16.h>

#include "blockdiff/backend/cuda/elementwise.cuh"
#include "blockdiff/backend/cuda/runtime.cuh"
#include "blockdiff/core/dtype.hpp"

namespace blockdiff {
namespace detail::cuda {

constexpr int few_rows_max = 8;        //!< rows up to which the CUDA-core kernel runs
constexpr int few_rows_threads = 128;  //!< threads per block; a block owns few_rows_features<R> features
//! Blocks a multiprocessor must hold at once when the kernel folds a norm in: a cap of 168
//! registers a thread, what the plain 8-row kernel with BF16 weights uses (3 blocks), so that the
//! norm's sums do not cost that kernel a third of its occupancy (uncapped, 8 rows with a norm took
//! 208 registers, 2 blocks; capped, that instance spills 36 bytes).
constexpr int few_rows_norm_min_blocks = 3;
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

//! The row's sums of squares (squares[warp][row], each warp's share) added in a fixed order.
template <int Warps, int Rows>
__device__ inline float row_rms_scale(const float (&squares)[Warps][Rows], int row, int k, float eps) {
  float s = 0.0f;
  for (int w = 0; w < Warps; ++w) s += squares[w][row];
  return rms_scale(s, k, eps);
}

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

//! What a product kernel computes, as one of its blocks sees it: the weight row of each of its F
//! features, and what it stores once their sums over k are known. Both kernels below (the CUDA-
//! core one for up to 8 rows, the tensor-core one for up to 32) run the same plans.
//!
//! Stack: up to three products of the same input (q, k and v; or one Linear), each with its
//! bias, one after another in the grid, a block never straddling two.
template <class W, int F>
struct StackPlan {
  static constexpr int max_products = 3;
  static constexpr int outputs = F;  //!< values a block stores per row
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
  //! Feature f's weight row (features past the product's end read its last row, never stored).
  __device__ const W* row(int block, int k, int f) const {
    const int i = product(block), f0 = (block - pick(first_block, i)) * F;
    return pick(w, i) + static_cast<std::int64_t>(min(f0 + f, pick(m, i) - 1)) * k;
  }
  //! Output i of `outputs` x rows: feature i / rows of row i % rows, from sums[f * rows + r].
  __device__ void store(int block, const float* sums, int rows, int i) const {
    const int p = product(block), mi = pick(m, p);
    const int f = (block - pick(first_block, p)) * F + i / rows, r = i % rows;
    if (f >= mi) return;
    const float* bi = pick(bias, p);
    const float v = sums[i] + (bi != nullptr ? bi[f] : 0.0f);
    float* out = pick(y, p) + static_cast<std::int64_t>(r) * mi + f;
    *out = accumulate ? *out + v : v;
  }
};

//! The plan maker of one product (`accumulate`: y +=), for either kernel's StackPlan.
template <class W>
auto one_product(const W* w, int m, const float* bias, float* y, bool accumulate) {
  return [=]<class P>() {
    P p;
    p.add(w, m, bias, y);
    p.accumulate = accumulate;
    return p;
  };
}

//! SwiGLU: a block's first F/2 features are gate rows, the next F/2 the same up rows; it stores
//! silu(gate) · up, so neither product is written out.
template <class W, int F>
struct SwiGluPlan {
  static constexpr int half = F / 2;
  static constexpr int outputs = half;
  const W* gate = nullptr;
  const W* up = nullptr;
  int m = 0;
  float* out = nullptr;

  int blocks() const { return (m + half - 1) / half; }
  __device__ const W* row(int block, int k, int f) const {
    const std::int64_t feature = min(block * half + f % half, m - 1);  // clamped, not stored
    return (f < half ? gate : up) + feature * k;
  }
  __device__ void store(int block, const float* sums, int rows, int i) const {
    const int fl = i / rows, r = i % rows, f = block * half + fl;
    if (f >= m) return;
    const float g = sums[fl * rows + r], u = sums[(half + fl) * rows + r];
    out[static_cast<std::int64_t>(r) * m + f] = g / (1.0f + expf(-g)) * u;  // as op::SwiGlu computes it
  }
};

//! R rows for the F features of each block (which rows, and what is stored, is the Plan's).
//! The block's threads stride over k together (a block-wide split of k: many loads in flight
//! even for a short matrix), each keeping F x R partial sums; the warps' sums meet in shared
//! memory and are added in a fixed order, so the result is deterministic. Columns [0, k_vec)
//! run vectorised (k_vec is a multiple of the vector width, 0 when the operands are not 16-byte
//! aligned), the rest one element per thread. With Norm, the input is RmsNorm(x; norm) (see the
//! top of this file). The body of the two kernels below.
template <class W, int R, bool Norm, class Plan>
__device__ __forceinline__ void few_rows_product(const float* __restrict__ x, int k, const Plan& plan, int k_vec,
                                                 const InputNorm& norm) {
  constexpr int V = Weights16<W>::n, F = few_rows_features<R>, warps = few_rows_threads / 32;
  constexpr int N = F * R > 6 ? 32 : F * R;  // values per thread, padded for the butterfly
  // While the kernel before may still run (dependent launches): the first 4 KB of each weight
  // row (the loop's first two passes) into L2, one 128-byte line a thread.
  if (threadIdx.x * 128 < min(4096, k * static_cast<int>(sizeof(W))))
    for (int f = 0; f < F; ++f)
      prefetch_l2(reinterpret_cast<const char*>(plan.row(static_cast<int>(blockIdx.x), k, f)) + threadIdx.x * 128);
  after_upstream();
  const W* row[F];
  for (int f = 0; f < F; ++f) row[f] = plan.row(static_cast<int>(blockIdx.x), k, f);
  float acc[N] = {};  // acc[f * R + r]
  float squares[R] = {};  // Norm: each row's sum of squares over the columns this thread reads
#pragma unroll 2
  for (int j = threadIdx.x * V; j < k_vec; j += few_rows_threads * V) {
    float wf[F][V];
    for (int f = 0; f < F; ++f) Weights16<W>::load(row[f] + j, wf[f]);
    if constexpr (Norm) {  // w · (g x) as (w g) · x: the norm weights scale F weights, not R activations
      for (int q = 0; q < V / 4; ++q) {
        const float4 t = __ldg(reinterpret_cast<const float4*>(norm.weight + j) + q);
        const float g[4] = {t.x, t.y, t.z, t.w};
        for (int f = 0; f < F; ++f)
          for (int e = 0; e < 4; ++e) wf[f][4 * q + e] *= g[e];
      }
    }
#pragma unroll
    for (int r = 0; r < R; ++r) {
      float xv[V];
      const float4* xp = reinterpret_cast<const float4*>(x + static_cast<std::int64_t>(r) * k + j);
      for (int q = 0; q < V / 4; ++q) {
        const float4 t = __ldg(xp + q);
        xv[4 * q] = t.x, xv[4 * q + 1] = t.y, xv[4 * q + 2] = t.z, xv[4 * q + 3] = t.w;
      }
      if constexpr (Norm) {
        for (int e = 0; e < V; ++e) squares[r] = fmaf(xv[e], xv[e], squares[r]);
      }
      for (int f = 0; f < F; ++f)
        for (int e = 0; e < V; ++e) acc[f * R + r] = fmaf(wf[f][e], xv[e], acc[f * R + r]);
    }
  }
  for (int j = k_vec + threadIdx.x; j < k; j += few_rows_threads) {
    float wv[F];
    for (int f = 0; f < F; ++f) wv[f] = to_float(row[f][j]) * (Norm ? norm.weight[j] : 1.0f);
    for (int r = 0; r < R; ++r) {
      const float xj = x[static_cast<std::int64_t>(r) * k + j];
      if constexpr (Norm) {
        squares[r] = fmaf(xj, xj, squares[r]);
      }
      for (int f = 0; f < F; ++f) acc[f * R + r] = fmaf(wv[f], xj, acc[f * R + r]);
    }
  }
  warp_sums(acc);
  __shared__ float partial[warps][F * R];
  __shared__ float row_squares[warps][R];
  __shared__ float sums[F * R];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if constexpr (N == 32) {
    if (lane < F * R) partial[warp][lane] = acc[0];
  } else if (lane == 0) {
    for (int i = 0; i < F * R; ++i) partial[warp][i] = acc[i];
  }
  if constexpr (Norm) {
    warp_sums(squares);  // R <= 8: every lane holds every row's sum
    if (lane == 0)
      for (int r = 0; r < R; ++r) row_squares[warp][r] = squares[r];
  }
  __syncthreads();
  if (threadIdx.x < F * R) {
    float v = 0.0f;
    for (int i = 0; i < warps; ++i) v += partial[i][threadIdx.x];
    if constexpr (Norm) {
      v *= row_rms_scale(row_squares, threadIdx.x % R, k, norm.eps);
    }
    sums[threadIdx.x] = v;
  }
  __syncthreads();
  for (int i = threadIdx.x; i < Plan::outputs * R; i += few_rows_threads) plan.store(static_cast<int>(blockIdx.x), sums, R, i);
}

template <class W, int R, class Plan>
__global__ void __launch_bounds__(few_rows_threads)
    few_rows_kernel(const float* __restrict__ x, int k, const Plan plan, int k_vec) {
  few_rows_product<W, R, false>(x, k, plan, k_vec, InputNorm{});
}
//! The same with a norm folded in, held to the occupancy of the kernel without one.
template <class W, int R, class Plan>
__global__ void __launch_bounds__(few_rows_threads, few_rows_norm_min_blocks)
    few_rows_norm_kernel(const float* __restrict__ x, int k, const Plan plan, int k_vec, const InputNorm norm) {
  few_rows_product<W, R, true>(x, k, plan, k_vec, norm);
}

//! Launches the kernel for R rows with the plan that make_plan(F) returns.
template <class W, int R, template <class, int> class Plan, class Make>
void few_rows_launch(const float* x, int k, bool aligned, Make&& make_plan, const InputNorm& norm, cudaStream_t stream) {
  constexpr int F = few_rows_features<R>;
  const Plan<W, F> plan = make_plan.template operator()<Plan<W, F>>();
  if (plan.blocks() == 0) return;
  const auto blocks = static_cast<unsigned>(plan.blocks());
  if (norm)
    backend::Cuda::launch(few_rows_norm_kernel<W, R, Plan<W, F>>, blocks, few_rows_threads, 0, stream, x, k, plan,
                          aligned ? k : 0, norm);
  else
    backend::Cuda::launch(few_rows_kernel<W, R, Plan<W, F>>, blocks, few_rows_threads, 0, stream, x, k, plan,
                          aligned ? k : 0);
}

//! Dispatches n (1 to few_rows_max) to its compiled row count.
template <class W, template <class, int> class Plan, class Make>
void few_rows_dispatch(const float* x, int n, int k, bool aligned, Make&& make_plan, const InputNorm& norm,
                       cudaStream_t stream) {
  switch (n) {
    case 1: return few_rows_launch<W, 1, Plan>(x, k, aligned, make_plan, norm, stream);
    case 2: return few_rows_launch<W, 2, Plan>(x, k, aligned, make_plan, norm, stream);
    case 3: return few_rows_launch<W, 3, Plan>(x, k, aligned, make_plan, norm, stream);
    case 4: return few_rows_launch<W, 4, Plan>(x, k, aligned, make_plan, norm, stream);
    case 5: return few_rows_launch<W, 5, Plan>(x, k, aligned, make_plan, norm, stream);
    case 6: return few_rows_launch<W, 6, Plan>(x, k, aligned, make_plan, norm, stream);
    case 7: return few_rows_launch<W, 7, Plan>(x, k, aligned, make_plan, norm, stream);
    case 8: return few_rows_launch<W, 8, Plan>(x, k, aligned, make_plan, norm, stream);
    default: fail("few-row product: ", n, " rows; this kernel takes 1 to ", few_rows_max);
  }
}

inline bool aligned16(const void* p) { return reinterpret_cast<std::uintptr_t>(p) % 16 == 0; }

//! Whether the vectorised path may run: k a multiple of the vector width, operands (and the norm
//! weight, if any) 16-byte aligned.
template <class W>
bool few_rows_aligned(const float* x, int k, std::initializer_list<const W*> ws, const InputNorm& norm = {}) {
  return k % Weights16<W>::n == 0 && aligned16(x) && aligned16(norm.weight) && std::all_of(ws.begin(), ws.end(), aligned16);
}

//! The CUDA-core product for 1 <= n <= few_rows_max rows.
template <class W>
void few_rows_linear(const float* x, int n, int k, const W* w, int m, const float* bias, float* y, bool accumulate,
                     cudaStream_t stream) {
  few_rows_dispatch<W, StackPlan>(x, n, k, few_rows_aligned<W>(x, k, {w}), one_product(w, m, bias, y, accumulate), {},
                                  stream);
}

// ---- the tensor-core kernel: 9 to 32 rows, BF16 weights -------------------------------------

constexpr int mma_rows_max = 32;  //!< rows up to which the tensor-core kernel runs
constexpr int mma_threads = 256;  //!< 8 warps, splitting k between them
//! 16-feature tiles (the M of an m16n8k16 product) per block for 8 T rows. Every block reads all
//! of x, 4 n k bytes, against 32 M k bytes of weights: two tiles past 16 rows keep that at most
//! twice the weights, one tile up to 16 rows keeps twice the blocks for the small matrices.
template <int T>
constexpr int mma_tiles = T > 2 ? 2 : 1;

//! Two f32 values rounded to BF16 (to nearest, ties to even, as to_bf16 rounds) in one word, the
//! first in the low half: the lower k index of an mma operand pair.
__device__ inline unsigned bf16_pair(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const unsigned*>(&v);
}

//! d (16 x 8, f32) += a (16 x 16, BF16, row-major) · b (16 x 8, BF16, column-major), one warp.
//! Fragments (PTX ISA, mma.m16n8k16; g = lane / 4, t = lane % 4; the lower column in the low
//! half): a[0] is row g, columns 2t and 2t + 1; a[1] row g + 8, the same columns; a[2] row g,
//! columns 2t + 8 and 2t + 9; a[3] row g + 8, those. b[0] is column g, rows 2t and 2t + 1; b[1]
//! column g, rows 2t + 8 and 2t + 9. d[0], d[1] are row g, columns 2t and 2t + 1; d[2], d[3] row g + 8.
__device__ inline void mma_16x8x16(float (&d)[4], const unsigned (&a)[4], const unsigned (&b)[2]) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#endif
}

//! Up to 8 T rows for the 16 M features of each block, on the tensor cores: each m16n8k16
//! product takes 16 of the block's weight rows as A (16 x 16) and 8 rows of x as B, rounded to
//! BF16 as the cuBLAS path rounds them, and accumulates in f32. The 8 warps take turns over k in
//! chunks of 32 columns. A lane reads 16 bytes of its two weight rows of each tile (features
//! g and g + 8 of the tile) at columns 8t .. 8t + 7 of the chunk, and the same 8 columns of its x
//! row (row g of each 8-row tile); those feed two products, the first columns 8t .. 8t + 3, the
//! second 8t + 4 .. 8t + 7. So a product's column 2t + e stands for the chunk's column 8t + 4s + e
//! and its column 2t + 8 + e for 8t + 4s + 2 + e, in A and B alike: a permutation of k, which a
//! sum over k does not see. Each weight byte is read once, with 16-byte loads. The warps' sums
//! meet in shared memory and are added in a fixed order (deterministic); the plan stores them.
//! k is a multiple of 16 (a last half chunk takes one product of 8-byte loads); x, the weight
//! rows and the norm weight are 16-byte aligned. With Norm, the input is RmsNorm(x; norm), each
//! activation multiplied by its norm weight before it is rounded (see the top of this file).
template <int T, int M, bool Norm, class Plan>
__global__ void __launch_bounds__(mma_threads)
    mma_rows_kernel(const float* __restrict__ x, int n, int k, const Plan plan, const InputNorm norm) {
  constexpr int warps = mma_threads / 32, F = 16 * M;
  constexpr int U = 4 / M;  // chunks whose weight loads a warp issues together: 4 KB a warp
  const int block = static_cast<int>(blockIdx.x), lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int g = lane / 4, t = lane % 4;
  // While the kernel before may still run (dependent launches): the weights of the first pass
  // over k into L2.
#pragma unroll
  for (int u = 0; u < U; ++u) {
    if (warp + u * warps < k / 32) {
#pragma unroll
      for (int i = 0; i < M; ++i)
        for (int h = 0; h < 2; ++h) prefetch_l2(plan.row(block, k, 16 * i + 8 * h + g) + 32 * (warp + u * warps) + 8 * t);
    }
  }
  after_upstream();
  const bf16* w[M][2];  // rows g and g + 8 of each tile
#pragma unroll
  for (int i = 0; i < M; ++i) w[i][0] = plan.row(block, k, 16 * i + g), w[i][1] = plan.row(block, k, 16 * i + g + 8);
  const float* xr[T];
#pragma unroll
  for (int j = 0; j < T; ++j) xr[j] = 8 * j + g < n ? x + static_cast<std::int64_t>(8 * j + g) * k : nullptr;
  float acc[M][T][4] = {};
  float squares[T] = {};  // Norm: the sum of squares of row 8 j + g over the columns this lane reads
  // The norm weights of the 4 columns at c (ones without a norm).
  auto norm_at = [&](int c) {
    if constexpr (Norm) return __ldg(reinterpret_cast<const float4*>(norm.weight + c));
    return make_float4(1.0f, 1.0f, 1.0f, 1.0f);
  };
  // B of tile j over the 4 columns at c, scaled by their norm weights g (x row absent: zeros).
  auto b_at = [&](int j, int c, const float4& g, unsigned (&b)[2]) {
    b[0] = b[1] = 0;
    if (xr[j] == nullptr) return;
    float4 v = __ldg(reinterpret_cast<const float4*>(xr[j] + c));
    if constexpr (Norm) {
      squares[j] = fmaf(v.x, v.x, fmaf(v.y, v.y, fmaf(v.z, v.z, fmaf(v.w, v.w, squares[j]))));
      v.x *= g.x, v.y *= g.y, v.z *= g.z, v.w *= g.w;
    }
    b[0] = bf16_pair(v.x, v.y), b[1] = bf16_pair(v.z, v.w);
  };
  const int chunks = k / 32;
  for (int c0 = warp; c0 < chunks; c0 += warps * U) {
    uint4 a[U][M][2];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int c = c0 + u * warps;
      if (c < chunks)
#pragma unroll
        for (int i = 0; i < M; ++i)
          for (int h = 0; h < 2; ++h) a[u][i][h] = __ldcs(reinterpret_cast<const uint4*>(w[i][h] + 32 * c + 8 * t));
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int c = c0 + u * warps;
      if (c >= chunks) continue;
      const float4 g0 = norm_at(32 * c + 8 * t), g1 = norm_at(32 * c + 8 * t + 4);
#pragma unroll
      for (int j = 0; j < T; ++j) {
        unsigned b0[2], b1[2];
        b_at(j, 32 * c + 8 * t, g0, b0);
        b_at(j, 32 * c + 8 * t + 4, g1, b1);
#pragma unroll
        for (int i = 0; i < M; ++i) {
          const uint4 lo = a[u][i][0], hi = a[u][i][1];
          mma_16x8x16(acc[i][j], {lo.x, hi.x, lo.y, hi.y}, b0);
          mma_16x8x16(acc[i][j], {lo.z, hi.z, lo.w, hi.w}, b1);
        }
      }
    }
  }
  if (k % 32 != 0 && warp == chunks % warps) {  // the last 16 columns: 4 per lane
    const int c = 32 * chunks + 4 * t;
    const float4 g = norm_at(c);
#pragma unroll
    for (int j = 0; j < T; ++j) {
      unsigned b[2];
      b_at(j, c, g, b);
#pragma unroll
      for (int i = 0; i < M; ++i) {
        const uint2 lo = __ldcs(reinterpret_cast<const uint2*>(w[i][0] + c)), hi = __ldcs(reinterpret_cast<const uint2*>(w[i][1] + c));
        mma_16x8x16(acc[i][j], {lo.x, hi.x, lo.y, hi.y}, b);
      }
    }
  }
  __shared__ float partial[warps][F][8 * T];
  __shared__ float row_squares[warps][8 * T];
  if constexpr (Norm) {
#pragma unroll
    for (int j = 0; j < T; ++j) {  // the 4 lanes t of a row g read its columns between them
      squares[j] += __shfl_xor_sync(0xffffffffu, squares[j], 1);
      squares[j] += __shfl_xor_sync(0xffffffffu, squares[j], 2);
      if (t == 0) row_squares[warp][8 * j + g] = squares[j];
    }
  }
#pragma unroll
  for (int i = 0; i < M; ++i)
#pragma unroll
    for (int j = 0; j < T; ++j) {
      const int f = 16 * i + g, r = 8 * j + 2 * t;
      partial[warp][f][r] = acc[i][j][0], partial[warp][f][r + 1] = acc[i][j][1];
      partial[warp][f + 8][r] = acc[i][j][2], partial[warp][f + 8][r + 1] = acc[i][j][3];
    }
  __syncthreads();
  __shared__ float sums[F * 8 * T];  // sums[f * n + r]
  for (int i = threadIdx.x; i < F * n; i += mma_threads) {
    float v = 0.0f;
    for (int wp = 0; wp < warps; ++wp) v += partial[wp][i / n][i % n];
    if constexpr (Norm) {
      v *= row_rms_scale(row_squares, i % n, k, norm.eps);
    }
    sums[i] = v;
  }
  __syncthreads();
  for (int i = threadIdx.x; i < Plan::outputs * n; i += mma_threads) plan.store(block, sums, n, i);
}

template <int T, template <class, int> class Plan, class Make>
void mma_rows_launch(const float* x, int n, int k, Make&& make_plan, const InputNorm& norm, cudaStream_t stream) {
  constexpr int M = mma_tiles<T>;
  const Plan<bf16, 16 * M> plan = make_plan.template operator()<Plan<bf16, 16 * M>>();
  if (plan.blocks() == 0) return;
  const auto kernel = norm ? mma_rows_kernel<T, M, true, Plan<bf16, 16 * M>> : mma_rows_kernel<T, M, false, Plan<bf16, 16 * M>>;
  backend::Cuda::launch(kernel, static_cast<unsigned>(plan.blocks()), mma_threads, 0, stream, x, n, k, plan, norm);
}

//! The tensor-core kernel for 1 <= n <= mma_rows_max rows, with the plan that make_plan(F) returns.
template <template <class, int> class Plan, class Make>
void mma_rows_dispatch(const float* x, int n, int k, Make&& make_plan, const InputNorm& norm, cudaStream_t stream) {
  switch ((n + 7) / 8) {
    case 1: return mma_rows_launch<1, Plan>(x, n, k, make_plan, norm, stream);
    case 2: return mma_rows_launch<2, Plan>(x, n, k, make_plan, norm, stream);
    case 3: return mma_rows_launch<3, Plan>(x, n, k, make_plan, norm, stream);
    case 4: return mma_rows_launch<4, Plan>(x, n, k, make_plan, norm, stream);
    default: fail("tensor-core product: ", n, " rows; this kernel takes 1 to ", mma_rows_max);
  }
}

//! Whether this build's tensor-core kernel has its body: compiled for sm_80 or later (asked of the
//! kernel that will run, so a build for older GPUs falls back to cuBLAS).
inline bool mma_compiled() {
  static const bool compiled = [] {
    cudaFuncAttributes a{};
    if (cudaFuncGetAttributes(&a, mma_rows_kernel<1, 1, false, StackPlan<bf16, 16>>) != cudaSuccess) {
      cudaGetLastError();
      return false;
    }
    return a.ptxVersion >= 80;
  }();
  return compiled;
}

//! Whether n rows of a product with weights W (rows of length k, all at `ws`) take the
//! tensor-core kernel: BF16 weights, 9 to 32 rows, k a multiple of 16, 16-byte aligned operands
//! (the norm's weight too), and the kernel not switched off (Cuda::use_mma_rows) nor compiled out.
template <class W>
bool mma_takes(const float* x, std::int64_t n, int k, std::initializer_list<const W*> ws, const InputNorm& norm = {}) {
  if constexpr (!std::is_same_v<W, bf16>) {
    return false;
  } else {
    return n > few_rows_max && n <= mma_rows_max && k % 16 == 0 && few_rows_aligned<W>(x, k, ws, norm) &&
           backend::Cuda::mma_rows() && mma_compiled();
  }
}

//! The tensor-core product for 1 <= n <= mma_rows_max rows (BF16 weights; see mma_takes).
inline void mma_linear(const float* x, int n, int k, const bf16* w, int m, const float* bias, float* y, bool accumulate,
                       cudaStream_t stream) {
  mma_rows_dispatch<StackPlan>(x, n, k, one_product(w, m, bias, y, accumulate), {}, stream);
}

__global__ void broadcast_rows_kernel(const float* bias, std::int64_t n, int m, float* y) {
  after_upstream();
  const std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x;
  if (i < n * m) y[i] = bias[i % m];
}

__global__ void round_to_bf16_kernel(const float* x, std::int64_t n, bf16* out) {
  after_upstream();
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
    backend::Cuda::launch(round_to_bf16_kernel, blocks_for(n * k), 256, 0, backend::Cuda::stream(), x, n * k, xb);
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
    backend::Cuda::launch(broadcast_rows_kernel, blocks_for(n * m), 256, 0, backend::Cuda::stream(), bias, n, m, y);
    beta = 1.0f;
  }
  const float alpha = 1.0f;
  // Row-major y[n, m] is column-major yᵀ[m, n] = w · xᵀ, w read as the transpose of column-major [k, m].
  constexpr cudaDataType_t type = std::is_same_v<W, float> ? CUDA_R_32F : CUDA_R_16BF;
  BLOCKDIFF_CUBLAS_CHECK(cublasGemmEx(backend::Cuda::blas(), CUBLAS_OP_T, CUBLAS_OP_N, m, static_cast<int>(n), k, &alpha,
                                      w, type, k, input, type, k, &beta, y, CUDA_R_32F, m, CUBLAS_COMPUTE_32F,
                                      CUBLAS_GEMM_DEFAULT));
}

//! Readies the input of a product of n rows with its norm, and says whether the tensor-core kernel
//! takes it (`takes(x, norm)`: mma_takes for the product's weights). Where no kernel of ours will
//! fold the norm in (switched off, or cuBLAS runs the product), x becomes the rows normalised into
//! the norm's scratch and the norm is cleared; the answer is then asked of those rows.
template <class Takes>
bool ready_input(const float*& x, std::int64_t n, int k, InputNorm& norm, Takes&& takes) {
  if (norm && !(backend::Cuda::folded_norms() && (n <= few_rows_max || takes(x, norm))))
    x = normed_input<backend::Cuda>(x, n, k, std::exchange(norm, InputNorm{}));
  return takes(x, norm);
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
    using namespace detail::cuda;
    if (n <= few_rows_max) return few_rows_linear(x, static_cast<int>(n), k, w, m, bias, y, accumulate, backend::Cuda::stream());
    if constexpr (std::is_same_v<W, bf16>)
      if (mma_takes<W>(x, n, k, {w}))
        return mma_linear(x, static_cast<int>(n), k, w, m, bias, y, accumulate, backend::Cuda::stream());
    blas_linear(x, n, k, w, m, bias, y, accumulate);
  }
};

template <>
struct Kernel<backend::Cuda, op::Linears> {
  //! Up to 8 rows on the CUDA cores, up to 32 with BF16 weights on the tensor cores: one launch
  //! for each 3 products, the norm folded in. Otherwise the input normalised and rounded once,
  //! one cuBLAS product each.
  template <class W>
  static void run(const float* x, std::int64_t n, int k, std::span<const LinearOut<W>> outs, InputNorm norm = {}) {
    using namespace detail::cuda;
    if (n == 0) return;
    const auto weights_aligned = [](auto group) {
      return std::all_of(group.begin(), group.end(), [](const auto& o) { return aligned16(o.w); });
    };
    const bool tensor_cores = ready_input(x, n, k, norm, [&](const float* in, const InputNorm& in_norm) {
      return mma_takes<W>(in, n, k, {}, in_norm) && weights_aligned(outs);
    });
    if (n > few_rows_max && !tensor_cores) {
      const void* input = blas_input<W>(x, n, k);
      for (const auto& o : outs) blas_product(input, n, k, o.w, o.m, o.bias, o.y, false);
      return;
    }
    constexpr std::size_t per_launch = StackPlan<W, 2>::max_products;
    for (std::size_t first = 0; first < outs.size(); first += per_launch) {
      const auto group = outs.subspan(first, std::min(per_launch, outs.size() - first));
      const auto make = [&]<class P>() {
        P p;
        for (const auto& o : group) p.add(o.w, o.m, o.bias, o.y);
        return p;
      };
      if (!tensor_cores)
        few_rows_dispatch<W, StackPlan>(x, static_cast<int>(n), k,
                                        few_rows_aligned<W>(x, k, {}, norm) && weights_aligned(group), make, norm,
                                        backend::Cuda::stream());
      else if constexpr (std::is_same_v<W, bf16>)
        mma_rows_dispatch<StackPlan>(x, static_cast<int>(n), k, make, norm, backend::Cuda::stream());
    }
  }
};

template <>
struct Kernel<backend::Cuda, op::SwiGluLinear> {
  //! Up to 8 rows, and up to 32 with BF16 weights: one launch that stores silu(gate) · up (`up`
  //! unused), on the CUDA cores or the tensor cores, the norm folded in. More: the input
  //! normalised, two cuBLAS products into `out` and `up`, then SwiGlu.
  template <class W>
  static void run(const float* x, std::int64_t n, int k, const W* w_gate, const W* w_up, int m, float* out, float* up,
                  InputNorm norm = {}) {
    using namespace detail::cuda;
    if (n == 0 || m == 0) return;
    const auto make = [&]<class P>() {
      P p;
      p.gate = w_gate, p.up = w_up, p.m = m, p.out = out;
      return p;
    };
    const bool tensor_cores = ready_input(x, n, k, norm, [&](const float* in, const InputNorm& in_norm) {
      return mma_takes<W>(in, n, k, {w_gate, w_up}, in_norm);
    });
    if constexpr (std::is_same_v<W, bf16>)
      if (tensor_cores) return mma_rows_dispatch<SwiGluPlan>(x, static_cast<int>(n), k, make, norm, backend::Cuda::stream());
    if (n > few_rows_max) {
      const void* input = blas_input<W>(x, n, k);
      blas_product(input, n, k, w_gate, m, nullptr, out, false);
      blas_product(input, n, k, w_up, m, nullptr, up, false);
      Kernel<backend::Cuda, op::SwiGlu>::run(out, up, n * m);
      return;
    }
    few_rows_dispatch<W, SwiGluPlan>(x, static_cast<int>(n), k, few_rows_aligned<W>(x, k, {w_gate, w_up}, norm), make,
                                     norm, backend::Cuda::stream());
  }
};

}  // namespace blockdiff
