// Text in, text out from the command line:
//
//   blockdiff tokenize   --tokenizer DIR|FILE (--text T | --jsonl FILE) [--chat]
//   blockdiff detokenize --tokenizer DIR|FILE (--ids 1,2,3 | --jsonl FILE) [--skip-special]
//   blockdiff chat       --model DIR [decoding flags]        (interactive; /reset, /quit)
//
// and `--prompt TEXT [--raw]` for generate and ar (PromptText below).
#pragma once

#include <CLI/CLI.hpp>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "blockdiff/blockdiff.hpp"
#include "blockdiff/tokenizer/chat.hpp"
#include "blockdiff/tokenizer/tokenizer.hpp"
#include "cli_util.hpp"
#include "device_model.hpp"
#include "generate_command.hpp"
#include "text_util.hpp"

namespace blockdiff::cli {

class TokenizeCommand {
 public:
  explicit TokenizeCommand(CLI::App& app) {
    cmd_ = app.add_subcommand("tokenize", "Text to token ids (JSON)");
    cmd_->add_option("--tokenizer", path_, "tokenizer.json or its folder")->required();
    auto* text = cmd_->add_option("--text", text_, "the text");
    auto* file = cmd_->add_option("--jsonl", jsonl_, "one JSON string per line; prints one JSON array of ids per line");
    text->excludes(file);
    cmd_->add_flag("--chat", chat_, "wrap the text in the chat template as one user turn");
  }
  bool parsed() const { return cmd_->parsed(); }

  int run() {
    require(cmd_->count("--text") > 0 || !jsonl_.empty(), "tokenize: give --text or --jsonl");
    const auto tok = load_tokenizer(path_, "");
    const auto chat_template = tokenizer::ChatTemplate::from_folder(tokenizer_folder(path_, ""));
    auto prepare = [&](const std::string& s) {
      if (!chat_) return s;
      const std::vector<tokenizer::Message> m{{"user", s}};
      return chat_template.render(m);
    };
    if (!jsonl_.empty()) {
      tokenizer::Encoder enc(tok);
      for_each_json_line(jsonl_, [&](int number, const nlohmann::json& j) {
        require(j.is_string(), jsonl_, ": line ", number, " is not a JSON string");
        std::cout << nlohmann::json(enc.encode(prepare(j.get<std::string>()))).dump() << "\n";
      });
      return 0;
    }
    const auto ids = tok.encode(prepare(text_));
    std::cout << nlohmann::json{{"ids", ids}, {"count", ids.size()}}.dump() << "\n";
    return 0;
  }

 private:
  CLI::App* cmd_ = nullptr;
  std::string path_, text_, jsonl_;
  bool chat_ = false;
};

class DetokenizeCommand {
 public:
  explicit DetokenizeCommand(CLI::App& app) {
    cmd_ = app.add_subcommand("detokenize", "Token ids to text (JSON)");
    cmd_->add_option("--tokenizer", path_, "tokenizer.json or its folder")->required();
    auto* ids = cmd_->add_option("--ids", ids_, "comma-separated token ids");
    auto* file = cmd_->add_option("--jsonl", jsonl_, "one JSON array of ids per line; prints one JSON string per line");
    ids->excludes(file);
    cmd_->add_flag("--skip-special", skip_special_, "leave out special tokens");
  }
  bool parsed() const { return cmd_->parsed(); }

  int run() {
    require(!ids_.empty() || !jsonl_.empty(), "detokenize: give --ids or --jsonl");
    const auto tok = load_tokenizer(path_, "");
    if (!jsonl_.empty()) {
      for (auto& ids : read_prompt_file(jsonl_)) std::cout << nlohmann::json(tok.decode(ids, skip_special_)).dump() << "\n";
      return 0;
    }
    std::cout << nlohmann::json{{"text", tok.decode(parse_ids(ids_, "--ids"), skip_special_)}}.dump() << "\n";
    return 0;
  }

 private:
  CLI::App* cmd_ = nullptr;
  std::string path_, ids_, jsonl_;
  bool skip_special_ = false;
};

//! An interactive chat: each reply streams block by block as the decoder commits it.
class ChatCommand {
 public:
  explicit ChatCommand(CLI::App& app) {
    cmd_ = app.add_subcommand("chat", "Interactive chat (Fast-dLLM v2 decoding, streamed per block); /reset, /quit");
    cmd_->add_option("--model", model_dir_, "checkpoint folder")->required();
    weights_.add(cmd_);
    cmd_->add_option("--tokenizer", tokenizer_path_, "tokenizer.json or its folder (default: the model folder)");
    auto* system = cmd_->add_option("--system", system_, "system prompt (default: the tokenizer folder's, or Fast-dLLM v2's)");
    cmd_->add_flag("--raw", raw_, "each line is a whole prompt: no chat template, no history (models not tuned for chat)")
        ->excludes(system);
    spec_.add_flags(cmd_);
    cmd_->add_option("--max-new-tokens", max_new_, "new tokens per reply at most")->capture_default_str()->check(positive());
    sampling_.add_flags(cmd_);
    cmd_->add_flag("--stats", stats_, "after each reply, print tokens, forwards and tokens/s to stderr");
    device_.add(cmd_);
  }
  bool parsed() const { return cmd_->parsed(); }

  int run() {
    spec_.refuse_unread_flags();
    DeviceModel model(model_dir_, weights_.dtype(), device_);
    spec_.default_shape(model.config());
    if (auto why = model.why_not_compiled(spec_)) fail(*why);  // before the first prompt, not after it
    const auto tok = load_tokenizer(tokenizer_path_, model_dir_);
    const auto ids = tokenizer::special_ids(model.config(), &tok);
    require(ids.mask.has_value(), model_dir_, ": no mask id (no mask_token_id in config.json, no |<MASK>| token)");
    const auto chat_template = tokenizer::ChatTemplate::from_folder(tokenizer_folder(tokenizer_path_, model_dir_));
    decode::DecodeOptions options;
    options.max_new_tokens = max_new_;
    options.mask_id = *ids.mask;
    options.eos_id = ids.stop;
    sampling_.apply(options);
    options.trace = false;
    decode::check_options(options, model.config());  // before the first turn, not at it

    std::vector<tokenizer::Message> history;
    if (!system_.empty()) history.push_back({"system", system_});
    const std::size_t fresh = history.size();
    std::string line;
    while (true) {
      std::fputs("> ", stderr);
      if (!std::getline(std::cin, line) || line == "/quit") break;
      if (line == "/reset") {
        history.resize(fresh);
        std::fputs("(conversation cleared)\n", stderr);
        continue;
      }
      if (line.empty()) continue;
      if (!raw_) history.push_back({"user", line});
      std::vector<std::vector<int>> prompt(1);
      try {
        prompt[0] = raw_ ? tok.encode(line) : encode_templated(tok, chat_template.render(history));
      } catch (const Error& e) {  // a line the tokenizer cannot encode ends neither the session nor its history
        std::fprintf(stderr, "error: %s\n", e.what());
        if (!raw_) history.pop_back();
        continue;
      }
      // A reply fits in what is left of the context (with a block of padding).
      const int room = model.config().context() - int(prompt[0].size()) - spec_.block;
      if (room <= 0) {
        std::fprintf(stderr, "the %s fills %s%s\n", raw_ ? "prompt" : "conversation",
                     model.config().describe_context().c_str(), raw_ ? "" : ": /reset");
        if (!raw_) history.pop_back();
        continue;
      }
      options.max_new_tokens = std::min(max_new_, room);
      tokenizer::StreamDecoder stream(tok, /*skip_special=*/true);
      options.on_tokens = [&](std::size_t, std::span<const int> t) {
        std::cout << stream.push(known_ids(tok, t)) << std::flush;
      };
      const auto result = model.generate(spec_, prompt, options);
      std::cout << stream.flush() << "\n" << std::flush;
      auto reply = known_ids(tok, result[0].tokens);
      if (!reply.empty() && ids.stop && reply.back() == *ids.stop) reply.pop_back();
      if (!raw_) history.push_back({"assistant", tok.decode(reply)});
      if (stats_)
        std::fprintf(stderr, "[%zu tokens, %d forwards, %.2f tokens/forward, %.1f tokens/s]\n", result[0].tokens.size(),
                     result[0].trace.total_forwards(), result[0].tokens_per_forward(),
                     double(result[0].tokens.size()) / std::max(result[0].seconds, 1e-9));
    }
    return 0;
  }

 private:
  CLI::App* cmd_ = nullptr;
  std::string model_dir_, tokenizer_path_, system_;
  WeightsFlag weights_;
  DeviceFlag device_;
  DecoderSpec spec_;
  int max_new_ = 512;
  SamplingFlags sampling_;
  bool stats_ = false, raw_ = false;
};

}  // namespace blockdiff::cli
