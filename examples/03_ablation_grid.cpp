// 03: a grid over block shape x cache x threshold, one table row each: the shape of an ablation
// study. Shapes and caches are types (expanded at compile time by a fold over type lists);
// thresholds are values (a loop). Each row decodes the same batch of prompts and shows the
// replies: far from the block the model was trained with (config.json's bd_size, marked *),
// they go wrong.
//
//   examples/03_ablation_grid MODEL_DIR [PROMPT...]
//   examples/03_ablation_grid models/tasks-fdllm2 "a:47+8-5+9=" "r:bdaec="
#include <blockdiff/blockdiff.hpp>
#include <blockdiff/tokenizer/tokenizer.hpp>
#include <cstdio>
#include <string>

using namespace blockdiff;
using Qwen = model::Qwen2<backend::Host>;

template <class... T>
struct List {};

template <class Shape, class Cache>
void row(Qwen& m, const tokenizer::Tokenizer& tok, const std::vector<std::vector<int>>& prompts, float threshold) {
  decode::BlockDiffusionDecoder<Qwen, Shape, unmask::Threshold, Cache> decoder(m, {threshold});
  decode::DecodeOptions o;
  o.max_new_tokens = 64;
  o.mask_id = m.config().mask_token_id.value_or(-1);
  o.eos_id = m.config().eos_token_id;
  o.trace = false;
  const auto results = decoder.generate(prompts, o);
  double tokens = 0, forwards = 0, seconds = results.front().seconds;
  std::string replies;
  for (auto& r : results) {
    tokens += static_cast<double>(r.tokens.size()), forwards += r.trace.denoising_forwards();
    replies += "  " + tok.decode(r.tokens, /*skip_special=*/true);
  }
  std::printf("%4d%c %9d %-13s %9.2f %12.2f %10.1f %s\n", Shape::block, Shape::block == m.config().bd_size ? '*' : ' ',
              Shape::sub_block, Cache::name, threshold, tokens / forwards, tokens / seconds, replies.c_str());
}

template <class... Shapes, class... Caches>
void grid(Qwen& m, const tokenizer::Tokenizer& tok, const std::vector<std::vector<int>>& prompts, List<Shapes...>,
          List<Caches...>) {
  auto for_caches = [&]<class Shape>() {
    for (float t : {1.0f, 0.9f, 0.7f, 0.5f}) (row<Shape, Caches>(m, tok, prompts, t), ...);
  };
  (for_caches.template operator()<Shapes>(), ...);
}

int main(int argc, char** argv) try {
  if (argc < 2) return std::fprintf(stderr, "usage: %s MODEL_DIR [PROMPT...]\n", argv[0]), 2;
  auto m = Qwen::load(argv[1]);
  const auto tok = tokenizer::Tokenizer::load(argv[1]);
  std::vector<std::vector<int>> prompts;
  for (int i = 2; i < argc; ++i) prompts.push_back(tok.encode(argv[i]));
  if (prompts.empty()) prompts = {tok.encode("a:47+8-5+9="), tok.encode("r:bdaec=")};
  std::printf("%5s %9s %-13s %9s %12s %10s  %s\n", "block", "sub-block", "cache", "threshold", "tok/forward", "tok/s",
              "replies");
  grid(m, tok, prompts, List<BlockShape<32, 8>, BlockShape<16, 4>, BlockShape<8, 4>, BlockShape<8, 2>>{},
       List<cache::None<>, cache::Block<>, cache::Hierarchical<>>{});
} catch (const std::exception& e) {
  std::fprintf(stderr, "error: %s\n", e.what());
  return 1;
}
