// Text in, text out: the ChatML template, the ids a folder supplies, and a synthetic Fast-dLLM v2
// checkpoint folder (the 7B's tensor names, BF16, four shards and an index, untied lm_head,
// tokenizer files beside it) that decodes a chat prompt exactly as the same weights in one f32 file.
#include <doctest/doctest.h>

#include <fstream>
#include <set>

#include "../support/check_error.hpp"
#include "../support/paths.hpp"
#include "../support/tiny_tokenizer.hpp"
#include "blockdiff/blockdiff.hpp"
#include "blockdiff/tokenizer/chat.hpp"

using namespace blockdiff;
using tokenizer::ChatTemplate;
using tokenizer::Message;

TEST_CASE("the ChatML template of Qwen2.5 with Fast-dLLM v2's default system prompt") {
  ChatTemplate t;
  const std::vector<Message> one{{"user", "What is 2+2?"}};
  CHECK(t.render(one) ==
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
        "<|im_start|>assistant\n");
  const std::vector<Message> turns{{"system", "Be brief."}, {"user", "hi"}, {"assistant", "hello"}, {"user", "bye"}};
  CHECK(t.render(turns, false) ==
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n"
        "<|im_start|>assistant\nhello<|im_end|>\n<|im_start|>user\nbye<|im_end|>\n");
  const std::vector<Message> late{{"user", "hi"}, {"system", "late"}};
  CHECK_ERROR(t.render(late), "chat message 1 has role \"system\"");
}

TEST_CASE("a folder's tokenizer_config.json chat_template gives its default system prompt") {
  const auto dir = test::temp_dir("chat-template");
  // As Qwen2.5's template writes it (the Jinja text, with its escaped newlines).
  const std::string jinja =
      "{%- if messages[0]['role'] == 'system' %}\n    {{- '<|im_start|>system\\n' + messages[0]['content'] + "
      "'<|im_end|>\\n' }}\n{%- else %}\n    {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You "
      "are a helpful assistant.<|im_end|>\\n' }}\n{%- endif %}";
  std::ofstream(dir / "tokenizer_config.json") << nlohmann::json{{"chat_template", jinja}}.dump();
  CHECK(ChatTemplate::from_folder(dir).default_system == "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.");
  std::ofstream(dir / "tokenizer_config.json") << nlohmann::json{{"chat_template", "{{ bos }}{{ content }}"}}.dump();
  CHECK_ERROR(ChatTemplate::from_folder(dir), "is not ChatML");
  // The first system turn written whole as a literal; one with a placeholder or a quote is not a default.
  std::ofstream(dir / "tokenizer_config.json")
      << nlohmann::json{{"chat_template", "{{- '<|im_start|>system\\n{system}<|im_end|>\\n' }}"
                                          "{{- '<|im_start|>system\\nFirst.<|im_end|>\\n' }}"
                                          "{{- '<|im_start|>system\\nSecond.<|im_end|>\\n' }}"}}
             .dump();
  CHECK(ChatTemplate::from_folder(dir).default_system == "First.");
  std::filesystem::remove(dir / "tokenizer_config.json");
  CHECK(ChatTemplate::from_folder(dir).default_system == "You are a helpful assistant.");
}

TEST_CASE("special ids: config.json's [MASK] first, the tokenizer's <|im_end|> before config.json's EOS") {
  const auto tok = tokenizer::Tokenizer::from_json(test::tiny_tokenizer().json.dump());
  const int mask = *tok.token_id("|<MASK>|"), im_end = *tok.token_id("<|im_end|>");
  io::ModelConfig config;
  config.mask_token_id = mask == 3 ? 4 : 3;
  config.eos_token_id = im_end == 5 ? 6 : 5;
  auto ids = tokenizer::special_ids(config, &tok);
  CHECK(ids.mask == config.mask_token_id);
  CHECK(ids.stop == im_end);
  config.mask_token_id.reset();
  ids = tokenizer::special_ids(config, &tok);
  CHECK(ids.mask == mask);
  ids = tokenizer::special_ids(config, nullptr);  // no tokenizer: config.json alone
  CHECK(!ids.mask);
  CHECK(ids.stop == config.eos_token_id);
}

TEST_CASE("a synthetic Fast-dLLM v2 folder: 7B names, BF16 shards, index; decodes as the same weights in one f32 file") {
  const auto dir = test::temp_dir("fdllm2-folder");
  const auto tiny = test::tiny_tokenizer();
  auto cfg = model::preset_config("tiny");
  cfg.tie_word_embeddings = false;  // as the 7B
  cfg.architecture = "Fast_dLLM_QwenForCausalLM";
  cfg.mask_token_id.reset();  // found from the tokenizer
  cfg.eos_token_id = 100;     // a byte token: the stop token comes from the tokenizer's <|im_end|>
  model::write_random_checkpoint(dir / "seed", cfg, 11, DType::bf16);
  auto seed = model::Qwen2<backend::Host>::load(dir / "seed");
  model::save_checkpoint(seed, dir / "sharded", DType::bf16, 4);
  model::save_checkpoint(seed, dir / "single", DType::f32, 1);
  std::ofstream(dir / "sharded" / "tokenizer.json") << tiny.json.dump();
  std::ofstream(dir / "sharded" / "tokenizer_config.json")
      << nlohmann::json{{"tokenizer_class", "Qwen2Tokenizer"}, {"add_bos_token", false}}.dump();

  // The folder is laid out as the real one.
  io::Checkpoint ck(dir / "sharded");
  CHECK(ck.config().architecture == "Fast_dLLM_QwenForCausalLM");
  CHECK(ck.shards().size() == 4);
  std::set<std::string> names;
  for (auto& [name, shard] : ck.tensor_shards()) names.insert(name);
  std::set<std::string> expected{"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"};
  for (int l = 0; l < cfg.num_hidden_layers; ++l)
    for (const char* t : {"input_layernorm.weight", "post_attention_layernorm.weight", "self_attn.q_proj.weight",
                          "self_attn.q_proj.bias", "self_attn.k_proj.weight", "self_attn.k_proj.bias",
                          "self_attn.v_proj.weight", "self_attn.v_proj.bias", "self_attn.o_proj.weight",
                          "mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight"})
      expected.insert("model.layers." + std::to_string(l) + "." + t);
  CHECK(names == expected);  // 3 + 12 per layer, as §1.4
  ck.for_each_tensor([](const io::TensorEntry& e, const io::SafetensorsFile&) { CHECK(e.dtype == DType::bf16); });

  // Text in: the chat prompt, with the ids the folder supplies.
  auto sharded = model::Qwen2<backend::Host>::load(dir / "sharded");
  auto single = model::Qwen2<backend::Host>::load(dir / "single");
  const auto tok = tokenizer::Tokenizer::load(dir / "sharded");
  const auto ids = tokenizer::special_ids(sharded.config(), &tok);
  REQUIRE(ids.mask);
  CHECK(*ids.mask == *tok.token_id("|<MASK>|"));
  CHECK(*ids.stop == *tok.token_id("<|im_end|>"));
  const std::vector<Message> chat{{"user", "the cat sat on the mat"}};
  const auto prompt = tok.encode(ChatTemplate::from_folder(dir / "sharded").render(chat));
  decode::DecodeOptions o;
  o.max_new_tokens = 40;
  o.mask_id = *ids.mask;
  o.eos_id = ids.stop;
  using Decoder = decode::BlockDiffusionDecoder<model::Qwen2<backend::Host>, BlockShape<32, 8>, unmask::Threshold,
                                                cache::Hierarchical<>>;
  const auto a = Decoder(sharded, unmask::Threshold{0.9f}).generate(prompt, o);
  const auto b = Decoder(single, unmask::Threshold{0.9f}).generate(prompt, o);
  CHECK(!a.tokens.empty());
  CHECK(a.tokens == b.tokens);
  CHECK(a.trace.forwards == b.trace.forwards);
}
