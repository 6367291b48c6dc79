// The blockdiff program: one command per job, JSON on stdout so other tools can check it.
//
//   blockdiff logits   one forward, all logits
//   blockdiff score    log-likelihoods and multiple choice (MMLU/GPQA-style; --ar: causal)
//   blockdiff ar       greedy autoregressive decoding (the baseline)
//   blockdiff generate Fast-dLLM v2 block-diffusion decoding
//   blockdiff init     a random checkpoint of a named shape
//   blockdiff train    AR pretraining or the Fast-dLLM v2 recipe
//   blockdiff loss     the loss and gradients of one explicit batch
//   blockdiff eval     accuracy and speed on a task's held-out split
//   blockdiff study    the ablation study (AR vs block diffusion over every axis)
//   blockdiff chat     interactive chat, streamed block by block
//   blockdiff tokenize / detokenize   text <-> ids with a tokenizer.json
#include <CLI/CLI.hpp>
#include <cstdio>
#include <iostream>
#include <nlohmann/json.hpp>

#include "blockdiff/blockdiff.hpp"
#include "cli_util.hpp"
#include "device_model.hpp"
#include "eval_command.hpp"
#include "generate_command.hpp"
#include "score_command.hpp"
#include "text_command.hpp"
#include "train_command.hpp"

using namespace blockdiff;

namespace {

int run_logits(const std::string& dir, DType weights, const cli::DeviceFlag& device, const std::string& ids_text,
               const std::string& mask_name, std::optional<int> block) {
  const auto ids = cli::parse_ids(ids_text, "--ids");
  cli::DeviceModel model(dir, weights, device);
  const auto logits = model.logits(ids, mask_name, block.value_or(model.config().bd_size));
  const auto vocab = static_cast<std::ptrdiff_t>(model.config().vocab_size);
  nlohmann::json out;
  out["logits"] = nlohmann::json::array();
  for (auto row = logits.begin(); row != logits.end(); row += vocab) out["logits"].push_back(std::vector<float>(row, row + vocab));
  std::cout << out.dump() << "\n";
  return 0;
}

int run_ar(const std::string& dir, DType weights, const cli::DeviceFlag& device, const std::string& ids_text,
           const std::string& prompt_file, const cli::PromptText& text, int max_new, std::optional<int> eos,
           bool ignore_eos, bool json) {
  cli::DeviceModel model(dir, weights, device);
  const auto tok = cli::folder_tokenizer(text.tokenizer_path, dir);
  require(tok || !text.given(), dir, ": --prompt needs a tokenizer.json (in the folder, or give --tokenizer)");
  std::vector<std::vector<int>> prompts;
  if (!prompt_file.empty())
    prompts = cli::read_prompt_file(prompt_file);
  else if (text.given())
    prompts.push_back(text.encode(*tok, dir));
  else
    prompts.push_back(cli::parse_ids(ids_text, "--prompt-ids"));
  decode::ArOptions options;
  options.max_new_tokens = max_new;
  options.eos_id = ignore_eos ? std::nullopt : eos ? eos : tokenizer::special_ids(model.config(), tok ? &*tok : nullptr).stop;
  auto results = model.ar(prompts, options);
  auto to_json = [&](const decode::ArResult& r) {
    nlohmann::json j{{"tokens", r.tokens},
                     {"nfe", {{"prefill", r.prefill_forwards}, {"decode", r.decode_forwards}}},
                     {"seconds", r.seconds}};
    if (tok) j["text"] = cli::printable_text(*tok, r.tokens);
    return j;
  };
  if (prompts.size() == 1) {
    std::cout << (json ? to_json(results[0]).dump() : to_json(results[0]).dump(2)) << "\n";
  } else {
    nlohmann::json all = nlohmann::json::array();
    for (auto& r : results) all.push_back(to_json(r));
    std::cout << (json ? all.dump() : all.dump(2)) << "\n";
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"blockdiff: Fast-dLLM v2 block-diffusion decoding, training and ablations"};
  app.require_subcommand(1);
  app.footer(cli::compiled_set_help());

  std::string model_dir, ids, mask_name = "causal", prompt_file;
  std::optional<int> block;
  bool json = false;
  cli::WeightsFlag weights;
  cli::DeviceFlag device;

  auto* logits = app.add_subcommand("logits", "One forward over --ids; prints every position's logits");
  logits->add_option("--model", model_dir, "checkpoint folder")->required();
  weights.add(logits);
  logits->add_option("--ids", ids, "comma-separated token ids")->required();
  logits->add_option("--mask", mask_name, "causal | block-causal")->capture_default_str();
  logits->add_option("--block", block, "block size of the block-causal mask (default: config.json's bd_size)");
  device.add(logits);
  logits->add_flag("--json", json, "JSON output (the only format)");

  int max_new = 32;
  std::optional<int> eos;
  auto* ar = app.add_subcommand("ar", "Greedy autoregressive decoding with the KV cache");
  ar->add_option("--model", model_dir, "checkpoint folder")->required();
  weights.add(ar);
  auto* ar_ids = ar->add_option("--prompt-ids", ids, "comma-separated prompt token ids");
  auto* ar_file = ar->add_option("--prompt-file", prompt_file, "one JSON array of ids per line (a batch)");
  ar_ids->excludes(ar_file);
  cli::PromptText ar_text;
  ar_text.add_flags(ar, ar_ids);
  ar_file->excludes("--prompt");
  ar->add_option("--max-new-tokens", max_new, "new tokens at most")->capture_default_str();
  auto* ar_eos = ar->add_option("--eos-id", eos, "stop token (default: the tokenizer's <|im_end|>, else eos_token_id of config.json)");
  bool ignore_eos = false;
  ar->add_flag("--ignore-eos", ignore_eos, "never stop at EOS (fixed-length runs for benchmarks)")->excludes(ar_eos);
  device.add(ar);
  ar->add_flag("--json", json, "compact JSON output");

  std::string out_dir, preset = "tiny", dtype_name = "f32";
  std::uint64_t seed = 0;
  bool flat = false, init_overwrite = false;
  auto* init = app.add_subcommand("init", "Write a randomly initialised checkpoint of a named shape");
  init->add_option("--out", out_dir, "output folder")->required();
  init->add_option("--preset", preset, "tiny | tasks | qwen2.5-0.5b | qwen2.5-1.5b | qwen2.5-7b")->capture_default_str();
  init->add_option("--seed", seed, "random seed")->capture_default_str()->check(cli::unsigned64());
  init->add_option("--dtype", dtype_name, "f32 | bf16 | f16")->capture_default_str();
  init->add_flag("--flat", flat, "plain random weights (default: peaked next-token distributions)");
  init->add_flag("--overwrite", init_overwrite, "replace a checkpoint already in --out, and forget its training run");

  cli::GenerateCommand generate(app);
  cli::ScoreCommand score(app);
  cli::TrainCommand train(app);
  cli::LossCommand loss(app);
  cli::EvalCommand eval(app);
  cli::StudyCommand study(app);
  cli::ChatCommand chat(app);
  cli::TokenizeCommand tokenize(app);
  cli::DetokenizeCommand detokenize(app);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  try {
    if (*logits) {
      if (mask_name == "causal") cli::refuse_unread(*logits, "--mask", mask_name, {{"--block", {"block-causal"}}});
      return run_logits(model_dir, weights.dtype(), device, ids, mask_name, block);
    }
    if (*ar) {
      require(!ids.empty() || !prompt_file.empty() || ar_text.given(), "ar: give --prompt, --prompt-ids or --prompt-file");
      return run_ar(model_dir, weights.dtype(), device, ids, prompt_file, ar_text, max_new, eos, ignore_eos, json);
    }
    if (*init) {
      const DType dtype = dtype_name == "f32" ? DType::f32 : dtype_name == "bf16" ? DType::bf16 : dtype_name == "f16" ? DType::f16
                          : (fail("--dtype must be f32, bf16 or f16, got \"", dtype_name, "\""), DType::f32);
      if (!init_overwrite) cli::refuse_checkpoint(out_dir, "--overwrite replaces it");
      model::write_random_checkpoint(out_dir, model::preset_config(preset), seed, dtype, !flat);
      if (init_overwrite) cli::forget_run(out_dir);
      std::cout << nlohmann::json{{"out", out_dir}, {"preset", preset}, {"dtype", dtype_name}, {"seed", seed}}.dump() << "\n";
      return 0;
    }
    if (generate.parsed()) return generate.run();
    if (score.parsed()) return score.run();
    if (train.parsed()) return train.run();
    if (loss.parsed()) return loss.run();
    if (eval.parsed()) return eval.run();
    if (study.parsed()) return study.run();
    if (chat.parsed()) return chat.run();
    if (tokenize.parsed()) return tokenize.run();
    if (detokenize.parsed()) return detokenize.run();
  } catch (const Error& e) {
    std::fprintf(stderr, "blockdiff: error: %s\n", e.what());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "blockdiff: error: %s\n", e.what());
    return 2;
  }
  return 0;
}
