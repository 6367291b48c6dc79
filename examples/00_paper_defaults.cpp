// 00: the smallest thing that runs. Text in, text out, with the paper's decoder: the confidence
// threshold 0.9, the block cache plus the sub-block cache, and the block the model was trained
// with (config.json's bd_size: 32 for Fast-dLLM v2, sub-blocks of 8; 8 for the embedded model,
// sub-blocks of 4). A block is a type: dispatch_value turns the config's number into one.
//
//   examples/00_paper_defaults MODEL_DIR [PROMPT]
//   examples/00_paper_defaults models/tasks-fdllm2 "a:47+8-5+9="     # -> 55,50,59#59
#include <algorithm>
#include <blockdiff/blockdiff.hpp>
#include <blockdiff/tokenizer/tokenizer.hpp>
#include <cstdio>

int main(int argc, char** argv) try {
  using namespace blockdiff;
  if (argc < 2) return std::fprintf(stderr, "usage: %s MODEL_DIR [PROMPT]\n", argv[0]), 2;
  using Qwen = model::Qwen2<backend::Host>;
  auto m = Qwen::load(argv[1]);
  const auto tok = tokenizer::Tokenizer::load(argv[1]);  // its tokenizer.json
  const auto prompt = tok.encode(argc > 2 ? argv[2] : "a:47+8-5+9=");  // by default, an embedded-model task

  decode::DecodeOptions options;
  options.max_new_tokens = 64;
  options.mask_id = m.config().mask_token_id.value_or(-1);
  options.eos_id = m.config().eos_token_id;
  dispatch_value<8, 16, 32>(m.config().bd_size, [&]<int B>() {
    using Shape = BlockShape<B, std::min(8, B / 2)>;  // PaperShape at 32
    decode::BlockDiffusionDecoder<Qwen, Shape, unmask::Threshold, cache::Hierarchical<>> decoder(m, {0.9f});
    const auto r = decoder.generate(prompt, options);
    std::printf("%s\n%zu tokens at block/sub-block %d/%d, %d denoising forwards, %.2f tokens per forward\n",
                tok.decode(r.tokens, /*skip_special=*/true).c_str(), r.tokens.size(), Shape::block, Shape::sub_block,
                r.trace.denoising_forwards(), r.tokens_per_forward());
  }, "the model's bd_size");
} catch (const std::exception& e) {
  std::fprintf(stderr, "error: %s\n", e.what());
  return 1;
}
