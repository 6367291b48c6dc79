// The training operations of the Qwen2 model on the host, forward and backward, one pair per
// operation as llm.c writes them.
//
// Everything is templated on the scalar (float to train, double for the finite-difference
// tests) and works on raw row-major arrays whose storage the caller plans (see
// train/trainable.hpp); no function here allocates except `attention_*`'s per-thread scratch,
// which the caller passes in. Backward functions accumulate (+=) into parameter gradients and,
// where documented, into input gradients, so that residual branches and tied weights add up.
// GEMMs go to OpenBLAS when blockdiff is configured with it, else to Eigen; everything else is
// threaded with OpenMP.
//
// `Ops<Backend>` gathers one backend's training operations under one name, so that the model
// (train/trainable.hpp) is written once: `Ops<backend::Host>` is the functions below,
// `Ops<backend::Cuda>` their device twins (train/cuda_ops.cuh).
#pragma once

#include <Eigen/Core>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <limits>
#include <span>
#include <type_traits>

#if defined(BLOCKDIFF_HAVE_CBLAS)
#include <cblas.h>
#endif

#include "blockdiff/backend/kernel.hpp"
#include "blockdiff/core/macros.hpp"
#include "blockdiff/core/tensor.hpp"
#include "blockdiff/core/threads.hpp"

namespace blockdiff::train::ops {

template <class T>
using Matrix = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <class T>
using ConstMap = Eigen::Map<const Matrix<T>, 0, Eigen::OuterStride<>>;
template <class T>
using Map = Eigen::Map<Matrix<T>, 0, Eigen::OuterStride<>>;

//! While alive, OpenBLAS runs single-threaded in its caller, so that gemm() below can share the
//! work over OpenMP's threads: two thread pools spinning on the same cores cost a training step
//! about 3x.
class BlasInCallerThread {
 public:
#if defined(BLOCKDIFF_HAVE_CBLAS)
  BlasInCallerThread() : saved_(openblas_get_num_threads()) { openblas_set_num_threads(1); }
  ~BlasInCallerThread() { openblas_set_num_threads(saved_); }

 private:
  int saved_;
#endif
};

//! Time and work of every gemm() call while `enabled` (for benchmarks: the GEMM share of a step).
struct GemmStats {
  bool enabled = false;
  double seconds = 0, flops = 0;
  std::int64_t calls = 0;
};
inline GemmStats gemm_stats;

//! C[M, N] (= | +=) op(A) · op(B), row-major, op = transpose when `ta` / `tb`. With OpenBLAS, the
//! rows of C are split over OpenMP's threads (run inside a BlasInCallerThread scope).
template <class T>
void gemm(bool ta, bool tb, std::int64_t M, std::int64_t N, std::int64_t K, const T* A, std::int64_t lda, const T* B,
          std::int64_t ldb, bool accumulate, T* C, std::int64_t ldc) {
  if (M == 0 || N == 0) return;
  struct Timer {
    std::chrono::steady_clock::time_point t0;
    double flops;
    Timer(double f) : t0(gemm_stats.enabled ? std::chrono::steady_clock::now() : decltype(t0){}), flops(f) {}
    ~Timer() {
      if (!gemm_stats.enabled) return;
      gemm_stats.seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      gemm_stats.flops += flops;
      ++gemm_stats.calls;
    }
  } timer(2.0 * double(M) * double(N) * double(K));
#if defined(BLOCKDIFF_HAVE_CBLAS)
  if constexpr (std::is_same_v<T, float> || std::is_same_v<T, double>) {
    auto call = [&](std::int64_t r0, std::int64_t rows) {
      const T* a = ta ? A + r0 : A + r0 * lda;
      const auto opa = ta ? CblasTrans : CblasNoTrans, opb = tb ? CblasTrans : CblasNoTrans;
      if constexpr (std::is_same_v<T, float>)
        cblas_sgemm(CblasRowMajor, opa, opb, int(rows), int(N), int(K), 1.0f, a, int(lda), B, int(ldb),
                    accumulate ? 1.0f : 0.0f, C + r0 * ldc, int(ldc));
      else
        cblas_dgemm(CblasRowMajor, opa, opb, int(rows), int(N), int(K), 1.0, a, int(lda), B, int(ldb),
                    accumulate ? 1.0 : 0.0, C + r0 * ldc, int(ldc));
    };
    const double flops = double(M) * double(N) * double(K);
    parallel_team(flops > 4e6 && M >= 32, [&](int tid, int threads) {
      // Row ranges in multiples of 16, so every thread's slice stays aligned for the kernels.
      const std::int64_t per = (M + threads - 1) / threads;
      const std::int64_t chunk = threads == 1 ? M : (per + 15) / 16 * 16;
      const std::int64_t r0 = std::min<std::int64_t>(M, tid * chunk);
      const std::int64_t r1 = std::min<std::int64_t>(M, r0 + chunk);
      if (r1 > r0) call(r0, r1 - r0);
    });
    return;
  }
#endif
  Map<T> c(C, M, N, Eigen::OuterStride<>(ldc));
  if (!accumulate) c.setZero();
  if (K == 0) return;
  ConstMap<T> a(A, ta ? K : M, ta ? M : K, Eigen::OuterStride<>(lda));
  ConstMap<T> b(B, tb ? N : K, tb ? K : N, Eigen::OuterStride<>(ldb));
  if (!ta && !tb) c.noalias() += a * b;
  if (!ta && tb) c.noalias() += a * b.transpose();
  if (ta && !tb) c.noalias() += a.transpose() * b;
  if (ta && tb) c.noalias() += a.transpose() * b.transpose();
}

// ---- embedding -------------------------------------------------------------------------------

//! x[n, H] = table[ids[n]].
template <class T>
void embedding_forward(const T* table, const int* ids, std::int64_t n, int H, T* x) {
  parallel_for(n, n * H > 32768, [&](std::int64_t t) { std::copy_n(table + std::int64_t(ids[t]) * H, H, x + t * H); });
}

//! dtable[ids[n]] += dx[n]. Serial: ids repeat, and the cost is one pass over dx.
template <class T>
void embedding_backward(const T* dx, const int* ids, std::int64_t n, int H, T* dtable) {
  for (std::int64_t t = 0; t < n; ++t) {
    T* row = dtable + std::int64_t(ids[t]) * H;
    const T* g = dx + t * H;
    for (int i = 0; i < H; ++i) row[i] += g[i];
  }
}

// ---- RMSNorm ---------------------------------------------------------------------------------

//! y = x · rstd · w with rstd = 1 / sqrt(mean(x²) + eps); rstd[n] is kept for the backward.
template <class T>
void rmsnorm_forward(const T* x, std::int64_t n, int H, const T* w, T eps, T* y, T* rstd) {
  parallel_for(n, n * H > 32768, [&](std::int64_t t) {
    const T* xr = x + t * H;
    T ss = 0;
    for (int i = 0; i < H; ++i) ss += xr[i] * xr[i];
    const T r = T(1) / std::sqrt(ss / T(H) + eps);
    rstd[t] = r;
    for (int i = 0; i < H; ++i) y[t * H + i] = xr[i] * r * w[i];
  });
}

//! dx += rstd · (dy·w) − x · rstd³ / H · Σ(dy·w·x);  dw += Σ_n dy · x · rstd.
//! `dw_scratch` holds one [threads, H] partial sum per thread so that threads never race on dw.
template <class T>
void rmsnorm_backward(const T* dy, const T* x, const T* rstd, std::int64_t n, int H, const T* w, T* dx, T* dw,
                      T* dw_scratch, int threads) {
  std::fill_n(dw_scratch, std::int64_t(threads) * H, T(0));
#pragma omp parallel num_threads(threads) if (n * H > 32768)
  {
    const int tid = thread_index();
    T* dw_local = dw_scratch + std::int64_t(tid) * H;
#pragma omp for schedule(static)
    for (std::int64_t t = 0; t < n; ++t) {
      const T* xr = x + t * H;
      const T* g = dy + t * H;
      const T r = rstd[t];
      T dot = 0;
      for (int i = 0; i < H; ++i) dot += g[i] * w[i] * xr[i];
      const T c = dot * r * r * r / T(H);
      for (int i = 0; i < H; ++i) {
        dx[t * H + i] += r * g[i] * w[i] - c * xr[i];
        dw_local[i] += g[i] * xr[i] * r;
      }
    }
  }
  for (int th = 0; th < threads; ++th)
    for (int i = 0; i < H; ++i) dw[i] += dw_scratch[std::int64_t(th) * H + i];
}

// ---- linear ----------------------------------------------------------------------------------

//! y[n, m] (= | +=) x[n, k] · w[m, k]ᵀ (+ b).
template <class T>
void linear_forward(const T* x, std::int64_t n, int k, const T* w, int m, const T* b, T* y, bool accumulate = false) {
  gemm<T>(false, true, n, m, k, x, k, w, k, accumulate, y, m);
  if (b == nullptr) return;
  parallel_for(n, n * m > 32768, [&](std::int64_t t) {
    for (int o = 0; o < m; ++o) y[t * m + o] += b[o];
  });
}

//! dx (= | +=) dy · w;  dw += dyᵀ · x;  db += Σ_n dy.
template <class T>
void linear_backward(const T* dy, const T* x, std::int64_t n, int k, const T* w, int m, T* dx, T* dw, T* db,
                     bool accumulate_dx = false) {
  if (dx != nullptr) gemm<T>(false, false, n, k, m, dy, m, w, k, accumulate_dx, dx, k);
  gemm<T>(true, false, m, k, n, dy, m, x, k, true, dw, k);
  if (db == nullptr) return;
  parallel_for(m, n * m > 32768, [&](std::int64_t o) {
    T s = 0;
    for (std::int64_t t = 0; t < n; ++t) s += dy[t * m + o];
    db[o] += s;
  });
}

// ---- RoPE ------------------------------------------------------------------------------------

//! Rotates each head of x[n, heads·d] in place by the angle of its position (non-interleaved
//! halves, as Qwen2); `inverse` applies the transpose, which is the backward.
template <class T>
void rope(T* x, std::int64_t n, int heads, int d, const int* positions, const T* cos, const T* sin,
          bool inverse = false) {
  const int half = d / 2;
  const T sign = inverse ? T(-1) : T(1);
  parallel_for(n, n * heads * d > 32768, [&](std::int64_t t) {
    const T* c = cos + std::int64_t(positions[t]) * half;
    const T* s = sin + std::int64_t(positions[t]) * half;
    for (int h = 0; h < heads; ++h) {
      T* v = x + (t * heads + h) * d;
      for (int i = 0; i < half; ++i) {
        const T a = v[i], b = v[i + half];
        v[i] = a * c[i] - sign * b * s[i];
        v[i + half] = b * c[i] + sign * a * s[i];
      }
    }
  });
}

// ---- SwiGLU ----------------------------------------------------------------------------------

template <class T>
T sigmoid(T x) {
  return T(1) / (T(1) + std::exp(-x));
}

//! h = silu(gate) · up.
template <class T>
void swiglu_forward(const T* gate, const T* up, std::int64_t n, T* h) {
  parallel_for(n, n > 32768, [&](std::int64_t i) { h[i] = gate[i] * sigmoid(gate[i]) * up[i]; });
}

//! dgate = dh · up · σ(g)(1 + g(1 − σ(g)));  dup = dh · silu(g).
template <class T>
void swiglu_backward(const T* dh, const T* gate, const T* up, std::int64_t n, T* dgate, T* dup) {
  parallel_for(n, n > 32768, [&](std::int64_t i) {
    const T g = gate[i], s = sigmoid(g);
    dgate[i] = dh[i] * up[i] * s * (T(1) + g * (T(1) - s));
    dup[i] = dh[i] * g * s;
  });
}

// ---- attention -------------------------------------------------------------------------------

//! Shapes of a training attention: `rows` sequences of `length` tokens each, GQA heads.
struct AttentionDims {
  int rows = 0, length = 0, heads = 0, kv_heads = 0, head_dim = 0;
  std::int64_t q_dim() const { return std::int64_t(heads) * head_dim; }
  std::int64_t kv_dim() const { return std::int64_t(kv_heads) * head_dim; }
};

//! allowed[i·S + j] = mask.allowed(i, j): evaluated once per call, shared by every (row, head).
template <class Mask>
void fill_mask(const Mask& mask, int S, unsigned char* allowed) {
  for (int i = 0; i < S; ++i)
    for (int j = 0; j < S; ++j) allowed[std::int64_t(i) * S + j] = mask.allowed(i, j) ? 1 : 0;
}

namespace detail {
// P = softmax(scale · Q Kᵀ) over the allowed keys, from the scores; returns nothing, writes lse.
template <class T>
void masked_softmax(Map<T>& P, const unsigned char* allowed, T* lse) {
  const std::int64_t S = P.rows();
  for (std::int64_t i = 0; i < S; ++i) {
    const unsigned char* a = allowed + i * S;
    T mx = -std::numeric_limits<T>::infinity();
    for (std::int64_t j = 0; j < S; ++j)
      if (a[j]) mx = std::max(mx, P(i, j));
    T sum = 0;
    for (std::int64_t j = 0; j < S; ++j) {
      const T e = a[j] ? std::exp(P(i, j) - mx) : T(0);
      P(i, j) = e;
      sum += e;
    }
    P.row(i) /= sum;
    if (lse != nullptr) lse[i] = mx + std::log(sum);
  }
}
}  // namespace detail

//! out[rows·S, heads·d] = softmax(scale · q kᵀ under the mask) · v, per row and head; keeps the
//! log-sum-exp of each query, lse[rows, heads, S], so the backward can rebuild P without storing
//! it. `scratch` holds S·S values per thread. Every query must be allowed at least one key.
template <class T>
void attention_forward(const T* q, const T* k, const T* v, const AttentionDims& dims, const unsigned char* allowed,
                       T scale, T* out, T* lse, T* scratch) {
  const int S = dims.length, d = dims.head_dim, group = dims.heads / dims.kv_heads;
  const std::int64_t qd = dims.q_dim(), kvd = dims.kv_dim();
#pragma omp parallel for schedule(dynamic)
  for (std::int64_t task = 0; task < std::int64_t(dims.rows) * dims.heads; ++task) {
    const int tid = thread_index();
    const int r = int(task / dims.heads), h = int(task % dims.heads), kh = h / group;
    const std::int64_t base = std::int64_t(r) * S;
    ConstMap<T> Q(q + base * qd + std::int64_t(h) * d, S, d, Eigen::OuterStride<>(qd));
    ConstMap<T> K(k + base * kvd + std::int64_t(kh) * d, S, d, Eigen::OuterStride<>(kvd));
    ConstMap<T> V(v + base * kvd + std::int64_t(kh) * d, S, d, Eigen::OuterStride<>(kvd));
    Map<T> O(out + base * qd + std::int64_t(h) * d, S, d, Eigen::OuterStride<>(qd));
    Map<T> P(scratch + std::int64_t(tid) * S * S, S, S, Eigen::OuterStride<>(S));
    P.noalias() = scale * (Q * K.transpose());
    detail::masked_softmax(P, allowed, lse + (std::int64_t(r) * dims.heads + h) * S);
    O.noalias() = P * V;
  }
}

//! The backward of attention_forward: dq = scale · dS k, dk = scale · dSᵀ q, dv = Pᵀ dout with
//! dS = P ∘ (dout vᵀ − rowsum(dout ∘ out)). Overwrites dq, dk and dv. Tasks are (row, kv head)
//! so the heads that share a K/V head accumulate into it without racing. `scratch` holds 2·S·S
//! values per thread.
template <class T>
void attention_backward(const T* dout, const T* q, const T* k, const T* v, const T* out, const T* lse,
                        const AttentionDims& dims, const unsigned char* allowed, T scale, T* dq, T* dk, T* dv,
                        T* scratch) {
  const int S = dims.length, d = dims.head_dim, group = dims.heads / dims.kv_heads;
  const std::int64_t qd = dims.q_dim(), kvd = dims.kv_dim();
#pragma omp parallel for schedule(dynamic)
  for (std::int64_t task = 0; task < std::int64_t(dims.rows) * dims.kv_heads; ++task) {
    const int tid = thread_index();
    const int r = int(task / dims.kv_heads), kh = int(task % dims.kv_heads);
    const std::int64_t base = std::int64_t(r) * S;
    ConstMap<T> K(k + base * kvd + std::int64_t(kh) * d, S, d, Eigen::OuterStride<>(kvd));
    ConstMap<T> V(v + base * kvd + std::int64_t(kh) * d, S, d, Eigen::OuterStride<>(kvd));
    Map<T> dK(dk + base * kvd + std::int64_t(kh) * d, S, d, Eigen::OuterStride<>(kvd));
    Map<T> dV(dv + base * kvd + std::int64_t(kh) * d, S, d, Eigen::OuterStride<>(kvd));
    dK.setZero();
    dV.setZero();
    Map<T> P(scratch + std::int64_t(tid) * 2 * S * S, S, S, Eigen::OuterStride<>(S));
    Map<T> dP(scratch + (std::int64_t(tid) * 2 + 1) * S * S, S, S, Eigen::OuterStride<>(S));
    for (int h = kh * group; h < (kh + 1) * group; ++h) {
      const std::int64_t col = std::int64_t(h) * d;
      ConstMap<T> Q(q + base * qd + col, S, d, Eigen::OuterStride<>(qd));
      ConstMap<T> O(out + base * qd + col, S, d, Eigen::OuterStride<>(qd));
      ConstMap<T> dO(dout + base * qd + col, S, d, Eigen::OuterStride<>(qd));
      Map<T> dQ(dq + base * qd + col, S, d, Eigen::OuterStride<>(qd));
      const T* l = lse + (std::int64_t(r) * dims.heads + h) * S;
      P.noalias() = scale * (Q * K.transpose());
      for (int i = 0; i < S; ++i)
        for (int j = 0; j < S; ++j)
          P(i, j) = allowed[std::int64_t(i) * S + j] ? std::exp(P(i, j) - l[i]) : T(0);
      dP.noalias() = dO * V.transpose();
      for (int i = 0; i < S; ++i) {
        const T D = dO.row(i).dot(O.row(i));
        dP.row(i) = (P.row(i).array() * (dP.row(i).array() - D)).matrix();
      }
      dQ.noalias() = scale * (dP * K);
      dK.noalias() += scale * (dP.transpose() * Q);
      dV.noalias() += P.transpose() * dO;
    }
  }
}

// ---- cross-entropy over selected rows, fused with the lm_head --------------------------------

//! Returns Σ_i (logsumexp(logits_i) − logits_i[label_i]) over `n` gathered hidden rows x[n, H],
//! logits = x · headᵀ; with gradients when `dx` is given, of `weight` times that sum:
//! dx = dlogits · head (written), dhead += dlogitsᵀ · x, dlogits = weight · (softmax − onehot).
//! `logits` holds n·V values.
template <class T>
double cross_entropy_head(const T* x, std::int64_t n, int H, const T* head, int V, const int* labels, T weight,
                          T* logits, T* dx, T* dhead) {
  if (n == 0) return 0.0;
  gemm<T>(false, true, n, V, H, x, H, head, H, false, logits, V);
  double loss = 0.0;
#pragma omp parallel for schedule(static) reduction(+ : loss)
  for (std::int64_t i = 0; i < n; ++i) {
    T* z = logits + i * V;
    const T mx = *std::max_element(z, z + V);
    T sum = 0;
    for (int j = 0; j < V; ++j) sum += std::exp(z[j] - mx);
    const T lse = mx + std::log(sum);
    loss += double(lse - z[labels[i]]);
    if (dx != nullptr) {
      for (int j = 0; j < V; ++j) z[j] = weight * std::exp(z[j] - lse);
      z[labels[i]] -= weight;
    }
  }
  if (dx != nullptr) {
    gemm<T>(false, false, n, H, V, logits, V, head, H, false, dx, H);
    gemm<T>(true, false, V, H, n, logits, V, x, H, true, dhead, H);
  }
  return loss;
}

// ---- rows of a batch picked by index -----------------------------------------------------------

//! dst[i] = src[index[i]] for rows of H values.
template <class T>
void gather_rows(const T* src, const std::int64_t* index, std::int64_t n, int H, T* dst) {
  for (std::int64_t i = 0; i < n; ++i) std::copy_n(src + index[i] * H, H, dst + i * H);
}

//! dst[index[i]] += src[i] for rows of H values (an index may repeat).
template <class T>
void scatter_add_rows(const T* src, const std::int64_t* index, std::int64_t n, int H, T* dst) {
  for (std::int64_t i = 0; i < n; ++i) {
    T* d = dst + index[i] * H;
    const T* s = src + i * H;
    for (int j = 0; j < H; ++j) d[j] += s[j];
  }
}

// ---- the optimiser's update ---------------------------------------------------------------------

//! The constants of one AdamW step, and the update of one parameter: what every backend's
//! Ops::adamw applies to each element.
template <class T>
struct AdamWStep {
  T beta1, beta2;
  T step;    //!< lr / (1 − β1ᵗ)
  T rc2;     //!< 1 / √(1 − β2ᵗ)
  T eps;
  T shrink;  //!< 1 − lr · weight_decay
  BLOCKDIFF_HOST_DEVICE void apply(T& p, T g, T& m, T& v, bool decay) const {
    m = beta1 * m + (T(1) - beta1) * g;
    v = beta2 * v + (T(1) - beta2) * g * g;
#if defined(__CUDA_ARCH__)
    const T root = sqrt(v);
#else
    const T root = std::sqrt(v);
#endif
    const T q = decay ? p * shrink : p;
    p = q - step * m / (root * rc2 + eps);
  }
};

// ---- one backend's operations ----------------------------------------------------------------

//! The training operations of `Backend`. A specialisation derives from the backend, so that its
//! memory (`buffer<T>`) and transfers (`upload`, `copy`) are the backend's own; every pointer the
//! operations take lives in that memory. Specialise it for a new backend.
template <class Backend>
struct Ops {
  static_assert(::blockdiff::detail::dependent_false<Backend>,
                "no training operations for this backend: specialise blockdiff::train::ops::Ops<Backend> "
                "(the host's are in blockdiff/train/ops.hpp, CUDA's in blockdiff/train/cuda_ops.cuh)");
};

template <>
struct Ops<backend::Host> : backend::Host {
  using Backend = backend::Host;
  //! Held for the length of a step.
  using Scope = BlasInCallerThread;

  template <class T>
  static void download(T* dst, const T* src, std::size_t n) {
    std::copy_n(src, n, dst);
  }
  template <class T>
  static void zero(T* dst, std::size_t n) {
    std::fill_n(dst, n, T(0));
  }

  //! Values of scratch that rmsnorm_backward and attention_* need.
  static std::int64_t rmsnorm_scratch(std::int64_t /*n*/, int H) { return std::int64_t(max_threads()) * H; }
  static std::int64_t attention_scratch(const AttentionDims& dims) {
    return std::int64_t(max_threads()) * 2 * dims.length * dims.length;
  }

  template <class T>
  static void embedding_forward(const T* table, const int* ids, std::int64_t n, int H, T* x) {
    ops::embedding_forward(table, ids, n, H, x);
  }
  template <class T>
  static void embedding_backward(const T* dx, const int* ids, std::int64_t n, int H, T* dtable) {
    ops::embedding_backward(dx, ids, n, H, dtable);
  }
  template <class T>
  static void rmsnorm_forward(const T* x, std::int64_t n, int H, const T* w, T eps, T* y, T* rstd) {
    ops::rmsnorm_forward(x, n, H, w, eps, y, rstd);
  }
  template <class T>
  static void rmsnorm_backward(const T* dy, const T* x, const T* rstd, std::int64_t n, int H, const T* w, T* dx, T* dw,
                               T* scratch) {
    ops::rmsnorm_backward(dy, x, rstd, n, H, w, dx, dw, scratch, max_threads());
  }
  template <class T>
  static void linear_forward(const T* x, std::int64_t n, int k, const T* w, int m, const T* b, T* y,
                             bool accumulate = false) {
    ops::linear_forward(x, n, k, w, m, b, y, accumulate);
  }
  template <class T>
  static void linear_backward(const T* dy, const T* x, std::int64_t n, int k, const T* w, int m, T* dx, T* dw, T* db,
                              bool accumulate_dx = false) {
    ops::linear_backward(dy, x, n, k, w, m, dx, dw, db, accumulate_dx);
  }
  template <class T>
  static void rope(T* x, std::int64_t n, int heads, int d, const int* positions, const T* cos, const T* sin,
                   bool inverse = false) {
    ops::rope(x, n, heads, d, positions, cos, sin, inverse);
  }
  template <class T>
  static void swiglu_forward(const T* gate, const T* up, std::int64_t n, T* h) {
    ops::swiglu_forward(gate, up, n, h);
  }
  template <class T>
  static void swiglu_backward(const T* dh, const T* gate, const T* up, std::int64_t n, T* dgate, T* dup) {
    ops::swiglu_backward(dh, gate, up, n, dgate, dup);
  }
  template <class T>
  static void attention_forward(const T* q, const T* k, const T* v, const AttentionDims& dims,
                                const unsigned char* allowed, T scale, T* out, T* lse, T* scratch) {
    ops::attention_forward(q, k, v, dims, allowed, scale, out, lse, scratch);
  }
  template <class T>
  static void attention_backward(const T* dout, const T* q, const T* k, const T* v, const T* out, const T* lse,
                                 const AttentionDims& dims, const unsigned char* allowed, T scale, T* dq, T* dk, T* dv,
                                 T* scratch) {
    ops::attention_backward(dout, q, k, v, out, lse, dims, allowed, scale, dq, dk, dv, scratch);
  }
  template <class T>
  static double cross_entropy_head(const T* x, std::int64_t n, int H, const T* head, int V, const int* labels,
                                   T weight, T* logits, T* dx, T* dhead) {
    return ops::cross_entropy_head(x, n, H, head, V, labels, weight, logits, dx, dhead);
  }
  template <class T>
  static void gather_rows(const T* src, const std::int64_t* index, std::int64_t n, int H, T* dst) {
    ops::gather_rows(src, index, n, H, dst);
  }

  //! Σ x², in double.
  template <class T>
  static double sum_squares(const T* x, std::size_t n) {
    double s = 0.0;
#pragma omp parallel for reduction(+ : s) schedule(static) if (n > 65536)
    for (std::size_t i = 0; i < n; ++i) s += double(x[i]) * double(x[i]);
    return s;
  }
  template <class T>
  static void scale(T* x, std::size_t n, T s) {
    for (std::size_t i = 0; i < n; ++i) x[i] *= s;
  }
  //! The AdamW update of elements [begin, end).
  template <class T>
  static void adamw(T* params, const T* grads, T* m, T* v, std::size_t begin, std::size_t end,
                    const AdamWStep<T>& step, bool decay) {
#pragma omp parallel for schedule(static) if (end - begin > 65536)
    for (std::size_t i = begin; i < end; ++i) step.apply(params[i], grads[i], m[i], v[i], decay);
  }
  template <class T>
  static void scatter_add_rows(const T* src, const std::int64_t* index, std::int64_t n, int H, T* dst) {
    ops::scatter_add_rows(src, index, n, H, dst);
  }
};

}  // namespace blockdiff::train::ops
