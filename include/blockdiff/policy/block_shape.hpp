// BlockShape<Block, SubBlock>: the two sizes that change generated code.
//
// Fast-dLLM v2 decodes in blocks of 32 tokens, sub-block by sub-block (8 tokens in the paper).
// Both are template arguments: the block size fixes the block-causal mask type and the sizes of
// every per-block array; the sub-block size fixes the shape of the sub-block forward.
#pragma once

#include "blockdiff/policy/kind.hpp"

namespace blockdiff {

//! The largest block blockdiff compiles (bounds the per-block scratch arrays).
inline constexpr int max_block_size = 256;

template <int Block, int SubBlock>
struct BlockShape {
  static_assert(Block > 0 && SubBlock > 0, "BlockShape<Block, SubBlock>: both sizes must be positive");
  static_assert(Block % SubBlock == 0, "BlockShape<Block, SubBlock>: SubBlock must divide Block");
  static_assert(Block <= max_block_size, "BlockShape<Block, SubBlock>: Block is larger than max_block_size");
  using policy_kind = kind::block_shape;
  static constexpr int block = Block;
  static constexpr int sub_block = SubBlock;
  static constexpr int sub_blocks = Block / SubBlock;
};

template <class S>
concept BlockShapeLike = PolicyOfKind<S, kind::block_shape> && requires {
  { S::block } -> std::convertible_to<int>;
  { S::sub_block } -> std::convertible_to<int>;
};

//! The paper's default shape.
using PaperShape = BlockShape<32, 8>;

static_assert(BlockShapeLike<PaperShape>);

}  // namespace blockdiff
