// `blockdiff score`: log-likelihoods and multiple choice, as Fast-dLLM v2 scores MMLU and GPQA
// (first-token, FASTDLLM_V2.md §3.6), or with --ar as lm-eval scores an AR model (the whole target,
// causal): include/blockdiff/eval/loglikelihood.hpp.
//
// --requests is JSON Lines, one request a line:
//   {"prefix": "Question ... Answer:", "target": " B"}                  text (a tokenizer.json)
//   {"prefix_ids": [...], "target_ids": [...]}                           ids
//   {"prefix": "...", "choices": [" A", " B", " C", " D"], "answer": 1}  multiple choice; "choice_ids"
//                                                                       for ids; "answer" optional
//   {"messages": [{"role": "user", "content": "..."}, ...], "choices": [...]}
//                                 chat turns as the prefix, rendered by the tokenizer folder's chat
//                                 template with the assistant's turn opened: few-shot examples as
//                                 turns, as lm-eval's --apply_chat_template --fewshot_as_multiturn
// Text is split as lm-eval's harness splits it: the prefix is encoded alone, and the target is
// what encoding prefix + target adds after as many tokens.
#pragma once

#include <CLI/CLI.hpp>
#include <chrono>
#include <iostream>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "blockdiff/eval/loglikelihood.hpp"
#include "cli_util.hpp"
#include "device_model.hpp"
#include "text_util.hpp"

namespace blockdiff::cli {

class ScoreCommand {
 public:
  explicit ScoreCommand(CLI::App& app) {
    cmd_ = app.add_subcommand("score", "Log-likelihoods and multiple choice (as Fast-dLLM v2 scores MMLU and GPQA)");
    cmd_->add_option("--model", model_, "checkpoint folder")->required();
    weights_.add(cmd_);
    cmd_->add_option("--requests", requests_,
                     "JSON Lines: {\"prefix\", \"target\"} or {\"prefix\", \"choices\", \"answer\"} (text; \"messages\" "
                     "for chat turns in place of \"prefix\"), or the same with prefix_ids, target_ids, choice_ids")
        ->required();
    cmd_->add_option("--tokenizer", tokenizer_, "tokenizer.json or its folder, for text requests (default: the model folder)");
    auto* ar = cmd_->add_flag("--ar", ar_,
                              "score as an AR model: the whole target's log-likelihood under the causal mask (lm-eval's) "
                              "instead of Fast-dLLM v2's first-token score");
    // Only the first-token score has a block, a [MASK] and an EOS in its view.
    ar->excludes(cmd_->add_option("--block", block_, "block of the block-causal view (default: config.json's bd_size)"));
    cmd_->add_option("--batch", batch_, "rows per forward")->capture_default_str()->check(positive());
    cmd_->add_option("--min-copy", min_copy_,
                     "positions a prefill forward is worth: a batch copies the K/V its prefixes share (few-shot "
                     "examples) where that saves more than the forwards it adds")
        ->capture_default_str()
        ->check(positive());
    cmd_->add_option("--caches", caches_, caches_help)->capture_default_str()->check(non_negative());
    ar->excludes(cmd_->add_option("--mask-id", mask_id_,
                                  "[MASK] id (default: config.json mask_token_id, else the tokenizer's |<MASK>|)"));
    ar->excludes(cmd_->add_option("--eos-id", eos_id_,
                                  "the EOS after the target (default: the tokenizer's <|im_end|>, else eos_token_id)"));
    device_.add(cmd_);
    cmd_->add_flag("--json", json_, "compact JSON output");
  }
  bool parsed() const { return cmd_->parsed(); }

  int run() {
    DeviceModel model(model_, weights_.dtype(), device_);
    const auto& config = model.config();
    default_block(*cmd_, config, block_);
    const auto tok = folder_tokenizer(tokenizer_, model_);
    eval::ScoreOptions options{.batch = batch_, .min_copy = min_copy_, .caches = caches_};
    if (!ar_) {
      const auto found = tokenizer::special_ids(config, tok ? &*tok : nullptr);
      require(mask_id_ || found.mask,
              "no mask id: give --mask-id, or set mask_token_id in config.json, or add |<MASK>| to the tokenizer");
      require(eos_id_ || found.stop, "no EOS id: give --eos-id, or set eos_token_id in config.json");
      options.mask_id = mask_id_ ? *mask_id_ : *found.mask;
      options.eos_id = eos_id_ ? *eos_id_ : *found.stop;
    }

    // Every line's requests, in order; a multiple-choice line holds one per choice.
    struct Line {
      std::size_t first = 0, count = 0;
      bool choice = false;
      std::optional<int> answer;
    };
    std::vector<Line> lines;
    std::vector<eval::ScoreRequest> requests;
    for_each_json_line(requests_, [&](int number, const nlohmann::json& j) {
      const auto where = ::blockdiff::detail::concat(requests_, ": line ", number);
      require(j.is_object(), where, " is not a JSON object");
      const bool chat = j.contains("messages"), text = chat || j.contains("prefix");
      require(int(chat) + int(j.contains("prefix")) + int(j.contains("prefix_ids")) == 1, where,
              " needs \"prefix\" (text), \"messages\" (chat turns) or \"prefix_ids\", one of them");
      require(!text || tok, where, " is text: it needs a tokenizer.json (in the model folder, or give --tokenizer)");
      auto encode = [&](const std::string& s) {
        try {
          return tok->encode(s);
        } catch (const Error& e) {
          fail(where, ": ", e.what());
        }
      };
      const auto prefix_text = chat ? chat_prefix(j, where) : text ? string_field(j, "prefix", where) : std::string();
      const auto prefix = text ? encode(prefix_text) : id_field(j, "prefix_ids", where);
      // The target as lm-eval splits it: what encoding prefix + target adds after the prefix's tokens.
      auto target = [&](const nlohmann::json& value, const std::string& what) {
        if (!text) return ids_from_json(value, where + ": " + what);
        require(value.is_string(), where, ": ", what, " must be a string, got ", value.dump());
        const auto whole = encode(prefix_text + value.get<std::string>());
        return std::vector<int>(whole.begin() + std::ptrdiff_t(std::min(whole.size(), prefix.size())), whole.end());
      };
      const char* one = text ? "target" : "target_ids";
      const char* many = text ? "choices" : "choice_ids";
      require(j.contains(one) != j.contains(many), where, " needs \"", one, "\" or \"", many, "\", one of them");
      Line line{requests.size(), 0, j.contains(many), std::nullopt};
      if (line.choice) {
        const auto& choices = j[many];
        require(choices.is_array() && !choices.empty(), where, ": \"", many, "\" must be a non-empty array");
        for (std::size_t c = 0; c < choices.size(); ++c)
          requests.push_back({prefix, target(choices[c], ::blockdiff::detail::concat("choice ", c))});
        if (j.contains("answer")) {
          require(io::holds_integer_in(j["answer"], 0, std::int64_t(choices.size()) - 1), where,
                  ": \"answer\" must be the index of a choice, 0 to ", choices.size() - 1, ", got ", j["answer"].dump());
          line.answer = j["answer"].get<int>();
        }
      } else {
        require(!j.contains("answer"), where, ": \"answer\" needs \"", many, "\"");
        requests.push_back({prefix, target(j[one], one)});
      }
      line.count = requests.size() - line.first;
      lines.push_back(line);
    });
    require(!lines.empty(), requests_, ": no requests");

    const auto t0 = std::chrono::steady_clock::now();
    const auto scored = model.score(requests, options, ar_ ? std::nullopt : std::optional<int>(block_));
    const auto& scores = scored.scores;
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

    nlohmann::ordered_json results = nlohmann::json::array();
    int questions = 0, answered = 0, correct = 0;
    for (const auto& line : lines) {
      const auto* s = scores.data() + line.first;
      if (!line.choice) {
        results.push_back({{"loglikelihood", s->loglikelihood}, {"greedy", s->greedy}, {"argmax", s->argmax}});
        continue;
      }
      const auto mc = eval::choose(std::span(s, line.count));
      nlohmann::ordered_json r;
      r["loglikelihoods"] = nlohmann::json::array();
      for (std::size_t c = 0; c < line.count; ++c) r["loglikelihoods"].push_back(s[c].loglikelihood);
      r["chosen"] = mc.chosen;
      r["tied"] = mc.tied;
      ++questions;
      if (line.answer) {
        r["correct"] = mc.chosen == *line.answer;
        ++answered;
        correct += mc.chosen == *line.answer;
      }
      results.push_back(r);
    }
    nlohmann::ordered_json out;
    out["device"] = device_.name;
    out["scoring"] = ar_ ? "causal" : "first-token";
    if (!ar_) out["block"] = block_;
    out["requests"] = requests.size();
    out["forwards"] = scored.forwards;
    out["positions"] = scored.positions;
    out["seconds"] = seconds;
    if (questions)
      out["multiple_choice"] = {{"questions", questions},
                                {"answered", answered},
                                {"correct", correct},
                                {"accuracy", answered ? double(correct) / answered : 0.0}};
    out["results"] = results;
    std::cout << (json_ ? out.dump() : out.dump(2)) << "\n";
    return 0;
  }

 private:
  static std::string string_field(const nlohmann::json& j, const char* field, const std::string& where) {
    require(j[field].is_string(), where, ": \"", field, "\" must be a string, got ", j[field].dump());
    return j[field].get<std::string>();
  }
  //! "messages": chat turns, {"role": "user" | "assistant" (| "system" first), "content": text}.
  static std::vector<tokenizer::Message> messages_field(const nlohmann::json& j, const std::string& where) {
    const auto& turns = j["messages"];
    require(turns.is_array() && !turns.empty(), where, ": \"messages\" must be a non-empty array of chat turns");
    std::vector<tokenizer::Message> messages;
    for (std::size_t i = 0; i < turns.size(); ++i) {
      const auto& t = turns[i];
      require(t.is_object() && t.size() == 2 && t.contains("role") && t["role"].is_string() && t.contains("content") &&
                  t["content"].is_string(),
              where, ": message ", i, " must be {\"role\": text, \"content\": text}, got ", t.dump());
      messages.push_back({t["role"].get<std::string>(), t["content"].get<std::string>()});
    }
    return messages;
  }
  //! The prefix text of a line's "messages": the tokenizer folder's chat template (read once),
  //! the assistant's turn opened.
  std::string chat_prefix(const nlohmann::json& j, const std::string& where) {
    const auto messages = messages_field(j, where);
    try {
      if (!chat_template_) chat_template_ = tokenizer::ChatTemplate::from_folder(tokenizer_folder(tokenizer_, model_));
      return chat_template_->render(messages);
    } catch (const Error& e) {
      fail(where, ": ", e.what());
    }
  }
  static std::vector<int> id_field(const nlohmann::json& j, const char* field, const std::string& where) {
    return ids_from_json(j[field], ::blockdiff::detail::concat(where, ": \"", field, "\""));
  }

  CLI::App* cmd_ = nullptr;
  std::string model_, requests_, tokenizer_;
  int block_ = 32, batch_ = 16, min_copy_ = eval::ScoreOptions{}.min_copy, caches_ = eval::ScoreOptions{}.caches;
  std::optional<int> mask_id_, eos_id_;
  bool ar_ = false, json_ = false;
  WeightsFlag weights_;
  DeviceFlag device_;
  std::optional<tokenizer::ChatTemplate> chat_template_;
};

}  // namespace blockdiff::cli
