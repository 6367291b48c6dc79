// Sampling at a temperature with top-p, as the official code does (§3.3): what op::Sample draws
// (backend/kernel.hpp states it exactly). Each row of a decode draws its uniform numbers from its
// own generator, so a backend's kernel draws the same tokens as the host's.
#pragma once

namespace blockdiff::decode {

struct SamplingOptions {
  float temperature = 0.0f;  //!< 0 means greedy
  float top_p = 1.0f;
};

}  // namespace blockdiff::decode
