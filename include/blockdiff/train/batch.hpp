// What an objective hands the model: equal-length token rows with their RoPE positions, and the
// loss terms as (flat token index whose output predicts, label) pairs.
#pragma once

#include <cstdint>
#include <vector>

namespace blockdiff::train {

//! One cross-entropy term: the output at flat index `index` (row · length + column) predicts `label`.
struct Target {
  std::int64_t index = 0;
  int label = 0;
};

//! A model-ready batch. Vectors are reused from step to step (clear keeps their capacity).
struct ModelBatch {
  int rows = 0;    //!< sequences
  int length = 0;  //!< tokens per sequence (2L for the block-diffusion objective)
  std::vector<int> tokens;      //!< [rows · length]
  std::vector<int> positions;   //!< [rows · length], RoPE positions
  std::vector<Target> targets;  //!< the loss terms; the loss is their mean

  void reset(int r, int n) {
    rows = r;
    length = n;
    tokens.assign(std::size_t(r) * n, 0);
    positions.assign(std::size_t(r) * n, 0);
    targets.clear();
  }
};

}  // namespace blockdiff::train
