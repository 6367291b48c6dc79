// Backends, operations, and the Kernel trait that joins them.
//
// An operation is an empty tag type (op::Linear, op::Attention<Mask>, ...); a backend is an
// empty tag type (backend::Host, backend::Cuda). `Kernel<Backend, Op>` is the implementation.
// The primary template refuses with a message that names what to write, so a missing kernel is
// one readable compile error, and adding a backend means adding specialisations only.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "blockdiff/core/macros.hpp"
#include "blockdiff/core/tensor.hpp"

namespace blockdiff {

namespace backend {
//! The CPU backend: f32 compute, Eigen GEMMs, OpenMP threads. Memory is ordinary host memory,
//! so the transfers below are plain copies (or nothing, for to_host).
struct Host {
  template <class T>
  using buffer = ::blockdiff::Buffer<T>;
  static constexpr const char* name = "host";

  template <class T>
  static void upload(T* dst, const T* src, std::size_t n) {
    std::copy_n(src, n, dst);
  }
  template <class T>
  static void copy(T* dst, const T* src, std::size_t n) {
    std::copy_n(src, n, dst);
  }
  //! A host pointer to n values at `src`: `src` itself on the host; `staging` holds a copy elsewhere.
  template <class T>
  static const T* to_host(const T* src, std::size_t, std::vector<T>&) {
    return src;
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
//! Writes n tokens' K and V ([n, kv_heads, head_dim]) into cache slots [first, first + n).
struct KvWrite {};
//! y[n, h] = x · rsqrt(mean(x²) + eps) · weight, in f32.
struct RmsNorm {};
//! In-place rotary embedding of [n, heads, head_dim] with the half-rotation layout.
struct Rope {};
//! out[n, i] = silu(gate[n, i]) · up[n, i], written over gate.
struct SwiGlu {};
//! Scaled dot-product attention of each row's queries against its cache, under Mask.
template <class Mask>
struct Attention {};
//! Per logit row: max probability and argmax, plus the second probability and the entropy
//! when the unmasking policy asks for them.
template <bool SecondProb, bool Entropy>
struct VocabStats {};
}  // namespace op

//! The implementation of `Op` on `Backend`. Specialise it; never call the primary template.
template <class Backend, class Op>
struct Kernel {
  static_assert(detail::dependent_false<Backend, Op>,
                "no kernel for this (Backend, Op) pair: specialise blockdiff::Kernel<Backend, Op> "
                "(host kernels live in blockdiff/backend/host.hpp, CUDA kernels in blockdiff/backend/cuda/*.cuh)");
};

//! One row of a batched attention call: its queries and the cache they attend.
struct AttentionRow {
  std::int64_t q_begin = 0;  //!< first query row in the packed [tokens, heads, head_dim] input
  int n_q = 0;               //!< number of queries
  int first_slot = 0;        //!< cache slot of the first query (what the mask sees)
  int kv_end = 0;            //!< the queries attend cache slots [0, kv_end)
  const float* k = nullptr;  //!< [kv_heads, capacity, head_dim] for this layer
  const float* v = nullptr;
  int capacity = 0;
};

//! Shapes of a batched attention call.
struct AttentionShape {
  int heads = 0;
  int kv_heads = 0;
  int head_dim = 0;
  float scale = 1.0f;
};

//! What the vocabulary reduction computes for one logit row.
struct PositionStats {
  float p1 = 0;       //!< largest softmax probability
  int token = 0;      //!< its index (lowest on ties)
  float p2 = 0;       //!< second largest probability (when asked for)
  float entropy = 0;  //!< entropy in nats (when asked for)
};

}  // namespace blockdiff
