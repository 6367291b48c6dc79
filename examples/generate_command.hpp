// `blockdiff generate`: Fast-dLLM v2 decoding from the command line.
//
// Flags pick the types (block shape, policy, cache, commit mode) through the compiled set of
// compiled_set.hpp (decode_set.hpp), and the values (threshold, k, steps, temperature, ...) as data.
#pragma once

#include <CLI/CLI.hpp>
#include <iostream>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "blockdiff/blockdiff.hpp"
#include "cli_util.hpp"
#include "decode_set.hpp"
#include "device_model.hpp"
#include "text_util.hpp"

namespace blockdiff::cli {

//! --temperature, --top-p and --seed: the paper's sampling (shared by generate and chat).
struct SamplingFlags {
  float temperature = 0.0f, top_p = 1.0f;
  std::uint64_t seed = 0;

  void add_flags(CLI::App* app) {
    app->add_option("--temperature", temperature, "0 = greedy")->capture_default_str();
    app->add_option("--top-p", top_p, "nucleus mass when sampling")->capture_default_str();
    app->add_option("--seed", seed, "sampling seed")->capture_default_str()->check(unsigned64());
  }
  void apply(decode::DecodeOptions& o) const {
    o.sampling = {temperature, top_p};
    o.seed = seed;
  }
};

//! Text picture of each block's unmasking order: the forward that committed each position (P prompt,
//! C the token of a commit or prefill forward, . not decoded).
inline std::string unmasking_order(const decode::GenerateResult& r, int prompt_len, int block) {
  std::map<int, int> when;
  int forward = 0;
  for (auto& step : r.trace.steps) {
    ++forward;
    for (auto& [pos, tok] : step.committed)
      when[pos] = step.kind == decode::ForwardKind::block || step.kind == decode::ForwardKind::sub_block ? forward : 0;
  }
  std::string out;
  if (when.empty()) return out;
  const int first = when.begin()->first / block * block, last = when.rbegin()->first;
  for (int c = first; c <= last; c += block) {
    out += "block @" + std::to_string(c) + ":";
    for (int p = c; p < c + block; ++p) {
      auto it = when.find(p);
      if (p < prompt_len) out += "   P";
      else if (it == when.end()) out += "   .";                 // not decoded (past the limit or EOS)
      else if (it->second == 0) out += "   C";                 // the token of a commit or prefill forward
      else out += std::string(it->second < 1000 ? 4 - std::to_string(it->second).size() : 1, ' ') + std::to_string(it->second);
    }
    out += "\n";
  }
  return out;
}

inline nlohmann::json result_json(const decode::GenerateResult& r, bool with_trace) {
  using decode::ForwardKind;
  nlohmann::json j{{"tokens", r.tokens},
                   {"nfe",
                    {{"prefill", r.trace.count(ForwardKind::prefill)},
                     {"block", r.trace.count(ForwardKind::block)},
                     {"sub_block", r.trace.count(ForwardKind::sub_block)},
                     {"commit", r.trace.count(ForwardKind::commit)}}},
                   {"tokens_per_forward", r.tokens_per_forward()},
                   {"seconds", r.seconds}};
  if (with_trace) {
    nlohmann::json steps = nlohmann::json::array();
    for (auto& s : r.trace.steps) {
      nlohmann::json committed = nlohmann::json::array();
      for (auto& [pos, tok] : s.committed) committed.push_back({pos, tok});
      steps.push_back({std::string(decode::name_of(s.kind)), committed});
    }
    j["trace"] = steps;
  }
  return j;
}

class GenerateCommand {
 public:
  explicit GenerateCommand(CLI::App& app) {
    cmd_ = app.add_subcommand("generate", "Fast-dLLM v2 block-diffusion decoding");
    cmd_->add_option("--model", model_dir_, "checkpoint folder")->required();
    weights_.add(cmd_);
    auto* ids = cmd_->add_option("--prompt-ids", ids_, "comma-separated prompt token ids");
    auto* file = cmd_->add_option("--prompt-file", prompt_file_, "one JSON array of ids per line (a batch)");
    ids->excludes(file);
    text_.add_flags(cmd_, ids);
    file->excludes("--prompt");
    spec_.add_flags(cmd_);
    cmd_->add_option("--max-new-tokens", max_new_, "new tokens at most (exact)")->capture_default_str();
    sampling_.add_flags(cmd_);
    cmd_->add_option("--mask-id", mask_id_, "[MASK] id (default: config.json mask_token_id, else the tokenizer's |<MASK>|)");
    auto* eos = cmd_->add_option("--eos-id", eos_id_, "stop id (default: the tokenizer's <|im_end|>, else config.json eos_token_id)");
    cmd_->add_flag("--ignore-eos", ignore_eos_, "never stop at EOS (fixed-length runs for benchmarks)")->excludes(eos);
    cmd_->add_flag("--trace", trace_, "include each forward's committed (position, token) pairs");
    cmd_->add_flag("--show-order", show_order_, "print each block's unmasking order to stderr");
    device_.add(cmd_);
    cmd_->add_flag("--json", json_, "compact JSON output");
  }

  bool parsed() const { return cmd_->parsed(); }

  int run() {
    require(!ids_.empty() || !prompt_file_.empty() || text_.given(),
            "generate: give --prompt, --prompt-ids or --prompt-file");
    spec_.refuse_unread_flags();
    DeviceModel model(model_dir_, weights_.dtype(), device_);
    const io::ModelConfig& config = model.config();
    spec_.default_shape(config);
    const auto tok = folder_tokenizer(text_.tokenizer_path, model_dir_);
    require(tok || !text_.given(), model_dir_, ": --prompt needs a tokenizer.json (in the folder, or give --tokenizer)");
    std::vector<std::vector<int>> prompts;
    if (!prompt_file_.empty())
      prompts = read_prompt_file(prompt_file_);
    else if (text_.given())
      prompts.push_back(text_.encode(*tok, model_dir_));
    else
      prompts.push_back(parse_ids(ids_, "--prompt-ids"));
    decode::DecodeOptions options;
    options.max_new_tokens = max_new_;
    const auto found = tokenizer::special_ids(config, tok ? &*tok : nullptr);
    require(mask_id_ || found.mask, "no mask id: give --mask-id, or set mask_token_id in config.json, or add |<MASK>| to the tokenizer");
    options.mask_id = mask_id_ ? *mask_id_ : *found.mask;
    options.eos_id = ignore_eos_ ? std::nullopt : eos_id_ ? eos_id_ : found.stop;
    sampling_.apply(options);
    options.trace = trace_ || show_order_;
    const auto results = model.generate(spec_, prompts, options);
    if (show_order_)
      for (std::size_t r = 0; r < results.size(); ++r)
        std::cerr << unmasking_order(results[r], static_cast<int>(prompts[r].size()), spec_.block);
    nlohmann::json out = nlohmann::json::array();
    for (auto& r : results) {
      out.push_back(result_json(r, trace_));
      if (tok) out.back()["text"] = printable_text(*tok, r.tokens);
    }
    if (results.size() == 1) out = out[0];
    std::cout << (json_ ? out.dump() : out.dump(2)) << "\n";
    return 0;
  }

 private:
  CLI::App* cmd_ = nullptr;
  std::string model_dir_, ids_, prompt_file_;
  DecoderSpec spec_;
  WeightsFlag weights_;
  DeviceFlag device_;
  PromptText text_;
  int max_new_ = 128;
  SamplingFlags sampling_;
  std::optional<int> mask_id_, eos_id_;
  bool trace_ = false, show_order_ = false, json_ = false, ignore_eos_ = false;
};

}  // namespace blockdiff::cli
