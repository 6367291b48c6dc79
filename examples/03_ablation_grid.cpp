// 03: a grid over block shape x policy x cache x threshold, one table row each: the shape of an
// ablation study. Shapes and policies are types (expanded at compile time by a fold over type
// lists); thresholds are values (a loop).
//
//   examples/03_ablation_grid MODEL_DIR
#include <blockdiff/blockdiff.hpp>
#include <cstdio>
#include <tuple>

using namespace blockdiff;
using Qwen = model::Qwen2<backend::Host>;

template <class... T>
struct List {};

template <class Shape, class Cache>
void row(Qwen& m, float threshold) {
  decode::BlockDiffusionDecoder<Qwen, Shape, unmask::Threshold, Cache> decoder(m, {threshold});
  decode::DecodeOptions o;
  o.max_new_tokens = 64;
  o.mask_id = m.config().mask_token_id.value_or(m.vocab_size() - 1);
  o.trace = false;
  std::vector<std::vector<int>> prompts{{3, 1, 4, 1, 5}, {9, 2, 6, 5, 3, 5, 8, 9, 7}};
  const auto results = decoder.generate(prompts, o);
  double tokens = 0, forwards = 0, seconds = results.front().seconds;
  for (auto& r : results) tokens += static_cast<double>(r.tokens.size()), forwards += r.trace.denoising_forwards();
  std::printf("%5d %9d %-13s %9.2f %12.2f %10.1f\n", Shape::block, Shape::sub_block, Cache::name, threshold,
              tokens / forwards, tokens / seconds);
}

template <class... Shapes, class... Caches>
void grid(Qwen& m, List<Shapes...>, List<Caches...>) {
  auto for_caches = [&]<class Shape>() {
    for (float t : {1.0f, 0.9f, 0.7f, 0.5f}) (row<Shape, Caches>(m, t), ...);
  };
  (for_caches.template operator()<Shapes>(), ...);
}

int main(int argc, char** argv) {
  if (argc < 2) return std::fprintf(stderr, "usage: %s MODEL_DIR\n", argv[0]), 2;
  auto m = Qwen::load(argv[1]);
  std::printf("%5s %9s %-13s %9s %12s %10s\n", "block", "sub-block", "cache", "threshold", "tok/forward", "tok/s");
  grid(m, List<BlockShape<32, 8>, BlockShape<32, 4>, BlockShape<16, 4>>{},
       List<cache::None<>, cache::Block<>, cache::Hierarchical<>>{});
}
