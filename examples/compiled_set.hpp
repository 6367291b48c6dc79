// The decoder configurations compiled into the blockdiff program, listed in one place.
//
// The full product of shapes x policies x caches x commit modes would take far too long to
// compile, so the program instantiates: the paper's Threshold policy at every block shape
// (blocks 2..64, every sub-block that divides them) with each cache; every other policy at the
// paper's shape BlockShape<32, 8> and at the embedded model's shape, with each cache; and the
// commit-reuse mode (--no-commit) for Threshold at those same shapes. To add a configuration, add its
// shape to the lists below (or a `dispatch_*` branch) and rebuild; nothing else changes.
//
// The set compiles in three parts of about fifty decoders each, in parallel (decode_part_of).
#pragma once

#include <string>
#include <type_traits>

#include "blockdiff/blockdiff.hpp"

namespace blockdiff::cli {

//! Block sizes compiled for Threshold; sub-blocks are every power of two that divides them.
#define BLOCKDIFF_CLI_BLOCKS 2, 4, 8, 16, 32, 64
#define BLOCKDIFF_CLI_SUB_BLOCKS 1, 2, 4, 8, 16, 32, 64

//! (block, sub-block) pairs compiled for every policy and for the commit-reuse mode.
struct PolicyShapes {
  template <class F>
  static bool visit(int block, int sub, F&& f) {
    if (block == 32 && sub == 8) return f.template operator()<BlockShape<32, 8>>(), true;
    if (block == 8 && sub == 4) return f.template operator()<BlockShape<8, 4>>(), true;
    return false;
  }
  static constexpr const char* list = "32/8, 8/4";
};

//! The part of the compiled set that a decoder compiles in (decode_part_<n>.cpp): Threshold at
//! blocks up to 16 (45 decoders, --no-commit included), at blocks 32 and 64 (42), every other policy (54).
inline constexpr int decode_parts = 3;
template <class Shape, class Policy>
constexpr int decode_part_of() {
  if constexpr (std::is_same_v<Policy, unmask::Threshold>) return Shape::block <= 16 ? 0 : 1;
  return 2;
}

//! The decoders compiled for --device cuda (examples/device_cuda.cu, on_gpu): each costs nvcc far
//! more compile time than it costs g++, so the GPU's set is the paper's policy at these shapes.
inline constexpr const char* gpu_set_help =
    "  --device cuda: threshold at block/sub-block 32/8, 8/4 x cache none|block|hierarchical (--no-commit too), "
    "and AR\n";

inline std::string compiled_set_help() {
  return std::string("Compiled decoder configurations:\n") +
         "  threshold: block 2, 4, 8, 16, 32, 64 x every sub-block dividing it x cache none|block|hierarchical\n"
         "  topk, scheduled (linear|loglinear|cosine), margin, entropy, entropy-bounded, factor, random:\n"
         "             block/sub-block " + PolicyShapes::list + " x cache none|block|hierarchical\n"
         "  --no-commit: threshold at block/sub-block " + PolicyShapes::list + "\n" + gpu_set_help +
         "Add a configuration in examples/compiled_set.hpp.";
}

}  // namespace blockdiff::cli
