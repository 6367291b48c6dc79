// Backends, operations, and the Kernel trait that joins them.
//
// An operation is an empty tag type (op::Linear, op::Attention<Mask>, ...); a backend is an
// empty tag type (backend::Host, backend::Cuda). `Kernel<Backend, Op>` is the implementation.
// The primary template refuses with a message that names what to write, so a missing kernel is
// one readable compile error, and adding a backend means adding specialisations only.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdlib>
#include <cstdint>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "blockdiff/core/error.hpp"
#include "blockdiff/core/macros.hpp"
#include "blockdiff/core/tensor.hpp"

namespace blockdiff {

namespace backend {
//! Runs a forward's kernel sequence. The host runs it as it is; a device backend may record it
//! once per key (every shape and pointer its kernels are given; `key()` makes it) and replay
//! the recording.
struct Immediate {
  static constexpr bool records = false;  //!< a forward's shapes may change freely from call to call
  template <class Key, class F>
  void run(Key&&, F&& enqueue) {
    enqueue();
  }
  long launches() const { return 0; }
};
//! The CPU backend: f32 compute, Eigen GEMMs, OpenMP threads. Memory is ordinary host memory,
//! so the transfers below are plain copies.
struct Host {
  template <class T>
  using buffer = ::blockdiff::Buffer<T>;
  using Replay = Immediate;
  static constexpr const char* name = "host";

  template <class T>
  static void upload(T* dst, const T* src, std::size_t n) {
    std::copy_n(src, n, dst);
  }
  template <class T>
  static void download(T* dst, const T* src, std::size_t n) {
    std::copy_n(src, n, dst);
  }
  template <class T>
  static void copy(T* dst, const T* src, std::size_t n) {
    std::copy_n(src, n, dst);
  }

  //! Whether products of BF16-held weights with 2 or more rows also round their activations to
  //! BF16 and multiply pairs of them with AVX512-BF16 (vdpbf16ps), on a CPU that has it: twice the
  //! multiply-adds per instruction, at the activations' BF16 precision (as GPU BF16 GEMMs work).
  //! Off by default, so that BF16 weights keep f32 arithmetic; BLOCKDIFF_BF16_PRODUCTS=1 in the
  //! environment or bf16_products(true) turns it on for the process (set it between forwards).
  static bool bf16_products() { return bf16_products_flag(); }
  static void bf16_products(bool on) { bf16_products_flag() = on; }

  //! The vector instructions the host's kernels may use. They run on the widest that both the
  //! CPU and this cap allow: AVX-512, else AVX2 with FMA, else the build's own (the portable
  //! path: SSE2 on any x86-64 unless the build targets more; a cap below the build's own has no
  //! effect). BLOCKDIFF_HOST_ISA=portable|avx2|avx512 in the environment or max_isa(...) sets the
  //! cap for the process (set it between forwards), to time or test a narrower CPU's path.
  enum class Isa { portable, avx2, avx512 };
  static Isa max_isa() { return max_isa_flag(); }
  static void max_isa(Isa cap) { max_isa_flag() = cap; }
  //! The cap that BLOCKDIFF_HOST_ISA names; no value, or an empty one, is no cap.
  static Isa parse_isa(const char* v) {
    if (v == nullptr || *v == '\0') return Isa::avx512;
    const std::string_view s(v);
    if (s == "portable") return Isa::portable;
    if (s == "avx2") return Isa::avx2;
    if (s == "avx512") return Isa::avx512;
    throw std::invalid_argument("BLOCKDIFF_HOST_ISA=" + std::string(s) + ": expected portable, avx2 or avx512");
  }

 private:
  static Isa& max_isa_flag() {
    static Isa cap = parse_isa(std::getenv("BLOCKDIFF_HOST_ISA"));
    return cap;
  }
  static bool& bf16_products_flag() {
    static bool on = [] {
      const char* v = std::getenv("BLOCKDIFF_BF16_PRODUCTS");
      return v != nullptr && *v != '\0' && *v != '0';
    }();
    return on;
  }
};
//! The CUDA backend; its kernels live in <blockdiff/cuda.cuh>.
struct Cuda;
}  // namespace backend

namespace op {
//! y[n, m] = x[n, k] · w[m, k]ᵀ (+ bias[m]), optionally accumulated into y.
struct Linear {};
//! out[t, :] = table[ids[t], :]: the embedding lookup (ids in device memory).
struct Embedding {};
//! Writes each row's new K and V (packed [tokens, kv_heads, head_dim] from row q_begin) into its
//! cache at slots [first_slot, first_slot + n_q): one call for a whole batch.
struct KvWrite {};
//! y[n, h] = x · rsqrt(mean(x²) + eps) · weight, in f32.
struct RmsNorm {};
//! In-place rotary embedding of [n, heads, head_dim] with the half-rotation layout.
struct Rope {};
//! out[n, i] = silu(gate[n, i]) · up[n, i], written over gate.
struct SwiGlu {};
//! Several products of one input, y_i = x · w_iᵀ + b_i (a layer's q, k and v), the input
//! optionally RMS-normalised first (InputNorm). Composite: a backend that does not specialise it
//! runs the norm, then one Linear per product.
struct Linears {};
//! out[n, m] = silu(x · w_gateᵀ) · (x · w_upᵀ), the first half of the MLP, the input optionally
//! RMS-normalised first (InputNorm). Composite: the norm, two Linears and a SwiGlu where not
//! specialised.
struct SwiGluLinear {};
//! RoPE on q and k, then each row's k and v into its cache. Composite: two Ropes and a KvWrite
//! where not specialised.
struct RopeKvWrite {};
//! Scaled dot-product attention of each row's queries against its cache, under Mask.
template <class Mask>
struct Attention {};
//! Per logit row: max probability and argmax, plus the second probability and the entropy
//! when the unmasking policy asks for them. A logit of −inf or NaN is a token of probability 0
//! (here and in Sample). A row without a finite largest logit (every logit −inf or NaN, or one
//! +inf) has no distribution: its token is the first +inf's, or 0, with p1 = 1 and p2 and the
//! entropy 0 (here and in Sample).
template <bool SecondProb, bool Entropy>
struct VocabStats {};
//! After a denoising forward, each row's unmasking decision: the policy's `select` over the
//! masked positions of the row's active sub-block, for a whole batch in one call (types and the
//! host's kernel in policy/unmask.hpp). A backend may run it where its kernels run when the
//! policy declares `device_select` (the CUDA backend does, one thread a row).
template <class Policy>
struct Unmask {};
//! Per requested logit row: one token drawn at temperature T from the top-p nucleus, as the
//! official code samples (§3.3). softmax(logits / T); keep the smallest prefix of tokens, by
//! decreasing probability (lower index first on ties), whose cumulative probability exceeds p
//! (the first is always kept; with p = 1 every token, in index order); the token is the first
//! of them at which the cumulative probability exceeds u times the kept mass (where rounding
//! leaves no such token, the last of them with a probability above 0). Its statistics:
//! p1 the drawn token's renormalised probability (what the unmasking policy reads as the
//! confidence), p2 and the entropy those of the tempered distribution.
struct Sample {};
}  // namespace op

//! The implementation of `Op` on `Backend`. Specialise it; never call the primary template.
template <class Backend, class Op>
struct Kernel {
  static_assert(detail::dependent_false<Backend, Op>,
                "no kernel for this (Backend, Op) pair: specialise blockdiff::Kernel<Backend, Op> "
                "(host kernels live in blockdiff/backend/host/*.hpp, CUDA kernels in blockdiff/backend/cuda/*.cuh)");
};

//! One row of a batched attention (or KV-write) call: its queries and the cache they attend. The
//! rows of a call live in the backend's memory (on the device for CUDA), so that a forward
//! uploads them once and a captured sequence of kernels reads the current ones.
struct AttentionRow {
  std::int64_t q_begin = 0;  //!< first query row in the packed [tokens, heads, head_dim] input
  int n_q = 0;               //!< number of queries
  int first_slot = 0;        //!< cache slot of the first query (what the mask sees)
  int kv_end = 0;            //!< the queries attend cache slots [0, kv_end)
  float* k = nullptr;  //!< [kv_heads, capacity, head_dim] for this layer (KvWrite writes it)
  float* v = nullptr;
  int capacity = 0;
};

//! Shapes of a batched attention call.
struct AttentionShape {
  int heads = 0;
  int kv_heads = 0;
  int head_dim = 0;
  float scale = 1.0f;
  int max_queries = 0;  //!< the largest n_q of the call's rows (a device grid is sized by it)
  int max_keys = 0;     //!< the largest cache capacity of the call's rows (bounds every kv_end)
};

//! One product of an op::Linears call.
template <class W>
struct LinearOut {
  const W* w = nullptr;  //!< [m, k]
  int m = 0;
  const float* bias = nullptr;  //!< [m] or null
  float* y = nullptr;           //!< [n, m]
};

//! An RMSNorm of the input of op::Linears or op::SwiGluLinear: the products read
//! RmsNorm(x; weight, eps) as op::RmsNorm computes it. A backend may fold it into the products
//! (the CUDA kernels of up to 32 rows do: the normalised rows are never written); otherwise the
//! normalised rows go to `scratch` ([n, k]) and the products read them there. A null weight is
//! no norm.
struct InputNorm {
  const float* weight = nullptr;  //!< [k]
  float eps = 0.0f;
  float* scratch = nullptr;  //!< [n, k]

  explicit operator bool() const { return weight != nullptr; }
};

//! The rows a product reads: x itself, or op::RmsNorm of x written to norm.scratch.
template <class Backend>
const float* normed_input(const float* x, std::int64_t n, int k, const InputNorm& norm) {
  if (!norm) return x;
  require(norm.scratch != nullptr, "InputNorm: a norm weight and no scratch rows to normalise into");
  Kernel<Backend, op::RmsNorm>::run(x, n, k, norm.weight, norm.eps, norm.scratch);
  return norm.scratch;
}

//! The composite operations as their parts: what a backend runs unless it specialises them.
template <class Backend>
struct Kernel<Backend, op::Linears> {
  template <class W>
  static void run(const float* x, std::int64_t n, int k, std::span<const LinearOut<W>> outs, const InputNorm& norm = {}) {
    x = normed_input<Backend>(x, n, k, norm);
    for (const auto& o : outs) Kernel<Backend, op::Linear>::run(x, n, k, o.w, o.m, o.bias, o.y);
  }
};
template <class Backend>
struct Kernel<Backend, op::SwiGluLinear> {
  //! `up` is [n, m] of scratch for the second product.
  template <class W>
  static void run(const float* x, std::int64_t n, int k, const W* w_gate, const W* w_up, int m, float* out, float* up,
                  const InputNorm& norm = {}) {
    x = normed_input<Backend>(x, n, k, norm);
    Kernel<Backend, op::Linear>::run(x, n, k, w_gate, m, nullptr, out);
    Kernel<Backend, op::Linear>::run(x, n, k, w_up, m, nullptr, up);
    Kernel<Backend, op::SwiGlu>::run(out, up, n * m);
  }
};
template <class Backend>
struct Kernel<Backend, op::RopeKvWrite> {
  //! q: [n, heads, d], k and v: [n, kv_heads, d]; `rows` as for op::KvWrite.
  static void run(float* q, float* k, const float* v, std::int64_t n, const int* positions, const float* cos_t,
                  const float* sin_t, std::span<const AttentionRow> rows, const AttentionShape& shape) {
    Kernel<Backend, op::Rope>::run(q, n, shape.heads, shape.head_dim, positions, cos_t, sin_t);
    Kernel<Backend, op::Rope>::run(k, n, shape.kv_heads, shape.head_dim, positions, cos_t, sin_t);
    Kernel<Backend, op::KvWrite>::run(k, v, rows, shape);
  }
};

//! One draw of op::Sample: which logit row, and the uniform number in [0, 1) that picks the token
//! (drawn by the caller, so that every backend draws the same token from the same generator).
struct SampleRequest {
  std::int64_t row = 0;
  double u = 0.0;
};

//! What the vocabulary reduction computes for one logit row.
struct PositionStats {
  float p1 = 0;       //!< largest softmax probability
  int token = 0;      //!< its index (lowest on ties)
  float p2 = 0;       //!< second largest probability (when asked for)
  float entropy = 0;  //!< entropy in nats (when asked for)
};

}  // namespace blockdiff
