// Attention-mask kinds, as types.
//
// `allowed(q, k)` says whether the query at sequence index q may attend the key at index k.
// For inference the index is the absolute position (blocks are aligned to multiples of B from
// position 0 of the prompt, §3.2); for training it is the index in the 2L sequence [x_t ; x_0]
// (§2.4). A mask whose allowed keys are a prefix [0, key_end(q)) says so by declaring
// `key_end`: the attentions then never read a key past the bound, and skip the predicate below
// it. Any other mask (the training one, or one of your own) is a predicate over every key.
#pragma once

#include <concepts>

#include "blockdiff/core/macros.hpp"

namespace blockdiff::mask {

//! Token-causal: the AR model's mask.
struct Causal {
  static constexpr const char* name = "causal";
  BLOCKDIFF_HOST_DEVICE constexpr bool allowed(int q, int k) const { return k <= q; }
  BLOCKDIFF_HOST_DEVICE constexpr int key_end(int q) const { return q + 1; }
};

//! Every query sees every key: the sub-block forward against [committed ; scratch].
struct Full {
  static constexpr const char* name = "full";
  BLOCKDIFF_HOST_DEVICE constexpr bool allowed(int, int) const { return true; }
  BLOCKDIFF_HOST_DEVICE constexpr int key_end(int) const { return 0x7fffffff; }
};

//! Block-causal with absolute alignment: a query attends every key whose block is not later.
//! Prefill, block and commit forwards of Fast-dLLM v2 inference all use it (§3.2).
template <int B>
struct BlockCausal {
  static_assert(B > 0, "BlockCausal<B>: the block size must be positive");
  static constexpr const char* name = "block-causal";
  static constexpr int block = B;
  BLOCKDIFF_HOST_DEVICE constexpr bool allowed(int q, int k) const { return k / B <= q / B; }
  BLOCKDIFF_HOST_DEVICE constexpr int key_end(int q) const { return (q / B + 1) * B; }
};

//! The 2L training mask of §2.4 over [x_t (indices 0..L-1) ; x_0 (indices L..2L-1)]:
//! block-diagonal within each half, x_t attends strictly earlier clean blocks (offset
//! block-causal), x_0 is block-causal over itself, x_0 never attends x_t.
template <int B>
struct BlockDiffusionTraining {
  static_assert(B > 0, "BlockDiffusionTraining<B>: the block size must be positive");
  static constexpr const char* name = "block-diffusion-training";
  static constexpr int block = B;
  int length = 0;  //!< L, the length of one half

  BLOCKDIFF_HOST_DEVICE constexpr bool allowed(int q, int k) const {
    const bool q_clean = q >= length, k_clean = k >= length;
    const int qb = (q_clean ? q - length : q) / B;
    const int kb = (k_clean ? k - length : k) / B;
    if (q_clean == k_clean && qb == kb) return true;       // block-diagonal
    if (!q_clean && k_clean) return qb > kb;               // offset block-causal
    if (q_clean && k_clean) return qb >= kb;               // block-causal
    return false;                                          // x_0 never sees x_t
  }
};

//! A mask whose allowed keys for query q are exactly [0, key_end(q)).
template <class Mask>
concept PrefixMask = requires(const Mask& m, int q) {
  { m.key_end(q) } -> std::same_as<int>;
};

//! One past the last key slot that query slot q may attend, at most kv_end: exact for a
//! PrefixMask, kv_end for any other (a bound, below which its predicate decides).
template <class Mask>
BLOCKDIFF_HOST_DEVICE constexpr int key_bound(const Mask& m, int q, int kv_end) {
  if constexpr (PrefixMask<Mask>) {
    const int end = m.key_end(q);
    return end < kv_end ? end : kv_end;
  } else {
    return kv_end;
  }
}

static_assert(PrefixMask<Causal> && PrefixMask<Full> && PrefixMask<BlockCausal<8>>);
static_assert(!PrefixMask<BlockDiffusionTraining<8>>);

}  // namespace blockdiff::mask
