// The ChatML template of Qwen2.5 (what Fast-dLLM v2 is fine-tuned and evaluated with), and the
// ids a checkpoint folder's decoding needs: the [MASK] token and the stop token.
//
//   <|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n
//
// The default system prompt is Fast-dLLM v2's "You are a helpful assistant."; when a folder's
// tokenizer_config.json carries a ChatML chat_template with a default system prompt of its own
// (Qwen2.5's "You are Qwen, created by Alibaba Cloud. ..."), that one is used. Tool calls are not
// rendered.
#pragma once

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "blockdiff/core/error.hpp"
#include "blockdiff/io/config.hpp"
#include "blockdiff/tokenizer/tokenizer.hpp"

namespace blockdiff::tokenizer {

struct Message {
  std::string role;  //!< system | user | assistant
  std::string content;
};

struct ChatTemplate {
  static constexpr const char* fast_dllm_system = "You are a helpful assistant.";
  std::string default_system = fast_dllm_system;

  //! The prompt text of `messages`; with `add_generation_prompt`, the assistant's turn is opened.
  std::string render(std::span<const Message> messages, bool add_generation_prompt = true) const {
    std::string out;
    const bool own_system = !messages.empty() && messages[0].role == "system";
    if (!own_system) out += turn("system", default_system);
    for (std::size_t i = 0; i < messages.size(); ++i) {
      const auto& m = messages[i];
      require(m.role == "user" || m.role == "assistant" || (m.role == "system" && i == 0), "chat message ", i,
              " has role \"", m.role, "\"; expected user or assistant (system only first)");
      out += turn(m.role, m.content);
    }
    if (add_generation_prompt) out += "<|im_start|>assistant\n";
    return out;
  }

  //! The template of a folder's tokenizer_config.json, when it has one; the default otherwise.
  static ChatTemplate from_folder(const std::filesystem::path& dir) {
    ChatTemplate t;
    const auto file = dir / "tokenizer_config.json";
    if (!std::filesystem::exists(file)) return t;
    std::ifstream in(file);
    const auto j = nlohmann::json::parse(in, nullptr, false);
    require(!j.is_discarded() && j.is_object(), file.string(), ": not valid JSON");
    if (!j.contains("chat_template") || !j["chat_template"].is_string()) return t;
    const auto text = j["chat_template"].get<std::string>();
    require(text.find("<|im_start|>") != std::string::npos, file.string(),
            ": the chat_template is not ChatML (no <|im_start|>); blockdiff renders ChatML only");
    // The default system turn is written as a literal: '<|im_start|>system\n...<|im_end|>\n'.
    const std::string open = "'<|im_start|>system\\n", close = "<|im_end|>\\n'";
    for (std::size_t at = text.find(open); at != std::string::npos; at = text.find(open, at + 1)) {
      const auto begin = at + open.size(), end = text.find(close, begin);
      if (end == std::string::npos) break;
      const auto system = text.substr(begin, end - begin);
      if (system.find('\'') == std::string::npos && system.find('{') == std::string::npos) {
        t.default_system = system;
        break;
      }
    }
    return t;
  }

 private:
  static std::string turn(const std::string& role, const std::string& content) {
    return "<|im_start|>" + role + "\n" + content + "<|im_end|>\n";
  }
};

//! The ids decoding needs, found in a checkpoint folder.
struct SpecialIds {
  std::optional<int> mask;  //!< config.json mask_token_id, else the tokenizer's |<MASK>|
  std::optional<int> stop;  //!< the tokenizer's <|im_end|>, else config.json eos_token_id
};

inline SpecialIds special_ids(const io::ModelConfig& config, const Tokenizer* tokenizer) {
  SpecialIds ids;
  ids.mask = config.mask_token_id;
  ids.stop = config.eos_token_id;
  if (tokenizer) {
    if (!ids.mask) ids.mask = tokenizer->token_id("|<MASK>|");
    if (auto im_end = tokenizer->token_id("<|im_end|>")) ids.stop = im_end;
  }
  return ids;
}

}  // namespace blockdiff::tokenizer
