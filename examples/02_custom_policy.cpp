// 02: your own unmasking policy, outside the library, in a few lines. It declares its kind and
// the statistics it needs; the decoder picks the vocabulary reduction from those traits.
//
// This one commits every position whose margin p1 - p2 exceeds tau, but at most `cap` per
// forward, most confident first, and always at least one. Its `select` uses the standard
// library, so it runs on the host on every backend; a policy whose `select` is
// BLOCKDIFF_HOST_DEVICE and uses no host-only code may declare
// `static constexpr bool device_select = true;`, and the CUDA backend then runs it in a kernel.
//
//   examples/02_custom_policy MODEL_DIR [PROMPT]
//   examples/02_custom_policy models/tasks-fdllm2 "s:52917="
#include <algorithm>
#include <blockdiff/blockdiff.hpp>
#include <blockdiff/tokenizer/tokenizer.hpp>
#include <cstdio>

namespace mine {
struct CappedMargin {
  using policy_kind = blockdiff::kind::unmasking;
  static constexpr const char* name = "capped-margin";
  static constexpr bool needs_second_prob = true;  // ask the statistics pass for p2
  static constexpr bool needs_entropy = false;
  float tau = 0.5f;
  int cap = 3;

  void validate() const { blockdiff::require(cap >= 1, "cap must be >= 1"); }
  void select(const blockdiff::Candidate* c, int n, blockdiff::StepContext&, bool* out) const {
    std::vector<int> idx(static_cast<std::size_t>(n));
    for (int i = 0; i < n; ++i) idx[static_cast<std::size_t>(i)] = i;
    std::stable_sort(idx.begin(), idx.end(), [&](int a, int b) { return c[a].stats.p1 > c[b].stats.p1; });
    int taken = 0;
    for (int i : idx)
      if (taken < cap && (taken == 0 || c[i].stats.p1 - c[i].stats.p2 > tau)) out[i] = true, ++taken;
  }
};
static_assert(blockdiff::UnmaskingPolicy<CappedMargin>);
}  // namespace mine

int main(int argc, char** argv) try {
  using namespace blockdiff;
  if (argc < 2) return std::fprintf(stderr, "usage: %s MODEL_DIR [PROMPT]\n", argv[0]), 2;
  using Qwen = model::Qwen2<backend::Host>;
  auto m = Qwen::load(argv[1]);
  const auto tok = tokenizer::Tokenizer::load(argv[1]);
  const auto prompt = tok.encode(argc > 2 ? argv[2] : "a:47+8-5+9=");
  decode::DecodeOptions o;
  o.max_new_tokens = 48;
  o.mask_id = m.config().mask_token_id.value_or(-1);
  o.eos_id = m.config().eos_token_id;
  dispatch_value<8, 16, 32>(m.config().bd_size, [&]<int B>() {
    decode::BlockDiffusionDecoder<Qwen, BlockShape<B, std::min(8, B / 2)>, mine::CappedMargin> decoder(m, {0.5f, 3});
    const auto r = decoder.generate(prompt, o);
    std::printf("%s: %zu tokens in %d denoising forwards  %s\n", mine::CappedMargin::name, r.tokens.size(),
                r.trace.denoising_forwards(), tok.decode(r.tokens, /*skip_special=*/true).c_str());
  }, "the model's bd_size");
} catch (const std::exception& e) {
  std::fprintf(stderr, "error: %s\n", e.what());
  return 1;
}
