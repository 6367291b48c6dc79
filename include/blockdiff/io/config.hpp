// config.json of a Qwen2 / Fast_dLLM_Qwen checkpoint.
//
// Mirrors the fields of §1.2 of the algorithm notes. Required fields must be present with the
// right JSON type; the heads must divide evenly (hidden by heads, heads by kv heads) and
// head_dim must be even for RoPE's half rotation. Everything is checked once, here, so the model
// code can trust its config.
#pragma once

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "blockdiff/core/error.hpp"
#include "blockdiff/io/file.hpp"
#include "blockdiff/io/json.hpp"

namespace blockdiff::io {

//! The architecture hyper-parameters and special ids of a Qwen2-family checkpoint.
struct ModelConfig {
  std::string architecture = "Fast_dLLM_QwenForCausalLM";
  std::string model_type = "qwen2";
  int hidden_size = 0;
  int intermediate_size = 0;
  int num_hidden_layers = 0;
  int num_attention_heads = 0;
  int num_key_value_heads = 0;
  int vocab_size = 0;
  double rope_theta = 1e6;
  double rms_norm_eps = 1e-6;
  int max_position_embeddings = 32768;
  bool tie_word_embeddings = false;
  int bd_size = 32;
  std::optional<int> eos_token_id;
  std::optional<int> bos_token_id;
  std::optional<int> mask_token_id;
  std::string torch_dtype = "float32";
  // Qwen2's sliding-window attention, as config.json gives it (written back on save). blockdiff's
  // attention is full; see context().
  bool use_sliding_window = false;
  std::optional<int> sliding_window;
  std::optional<int> max_window_layers;

  //! Whether some layer attends over a window: Qwen2's layers from max_window_layers (28 by
  //! default) on, when use_sliding_window is set.
  bool windowed() const {
    return use_sliding_window && sliding_window && max_window_layers.value_or(28) < num_hidden_layers;
  }

  //! The positions blockdiff runs this model over: max_position_embeddings, or the sliding window
  //! where one applies. Windowed attention over positions [0, window) is full attention, so the
  //! model is exact there; beyond it blockdiff would attend where the model does not, and refuses.
  int context() const { return windowed() ? std::min(*sliding_window, max_position_embeddings) : max_position_embeddings; }

  //! Names what bounds context(), for messages: "the context of 4096 positions (max_position_embeddings)".
  std::string describe_context() const {
    return windowed() && *sliding_window < max_position_embeddings
               ? ::blockdiff::detail::concat("the context of ", context(),
                                             " positions (config.json's sliding_window: attention over a window, "
                                             "which blockdiff does not implement, is full attention within it)")
               : ::blockdiff::detail::concat("the context of ", context(), " positions (max_position_embeddings)");
  }

  int head_dim() const { return hidden_size / num_attention_heads; }
  int q_dim() const { return num_attention_heads * head_dim(); }
  int kv_dim() const { return num_key_value_heads * head_dim(); }

  //! Parameters in the checkpoint (lm_head counted once when tied).
  std::int64_t parameter_count() const {
    const std::int64_t h = hidden_size, i = intermediate_size, v = vocab_size;
    const std::int64_t layer = 2 * h + (h * q_dim() + q_dim()) + 2 * (h * kv_dim() + kv_dim()) + q_dim() * h + 3 * h * i;
    return v * h * (tie_word_embeddings ? 1 : 2) + h + num_hidden_layers * layer;
  }

  //! Throws naming `where` unless the config describes a well-formed model.
  void validate(const std::string& where) const {
    auto positive = [&](int v, const char* field) { require(v > 0, where, ": \"", field, "\" must be positive, got ", v); };
    positive(hidden_size, "hidden_size");
    positive(intermediate_size, "intermediate_size");
    positive(num_hidden_layers, "num_hidden_layers");
    positive(num_attention_heads, "num_attention_heads");
    positive(num_key_value_heads, "num_key_value_heads");
    positive(vocab_size, "vocab_size");
    positive(max_position_embeddings, "max_position_embeddings");
    positive(bd_size, "bd_size");
    require(hidden_size % num_attention_heads == 0, where, ": hidden_size ", hidden_size,
            " is not divisible by num_attention_heads ", num_attention_heads);
    require(num_attention_heads % num_key_value_heads == 0, where, ": num_attention_heads ", num_attention_heads,
            " is not divisible by num_key_value_heads ", num_key_value_heads);
    require(head_dim() % 2 == 0, where, ": head_dim ", head_dim(), " must be even for rotary embeddings");
    require(rope_theta > 0, where, ": \"rope_theta\" must be positive");
    require(rms_norm_eps > 0, where, ": \"rms_norm_eps\" must be positive");
    auto in_vocab = [&](const std::optional<int>& id, const char* field) {
      if (id) require(*id >= 0 && *id < vocab_size, where, ": \"", field, "\" ", *id, " is outside the vocabulary [0, ", vocab_size, ")");
    };
    in_vocab(eos_token_id, "eos_token_id");
    in_vocab(bos_token_id, "bos_token_id");
    in_vocab(mask_token_id, "mask_token_id");
    if (use_sliding_window && sliding_window) positive(*sliding_window, "sliding_window");
  }

  nlohmann::ordered_json to_json() const {
    nlohmann::ordered_json j;
    j["architectures"] = {architecture};
    j["model_type"] = model_type;
    j["hidden_size"] = hidden_size;
    j["intermediate_size"] = intermediate_size;
    j["num_hidden_layers"] = num_hidden_layers;
    j["num_attention_heads"] = num_attention_heads;
    j["num_key_value_heads"] = num_key_value_heads;
    j["vocab_size"] = vocab_size;
    j["rope_theta"] = rope_theta;
    j["rms_norm_eps"] = rms_norm_eps;
    j["max_position_embeddings"] = max_position_embeddings;
    j["tie_word_embeddings"] = tie_word_embeddings;
    j["bd_size"] = bd_size;
    j["hidden_act"] = "silu";
    if (mask_token_id) j["mask_token_id"] = *mask_token_id;
    if (eos_token_id) j["eos_token_id"] = *eos_token_id;
    if (bos_token_id) j["bos_token_id"] = *bos_token_id;
    j["torch_dtype"] = torch_dtype;
    if (use_sliding_window) j["use_sliding_window"] = true;
    if (sliding_window) j["sliding_window"] = *sliding_window;
    if (max_window_layers) j["max_window_layers"] = *max_window_layers;
    return j;
  }

  static ModelConfig from_json(const nlohmann::json& j, const std::string& where) {
    require(j.is_object(), where, ": config is not a JSON object");
    ModelConfig c;
    auto get_int = [&](const char* field, int& out, bool required) {
      if (!j.contains(field) || j[field].is_null()) {
        require(!required, where, ": missing required field \"", field, "\"");
        return;
      }
      require(j[field].is_number_integer(), where, ": field \"", field, "\" must be an integer, got ", j[field].dump());
      require(holds_integer_in(j[field], INT32_MIN, INT32_MAX), where, ": field \"", field, "\" is out of range");
      out = static_cast<int>(j[field].get<std::int64_t>());
    };
    auto get_opt_id = [&](const char* field, std::optional<int>& out) {
      if (!j.contains(field) || j[field].is_null()) return;
      const auto& v = j[field];
      // Some configs list several EOS ids; the first one is the stop token.
      const auto& first = v.is_array() && !v.empty() ? v[0] : v;
      require(holds_integer_in(first, 0, INT32_MAX), where, ": field \"", field, "\" must be an integer id, got ",
              v.dump());
      out = first.get<int>();
    };
    auto get_double = [&](const char* field, double& out) {
      if (!j.contains(field) || j[field].is_null()) return;
      require(j[field].is_number(), where, ": field \"", field, "\" must be a number, got ", j[field].dump());
      out = j[field].get<double>();
    };
    if (j.contains("architectures") && j["architectures"].is_array() && !j["architectures"].empty() &&
        j["architectures"][0].is_string())
      c.architecture = j["architectures"][0].get<std::string>();
    require(c.architecture == "Fast_dLLM_QwenForCausalLM" || c.architecture == "Qwen2ForCausalLM", where,
            ": architecture \"", c.architecture,
            "\" is not supported (blockdiff runs Fast_dLLM_QwenForCausalLM and Qwen2ForCausalLM)");
    if (j.contains("model_type") && j["model_type"].is_string()) c.model_type = j["model_type"].get<std::string>();
    if (j.contains("torch_dtype") && j["torch_dtype"].is_string()) c.torch_dtype = j["torch_dtype"].get<std::string>();
    get_int("hidden_size", c.hidden_size, true);
    get_int("intermediate_size", c.intermediate_size, true);
    get_int("num_hidden_layers", c.num_hidden_layers, true);
    get_int("num_attention_heads", c.num_attention_heads, true);
    c.num_key_value_heads = c.num_attention_heads;
    get_int("num_key_value_heads", c.num_key_value_heads, false);
    get_int("vocab_size", c.vocab_size, true);
    get_int("max_position_embeddings", c.max_position_embeddings, false);
    get_int("bd_size", c.bd_size, false);
    get_double("rope_theta", c.rope_theta);
    get_double("rms_norm_eps", c.rms_norm_eps);
    if (j.contains("tie_word_embeddings")) {
      require(j["tie_word_embeddings"].is_boolean(), where, ": field \"tie_word_embeddings\" must be a boolean");
      c.tie_word_embeddings = j["tie_word_embeddings"].get<bool>();
    }
    if (j.contains("hidden_act") && j["hidden_act"].is_string())
      require(j["hidden_act"].get<std::string>() == "silu", where, ": hidden_act \"", j["hidden_act"].get<std::string>(),
              "\" is not supported (Qwen2 uses \"silu\")");
    if (j.contains("rope_scaling") && !j["rope_scaling"].is_null())
      fail(where, ": rope_scaling ", j["rope_scaling"].dump(), " is not supported (only the default RoPE)");
    if (j.contains("use_sliding_window") && !j["use_sliding_window"].is_null()) {
      require(j["use_sliding_window"].is_boolean(), where, ": field \"use_sliding_window\" must be a boolean");
      c.use_sliding_window = j["use_sliding_window"].get<bool>();
    }
    auto get_opt_int = [&](const char* field, std::optional<int>& out) {
      if (!j.contains(field) || j[field].is_null()) return;
      int v = 0;
      get_int(field, v, true);
      out = v;
    };
    get_opt_int("sliding_window", c.sliding_window);
    get_opt_int("max_window_layers", c.max_window_layers);
    get_opt_id("eos_token_id", c.eos_token_id);
    get_opt_id("bos_token_id", c.bos_token_id);
    get_opt_id("mask_token_id", c.mask_token_id);
    c.validate(where);
    return c;
  }

  static ModelConfig from_text(const std::string& text, const std::string& where) {
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(text);
    } catch (const nlohmann::json::exception& e) {
      fail(where, ": not valid JSON (", e.what(), ")");
    }
    return from_json(j, where);
  }

  static ModelConfig load(const std::filesystem::path& path) {
    std::ifstream in(path);
    require(in.good(), path.string(), ": cannot open");
    std::stringstream ss;
    ss << in.rdbuf();
    return from_text(ss.str(), path.string());
  }

  void save(const std::filesystem::path& path) const {
    replace_file(path, [&](std::ofstream& out) { out << to_json().dump(2) << "\n"; });
  }
};

}  // namespace blockdiff::io
