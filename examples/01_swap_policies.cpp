// 01: an ablation is a change of type. The same prompt through each unmasking policy and each
// cache strategy; nothing but the template arguments (and the policy's knob) changes.
//
//   examples/01_swap_policies MODEL_DIR
#include <blockdiff/blockdiff.hpp>
#include <cstdio>

using namespace blockdiff;
using Qwen = model::Qwen2<backend::Host>;

template <class Policy, class Cache = cache::Block<>>
void run(Qwen& m, Policy policy, const char* label) {
  decode::BlockDiffusionDecoder<Qwen, BlockShape<32, 8>, Policy, Cache> decoder(m, policy);
  decode::DecodeOptions o;
  o.max_new_tokens = 64;
  o.mask_id = m.config().mask_token_id.value_or(m.vocab_size() - 1);
  const auto r = decoder.generate(std::vector<int>{11, 22, 33, 44, 55}, o);
  std::printf("%-28s %-13s %3zu tokens %4d forwards %5.2f tokens/forward\n", label, Cache::name, r.tokens.size(),
              r.trace.total_forwards(), r.tokens_per_forward());
}

int main(int argc, char** argv) {
  if (argc < 2) return std::fprintf(stderr, "usage: %s MODEL_DIR\n", argv[0]), 2;
  auto m = Qwen::load(argv[1]);
  run(m, unmask::Threshold{0.9f}, "Threshold{0.9} (paper)");
  run(m, unmask::TopK{2}, "TopK{2}");
  run(m, unmask::Scheduled<schedule::Cosine>{8}, "Scheduled<Cosine>{8 steps}");
  run(m, unmask::Margin{0.8f}, "Margin{0.8}");
  run(m, unmask::Entropy{0.3f}, "Entropy{0.3}");
  run(m, unmask::EntropyBounded{0.5f}, "EntropyBounded{0.5}");
  run(m, unmask::Factor{1.0f}, "Factor{1} (Fast-dLLM v1)");
  run(m, unmask::Random{2}, "Random{2}");
  run<unmask::Threshold, cache::None<>>(m, {0.9f}, "Threshold{0.9} (paper)");
  run<unmask::Threshold, cache::Hierarchical<>>(m, {0.9f}, "Threshold{0.9} (paper)");
  run<unmask::Threshold, cache::Hierarchical<Commit::reuse>>(m, {0.9f}, "Threshold{0.9}, no commit");
}
