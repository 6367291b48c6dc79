// `blockdiff train` and `blockdiff loss`: the training recipe from the command line.
//
// The objective's type is picked from the flags: --objective ar, or fdllm2 with --block
// (4, 8, 16, 32), the recipe switches (--no-pad, --no-complementary, --no-token-shift) and
// --schedule (linear | loglinear | cosine).
#pragma once

#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>

#include "blockdiff/blockdiff.hpp"
#include "blockdiff/train/tasks.hpp"

namespace blockdiff::cli {

//! The objective flags shared by train and loss.
struct ObjectiveSpec {
  std::string objective = "fdllm2", schedule = "linear";
  int block = 32;
  bool no_pad = false, no_complementary = false, no_token_shift = false;

  void add_flags(CLI::App* app) {
    app->add_option("--objective", objective, "ar | fdllm2")->capture_default_str();
    app->add_option("--block", block, "block size of fdllm2: 4 | 8 | 16 | 32")->capture_default_str();
    app->add_option("--schedule", schedule, "noise schedule of fdllm2: linear | loglinear | cosine")
        ->capture_default_str();
    app->add_flag("--no-pad", no_pad, "fdllm2 without block-aligned [MASK] padding");
    app->add_flag("--no-complementary", no_complementary, "fdllm2 with one view (no complementary masks)");
    app->add_flag("--no-token-shift", no_token_shift, "fdllm2 predicting position i from i");
  }

  //! Calls f(objective) with the objective type the flags name.
  template <class F>
  void visit(int mask_id, F&& f) const {
    if (objective == "ar") {
      require(!no_pad && !no_complementary && !no_token_shift && schedule == "linear",
              "--no-pad, --no-complementary, --no-token-shift and --schedule apply to --objective fdllm2 only");
      return f(train::ArObjective{});
    }
    require(objective == "fdllm2", "--objective must be ar or fdllm2, got \"", objective, "\"");
    require(mask_id >= 0, "fdllm2 needs a [MASK] id: set mask_token_id in config.json");
    auto with_recipe = [&]<class Schedule, int B>() {
      auto go = [&]<train::Recipe R>() { f(train::FastDllmV2Objective<B, Schedule, R>(mask_id)); };
      const int bits = (no_pad ? 0 : 4) | (no_complementary ? 0 : 2) | (no_token_shift ? 0 : 1);
      switch (bits) {
        case 7: return go.template operator()<train::Recipe{true, true, true}>();
        case 6: return go.template operator()<train::Recipe{true, true, false}>();
        case 5: return go.template operator()<train::Recipe{true, false, true}>();
        case 4: return go.template operator()<train::Recipe{true, false, false}>();
        case 3: return go.template operator()<train::Recipe{false, true, true}>();
        case 2: return go.template operator()<train::Recipe{false, true, false}>();
        case 1: return go.template operator()<train::Recipe{false, false, true}>();
        default: return go.template operator()<train::Recipe{false, false, false}>();
      }
    };
    dispatch_value<4, 8, 16, 32>(block, [&]<int B>() {
      if (schedule == "linear") return with_recipe.template operator()<schedule::Linear, B>();
      if (schedule == "loglinear") return with_recipe.template operator()<schedule::LogLinear, B>();
      if (schedule == "cosine") return with_recipe.template operator()<schedule::Cosine, B>();
      fail("--schedule must be linear, loglinear or cosine, got \"", schedule, "\"");
    }, "--block");
  }
};

inline std::string duration_text(double seconds) {
  const int s = int(seconds + 0.5);
  char buf[32];
  if (s >= 3600)
    std::snprintf(buf, sizeof buf, "%dh%02dm", s / 3600, s / 60 % 60);
  else
    std::snprintf(buf, sizeof buf, "%dm%02ds", s / 60, s % 60);
  return buf;
}

class TrainCommand {
 public:
  explicit TrainCommand(CLI::App& app) {
    cmd_ = app.add_subcommand("train", "Train a model: AR pretraining or the Fast-dLLM v2 recipe");
    auto* data = cmd_->add_option("--data", data_, "JSON lines {\"prompt_ids\": [...], \"response_ids\": [...]}");
    auto* task = cmd_->add_option("--task", task_, "a synthetic task: arith | sort | reverse | mix");
    data->excludes(task);
    cmd_->add_option("--examples", examples_, "training examples drawn from --task")->capture_default_str();
    auto* init = cmd_->add_option("--init", init_, "start from this checkpoint folder");
    auto* preset = cmd_->add_option("--preset", preset_, "start from a fresh model of this shape (tasks, tiny, ...)");
    init->excludes(preset);
    spec_.add_flags(cmd_);
    cmd_->add_option("--context", options_.context, "tokens per training window (L)")->capture_default_str();
    cmd_->add_option("--batch", options_.batch, "windows per micro-batch")->capture_default_str();
    cmd_->add_option("--accumulate", options_.accumulate, "micro-batches per step")->capture_default_str();
    cmd_->add_option("--steps", options_.steps, "optimiser steps")->capture_default_str();
    cmd_->add_option("--lr", options_.lr.peak, "peak learning rate")->capture_default_str();
    cmd_->add_option("--warmup", options_.lr.warmup, "linear warmup steps")->capture_default_str();
    cmd_->add_option("--decay", decay_, "after warmup: constant | cosine")->capture_default_str();
    cmd_->add_option("--weight-decay", options_.adam.weight_decay, "AdamW weight decay")->capture_default_str();
    cmd_->add_option("--clip", options_.clip, "global gradient-norm clip (0 = off)")->capture_default_str();
    cmd_->add_option("--seed", options_.seed, "data order, noise and initialisation seed")->capture_default_str();
    cmd_->add_option("--save-every", options_.save_every, "checkpoint every N steps (0 = at the end)")
        ->capture_default_str();
    cmd_->add_option("--out", out_, "output folder (checkpoint, optimizer state, loss.csv)")->required();
    cmd_->add_flag("--resume", resume_, "continue the run checkpointed in --out");
    cmd_->add_flag("--quiet", quiet_, "no progress line");
  }

  bool parsed() const { return cmd_->parsed(); }

  int run() {
    require(!data_.empty() || !task_.empty(), "train: give --data or --task");
    require(!init_.empty() || !preset_.empty() || resume_, "train: give --init DIR or --preset NAME");
    require(decay_ == "constant" || decay_ == "cosine", "--decay must be constant or cosine, got \"", decay_, "\"");
    options_.lr.decay = decay_ == "cosine" ? train::LrSchedule::Decay::cosine : train::LrSchedule::Decay::constant;
    options_.lr.total = options_.steps;

    // With --resume the weights come from the checkpoint (Trainer::resume); only the shape is read here.
    std::optional<train::TrainableQwen2<float>> model;
    if (resume_) {
      model.emplace(io::ModelConfig::load(std::filesystem::path(out_) / "config.json"));
    } else if (!init_.empty()) {
      model.emplace(train::TrainableQwen2<float>::load(init_));
    } else {
      model.emplace(model::preset_config(preset_));
      train::initialise(*model, options_.seed);
    }
    // The trained model's config records the block size it was trained with.
    if (spec_.objective == "fdllm2") model->set_block_size(spec_.block);
    const auto& config = model->config();

    std::vector<train::Example> examples;
    if (!task_.empty()) {
      const auto vocab = train::tasks::vocabulary();
      require(config.vocab_size == vocab.size(), "--task needs a model with the task vocabulary (", vocab.size(),
              " ids, e.g. --preset tasks); this one has ", config.vocab_size);
      examples = train::tasks::encode(train::tasks::make(task_, train::tasks::Split::train, examples_), vocab);
    } else {
      examples = train::read_examples(data_, config.vocab_size);
    }

    spec_.visit(config.mask_token_id.value_or(-1), [&](auto objective) {
      using O = decltype(objective);
      train::Trainer<O> trainer(*model, objective, examples, options_);
      if (resume_) trainer.resume(out_);
      const auto start = std::chrono::steady_clock::now();
      const int first = trainer.step();
      std::int64_t tokens = 0;
      trainer.run(out_, [&](const train::StepLog& s) {
        tokens += s.tokens;
        if (quiet_) return;
        const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        const double per_step = elapsed / (s.step - first);
        std::fprintf(stderr, "\rstep %d/%d  loss %.4f  lr %.2e  |g| %.3f  %.0f tok/s  ETA %s   ", s.step,
                     options_.steps, s.loss, s.lr, s.grad_norm, double(tokens) / elapsed,
                     duration_text(per_step * (options_.steps - s.step)).c_str());
        if (s.step == options_.steps) std::fprintf(stderr, "\n");
      });
      if (!task_.empty()) train::tasks::vocabulary().save(std::filesystem::path(out_) / "tokenizer.json");
      else if (!init_.empty() && std::filesystem::exists(std::filesystem::path(init_) / "tokenizer.json"))
        std::filesystem::copy_file(std::filesystem::path(init_) / "tokenizer.json",
                                   std::filesystem::path(out_) / "tokenizer.json",
                                   std::filesystem::copy_options::overwrite_existing);
      const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      std::cout << nlohmann::json{{"out", out_},
                                  {"objective", O::name},
                                  {"steps", trainer.step()},
                                  {"examples", examples.size()},
                                  {"windows_per_epoch", trainer.windows_per_epoch()},
                                  {"tokens", tokens},
                                  {"seconds", seconds},
                                  {"tokens_per_second", seconds > 0 ? double(tokens) / seconds : 0.0}}
                       .dump()
                << "\n";
    });
    return 0;
  }

 private:
  CLI::App* cmd_ = nullptr;
  std::string data_, task_, init_, preset_, out_, decay_ = "cosine";
  int examples_ = 20000;
  bool resume_ = false, quiet_ = false;
  ObjectiveSpec spec_;
  train::TrainOptions options_;
};

class LossCommand {
 public:
  explicit LossCommand(CLI::App& app) {
    cmd_ = app.add_subcommand("loss", "The loss (and gradients) of one explicit batch");
    cmd_->add_option("--model", model_, "checkpoint folder")->required();
    cmd_->add_option("--batch", batch_, "{\"input_ids\": [[...]], \"supervised\": [[...]], \"mask\": [[...]]}")
        ->required();
    spec_.add_flags(cmd_);
    cmd_->add_option("--grads-out", grads_out_, "write every parameter's gradient (F32, own names) here");
    cmd_->add_flag("--json", json_, "compact JSON output");
  }

  bool parsed() const { return cmd_->parsed(); }

  int run() {
    auto model = train::TrainableQwen2<float>::load(model_);
    const auto batch = train::read_batch_file(batch_, model.config().vocab_size);
    train::ModelBatch mb;
    train::LossResult result;
    const bool backward = !grads_out_.empty();
    spec_.visit(model.config().mask_token_id.value_or(-1), [&](auto objective) {
      using O = decltype(objective);
      const int count = batch.windows.count();
      if constexpr (std::is_same_v<O, train::ArObjective>) {
        Rng unused(0);
        objective.build(batch.windows, 0, count, unused, mb);
      } else {
        require(!batch.mask.empty(), batch_, ": --objective fdllm2 needs the \"mask\" field");
        objective.build_with_masks(batch.windows, 0, count, batch.mask, mb);
      }
      result = model.step(mb, objective.mask(batch.windows.length), backward);
    });
    if (backward) {
      io::SafetensorsWriter w;
      for (std::size_t i = 0; i < model.tensors().size(); ++i)
        w.add(model.tensors()[i].name, model.tensors()[i].shape, std::span<const float>(model.gradient(i)));
      w.write(grads_out_);
    }
    nlohmann::json out{{"loss", result.loss}, {"n_tokens", result.n_tokens}, {"objective", spec_.objective}};
    if (spec_.objective == "fdllm2") out["block"] = spec_.block;
    std::cout << (json_ ? out.dump() : out.dump(2)) << "\n";
    return 0;
  }

 private:
  CLI::App* cmd_ = nullptr;
  std::string model_, batch_, grads_out_;
  bool json_ = false;
  ObjectiveSpec spec_;
};

}  // namespace blockdiff::cli
