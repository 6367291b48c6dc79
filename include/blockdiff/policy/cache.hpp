// Cache strategies of block-diffusion decoding (§3.3, §5).
//
// None recomputes the whole sequence at every forward (the reference). Block keeps the K/V of
// committed blocks: exact, because committed blocks only ever see committed blocks. Hierarchical
// adds the paper's sub-block cache (DualCache): a full-block forward saves the block's K/V, then
// sub-block forwards of S tokens overwrite their own rows and attend [committed ; saved block];
// approximate, since the other rows' K/V go stale. Each takes the commit mode: `forward` runs the
// paper's commit forward over the finished block (it appends clean K/V and gives the next
// block's first token); `reuse` skips it, keeps the last denoising forward's K/V and takes the
// next token from that forward's last row (approximate, as some engines do).
#pragma once

#include "blockdiff/policy/kind.hpp"

namespace blockdiff {

enum class Commit { forward, reuse };

namespace cache {

template <Commit C = Commit::forward>
struct None {
  using policy_kind = kind::cache;
  static constexpr const char* name = "none";
  static constexpr bool block_cache = false;
  static constexpr bool sub_block_cache = false;
  static constexpr Commit commit = C;
};

template <Commit C = Commit::forward>
struct Block {
  using policy_kind = kind::cache;
  static constexpr const char* name = "block";
  static constexpr bool block_cache = true;
  static constexpr bool sub_block_cache = false;
  static constexpr Commit commit = C;
};

template <Commit C = Commit::forward>
struct Hierarchical {
  using policy_kind = kind::cache;
  static constexpr const char* name = "hierarchical";
  static constexpr bool block_cache = true;
  static constexpr bool sub_block_cache = true;
  static constexpr Commit commit = C;
};

}  // namespace cache

template <class C>
concept CacheStrategy = PolicyOfKind<C, kind::cache> && requires {
  { C::block_cache } -> std::convertible_to<bool>;
  { C::sub_block_cache } -> std::convertible_to<bool>;
  { C::commit } -> std::convertible_to<Commit>;
};

static_assert(CacheStrategy<cache::None<>>);
static_assert(CacheStrategy<cache::Block<>>);
static_assert(CacheStrategy<cache::Hierarchical<>>);

}  // namespace blockdiff
