// What a generation did: forwards by kind, what each forward committed, and time per phase.
#pragma once

#include <array>
#include <string_view>
#include <utility>
#include <vector>

namespace blockdiff::decode {

enum class ForwardKind { prefill, block, sub_block, commit };
inline constexpr std::array<ForwardKind, 4> forward_kinds{ForwardKind::prefill, ForwardKind::block,
                                                           ForwardKind::sub_block, ForwardKind::commit};

constexpr std::string_view name_of(ForwardKind k) {
  switch (k) {
    case ForwardKind::prefill: return "prefill";
    case ForwardKind::block: return "block";
    case ForwardKind::sub_block: return "sub_block";
    case ForwardKind::commit: return "commit";
  }
  return "?";
}

//! One forward of one sequence and the (absolute position, token) pairs it committed.
struct TraceStep {
  ForwardKind kind = ForwardKind::block;
  std::vector<std::pair<int, int>> committed;
};

struct Trace {
  std::array<int, 4> forwards{};      //!< by ForwardKind
  //! Wall time of the forwards this sequence took part in, each with its statistics pass, its
  //! draws and its unmasking decisions.
  std::array<double, 4> seconds{};
  std::vector<TraceStep> steps;       //!< empty unless tracing was asked for

  int count(ForwardKind k) const { return forwards[static_cast<std::size_t>(k)]; }
  //! Denoising forwards: the ones that unmask tokens of a block (block + sub_block).
  int denoising_forwards() const { return count(ForwardKind::block) + count(ForwardKind::sub_block); }
  int total_forwards() const { return forwards[0] + forwards[1] + forwards[2] + forwards[3]; }
};

}  // namespace blockdiff::decode
