// 01: an ablation is a change of type. The same prompt through each unmasking policy and each
// cache strategy; nothing but the template arguments (and the policy's knob) changes. The block
// is the model's own (config.json's bd_size), as in 00.
//
//   examples/01_swap_policies MODEL_DIR [PROMPT]
//   examples/01_swap_policies models/tasks-fdllm2 "r:bdaec="
#include <algorithm>
#include <blockdiff/blockdiff.hpp>
#include <blockdiff/tokenizer/tokenizer.hpp>
#include <cstdio>

using namespace blockdiff;
using Qwen = model::Qwen2<backend::Host>;

template <class Shape, class Policy, class Cache = cache::Block<>>
void run(Qwen& m, const tokenizer::Tokenizer& tok, const std::vector<int>& prompt, Policy policy, const char* label) {
  decode::BlockDiffusionDecoder<Qwen, Shape, Policy, Cache> decoder(m, policy);
  decode::DecodeOptions o;
  o.max_new_tokens = 64;
  o.mask_id = m.config().mask_token_id.value_or(-1);
  o.eos_id = m.config().eos_token_id;
  const auto r = decoder.generate(prompt, o);
  std::printf("%-28s %-13s %3zu tokens %4d forwards %5.2f tokens/forward  %s\n", label, Cache::name, r.tokens.size(),
              r.trace.total_forwards(), r.tokens_per_forward(), tok.decode(r.tokens, /*skip_special=*/true).c_str());
}

int main(int argc, char** argv) try {
  if (argc < 2) return std::fprintf(stderr, "usage: %s MODEL_DIR [PROMPT]\n", argv[0]), 2;
  auto m = Qwen::load(argv[1]);
  const auto tok = tokenizer::Tokenizer::load(argv[1]);
  const auto prompt = tok.encode(argc > 2 ? argv[2] : "a:47+8-5+9=");
  dispatch_value<8, 16, 32>(m.config().bd_size, [&]<int B>() {
    using S = BlockShape<B, std::min(8, B / 2)>;
    std::printf("block/sub-block %d/%d\n", S::block, S::sub_block);
    run<S>(m, tok, prompt, unmask::Threshold{0.9f}, "Threshold{0.9} (paper)");
    run<S>(m, tok, prompt, unmask::TopK{2}, "TopK{2}");
    run<S>(m, tok, prompt, unmask::Scheduled<schedule::Cosine>{8}, "Scheduled<Cosine>{8 steps}");
    run<S>(m, tok, prompt, unmask::Margin{0.8f}, "Margin{0.8}");
    run<S>(m, tok, prompt, unmask::Entropy{0.3f}, "Entropy{0.3}");
    run<S>(m, tok, prompt, unmask::EntropyBounded{0.5f}, "EntropyBounded{0.5}");
    run<S>(m, tok, prompt, unmask::Factor{1.0f}, "Factor{1} (Fast-dLLM v1)");
    run<S>(m, tok, prompt, unmask::Random{2}, "Random{2}");
    run<S, unmask::Threshold, cache::None<>>(m, tok, prompt, {0.9f}, "Threshold{0.9} (paper)");
    run<S, unmask::Threshold, cache::Hierarchical<>>(m, tok, prompt, {0.9f}, "Threshold{0.9} (paper)");
    run<S, unmask::Threshold, cache::Hierarchical<Commit::reuse>>(m, tok, prompt, {0.9f}, "Threshold{0.9}, no commit");
  }, "the model's bd_size");
} catch (const std::exception& e) {
  std::fprintf(stderr, "error: %s\n", e.what());
  return 1;
}
