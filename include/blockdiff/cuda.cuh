// blockdiff with the CUDA backend: everything of blockdiff.hpp plus backend::Cuda and its
// kernels. Needs nvcc. `model::Qwen2<backend::Cuda>` and every decoder then run on the GPU.
#pragma once

#include "blockdiff/backend/cuda/attention.cuh"
#include "blockdiff/backend/cuda/elementwise.cuh"
#include "blockdiff/backend/cuda/linear.cuh"
#include "blockdiff/backend/cuda/runtime.cuh"
#include "blockdiff/backend/cuda/sample.cuh"
#include "blockdiff/backend/cuda/unmask.cuh"
#include "blockdiff/train/cuda_ops.cuh"
#include "blockdiff/backend/cuda/vocab_stats.cuh"
#include "blockdiff/blockdiff.hpp"

namespace blockdiff {
static_assert(LanguageModel<model::Qwen2<backend::Cuda>>);
}
