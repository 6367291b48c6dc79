// Text helpers of the blockdiff program: finding a tokenizer, the ids it can write, and the
// --prompt flags of generate and ar.
#pragma once

#include <CLI/CLI.hpp>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "blockdiff/core/error.hpp"
#include "blockdiff/tokenizer/chat.hpp"
#include "blockdiff/tokenizer/tokenizer.hpp"
#include "cli_util.hpp"

namespace blockdiff::cli {

//! A tokenizer from `path` (a tokenizer.json or a folder), or from the model folder when empty.
inline tokenizer::Tokenizer load_tokenizer(const std::string& path, const std::string& model_dir) {
  const std::filesystem::path p = path.empty() ? std::filesystem::path(model_dir) : std::filesystem::path(path);
  const auto file = std::filesystem::is_directory(p) ? p / "tokenizer.json" : p;
  require(std::filesystem::exists(file), file.string(), ": no tokenizer.json (give --tokenizer)");
  return tokenizer::Tokenizer::load(file);
}

//! The folder of the tokenizer load_tokenizer(path, model_dir) reads. Its chat template
//! (tokenizer_config.json) is read from there too, as a Hugging Face folder keeps them together.
inline std::filesystem::path tokenizer_folder(const std::string& path, const std::string& model_dir) {
  if (path.empty()) return model_dir;
  const std::filesystem::path p(path);
  return std::filesystem::is_directory(p) ? p : p.parent_path();
}

//! A prompt rendered by the chat template, encoded. Where the tokenizer cannot encode it (a model
//! not tuned for chat may lack the template's markup), the error says the template was applied.
inline std::vector<int> encode_templated(const tokenizer::Tokenizer& tok, const std::string& rendered) {
  try {
    return tok.encode(rendered);
  } catch (const Error& e) {
    fail(e.what(), " (in the prompt as the chat template renders it; --raw encodes the prompt without it)");
  }
}

//! `--prompt TEXT` and `--raw`: text prompts for generate and ar.
struct PromptText {
  std::string text, tokenizer_path, system;
  bool raw = false;

  void add_flags(CLI::App* app, CLI::Option* excludes) {
    auto* p = app->add_option("--prompt", text, "prompt text; the chat template is applied unless --raw");
    p->excludes(excludes);
    // --raw and --system shape a text prompt: beside ids, or each other, one would be ignored.
    auto* r = app->add_flag("--raw", raw, "use --prompt as it is, without the chat template")->needs(p);
    app->add_option("--system", system, "system prompt of the chat template (default: the tokenizer folder's, or Fast-dLLM v2's)")
        ->needs(p)
        ->excludes(r);
    app->add_option("--tokenizer", tokenizer_path, "tokenizer.json or its folder (default: the model folder)");
  }
  bool given() const { return !text.empty(); }

  std::vector<int> encode(const tokenizer::Tokenizer& tok, const std::string& model_dir) const {
    if (raw) return tok.encode(text);
    std::vector<tokenizer::Message> messages;
    if (!system.empty()) messages.push_back({"system", system});
    messages.push_back({"user", text});
    const auto chat_template = tokenizer::ChatTemplate::from_folder(tokenizer_folder(tokenizer_path, model_dir));
    return encode_templated(tok, chat_template.render(messages));
  }
};

//! The tokenizer of a model folder, when it has a tokenizer.json (or --tokenizer names one).
inline std::optional<tokenizer::Tokenizer> folder_tokenizer(const std::string& path, const std::string& model_dir) {
  if (path.empty() && !std::filesystem::exists(std::filesystem::path(model_dir) / "tokenizer.json")) return std::nullopt;
  return load_tokenizer(path, model_dir);
}

//! The ids the tokenizer can write: a model's vocabulary may be padded past the tokenizer's.
inline std::vector<int> known_ids(const tokenizer::Tokenizer& tok, std::span<const int> ids) {
  std::vector<int> kept;
  for (int id : ids)
    if (tok.contains(id)) kept.push_back(id);
  return kept;
}

//! The text of generated ids, special tokens and ids unknown to the tokenizer left out.
inline std::string printable_text(const tokenizer::Tokenizer& tok, std::span<const int> ids) {
  return tok.decode(known_ids(tok, ids), /*skip_special=*/true);
}

}  // namespace blockdiff::cli
