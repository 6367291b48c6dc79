// Uses the CUDA backend as a researcher's .cu file would: one include, a model on the GPU, the
// paper's decoder. Built against blockdiff::cuda (from an install, or blockdiff added with
// add_subdirectory); without a GPU it stops once it has shown that it built and linked.
#include <blockdiff/cuda.cuh>
#include <cstdio>
#include <string>
#include <vector>

#include "ids.hpp"

// Arguments: a checkpoint and a golden decode of it (blocks of 32, sub-blocks of 8, block cache):
// its prompt ids, threshold, EOS id, max_new_tokens and tokens.
int main(int argc, char** argv) {
  using namespace blockdiff;
  if (argc != 7) return 2;
  if (backend::Cuda::device_count() == 0) {
    std::printf("consumer (CUDA) built and linked; no GPU here, so it decodes nothing\n");
    return 0;
  }
  using Model = model::Qwen2<backend::Cuda>;
  auto model = Model::load(argv[1]);
  decode::BlockDiffusionDecoder<Model, BlockShape<32, 8>, unmask::Threshold, cache::Block<>> paper(
      model, unmask::Threshold{std::stof(argv[3])});
  decode::DecodeOptions options;
  options.mask_id = *model.config().mask_token_id;
  options.eos_id = std::stoi(argv[4]);
  options.max_new_tokens = std::stoi(argv[5]);
  const auto decoded = paper.generate(ids(argv[2]), options);
  const bool same = decoded.tokens == ids(argv[6]);
  std::printf("consumer (CUDA): the golden decode's %zu tokens on the GPU: %s\n", decoded.tokens.size(),
              same ? "the same" : "different");
  return same ? 0 : 1;
}
