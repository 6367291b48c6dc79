// Uses the library as a researcher would: one include, a policy of its own, a decode.
#include <blockdiff/blockdiff.hpp>
#include <cstdio>
#include <string>
#include <vector>

#include "ids.hpp"

namespace mine {
// Commit the leftmost masked position: a policy written outside the library.
struct LeftToRight {
  using policy_kind = blockdiff::kind::unmasking;
  static constexpr const char* name = "left-to-right";
  static constexpr bool needs_second_prob = false, needs_entropy = false;
  void validate() const {}
  void select(const blockdiff::Candidate*, int n, blockdiff::StepContext&, bool* out) const {
    if (n > 0) out[0] = true;
  }
};
}  // namespace mine

// Arguments: a checkpoint; then, optionally, a golden decode of it (the paper's decoder, blocks of
// 32, sub-blocks of 8, block cache): its prompt ids, threshold, EOS id, max_new_tokens and tokens.
int main(int argc, char** argv) {
  if (argc != 2 && argc != 7) return 2;
  using Model = blockdiff::model::Qwen2<blockdiff::backend::Host>;
  auto model = Model::load(argv[1]);
  blockdiff::decode::BlockDiffusionDecoder<Model, blockdiff::BlockShape<8, 4>, mine::LeftToRight> decoder(model);
  blockdiff::decode::DecodeOptions options;
  options.max_new_tokens = 8;
  options.mask_id = *model.config().mask_token_id;
  auto result = decoder.generate(std::vector<int>{1, 2, 3}, options);
  std::printf("consumer decoded %zu tokens in %d denoising forwards\n", result.tokens.size(),
              result.trace.denoising_forwards());
  // Block 0 holds the 3 prompt tokens and 5 masks (5 forwards); the commit forward gives token 6;
  // block 1 needs 2 more: 8 tokens, 7 denoising forwards.
  if (result.tokens.size() != 8 || result.trace.denoising_forwards() != 7) return 1;
  if (argc == 2) return 0;

  using namespace blockdiff;
  decode::BlockDiffusionDecoder<Model, BlockShape<32, 8>, unmask::Threshold, cache::Block<>> paper(
      model, unmask::Threshold{std::stof(argv[3])});
  options.eos_id = std::stoi(argv[4]);
  options.max_new_tokens = std::stoi(argv[5]);
  const auto decoded = paper.generate(ids(argv[2]), options);
  const bool same = decoded.tokens == ids(argv[6]);
  std::printf("the golden decode's %zu tokens: %s\n", decoded.tokens.size(), same ? "the same" : "different");
  return same ? 0 : 1;
}
