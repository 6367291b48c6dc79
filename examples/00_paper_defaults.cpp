// 00: the smallest thing that runs. Decode with the paper's defaults: blocks of 32, sub-blocks
// of 8, the confidence threshold 0.9, the block cache plus the sub-block cache.
//
//   examples/00_paper_defaults MODEL_DIR [ids...]
#include <blockdiff/blockdiff.hpp>
#include <cstdio>
#include <cstdlib>

int main(int argc, char** argv) {
  using namespace blockdiff;
  if (argc < 2) return std::fprintf(stderr, "usage: %s MODEL_DIR [token ids...]\n", argv[0]), 2;
  using Qwen = model::Qwen2<backend::Host>;
  auto m = Qwen::load(argv[1]);
  std::vector<int> prompt;
  for (int i = 2; i < argc; ++i) prompt.push_back(std::atoi(argv[i]));
  if (prompt.empty()) prompt = {1, 2, 3};

  decode::BlockDiffusionDecoder<Qwen, PaperShape, unmask::Threshold, cache::Hierarchical<>> decoder(m, {0.9f});
  decode::DecodeOptions options;
  options.max_new_tokens = 64;
  options.mask_id = m.config().mask_token_id.value_or(m.vocab_size() - 1);
  options.eos_id = m.config().eos_token_id;
  const auto r = decoder.generate(prompt, options);

  for (int t : r.tokens) std::printf("%d ", t);
  std::printf("\n%zu tokens, %d denoising forwards, %.2f tokens per forward\n", r.tokens.size(),
              r.trace.denoising_forwards(), r.tokens_per_forward());
}
