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
#include "cli_util.hpp"

namespace blockdiff::cli {

//! The objective flags shared by train and loss.
struct ObjectiveSpec {
  std::string objective = "fdllm2", schedule = "linear";
  int block = 32;
  bool no_pad = false, no_complementary = false, no_token_shift = false;

  void add_flags(CLI::App* app) {
    app_ = app;
    app->add_option("--objective", objective, "ar | fdllm2")->capture_default_str();
    app->add_option("--block", block, "block size of fdllm2: 4 | 8 | 16 | 32 (default: the model's, config.json's bd_size)");
    app->add_option("--schedule", schedule, "noise schedule of fdllm2: linear | loglinear | cosine")
        ->capture_default_str();
    app->add_flag("--no-pad", no_pad, "fdllm2 without block-aligned [MASK] padding");
    app->add_flag("--no-complementary", no_complementary, "fdllm2 with one view (no complementary masks)");
    app->add_flag("--no-token-shift", no_token_shift, "fdllm2 predicting position i from i");
  }

  //! cli::default_block() of this spec's flags, for the model trained (a fine-tune's base, a resumed
  //! run's checkpoint) or whose loss is asked for. A no-op for a spec add_flags() did not fill.
  void default_block(const io::ModelConfig& config) {
    if (app_ != nullptr) cli::default_block(*app_, config, block);
  }

  //! Calls f(objective) with the objective type the flags name.
  template <class F>
  void visit(int mask_id, F&& f) const {
    require(objective == "ar" || objective == "fdllm2", "--objective must be ar or fdllm2, got \"", objective, "\"");
    if (app_ != nullptr) {
      const std::vector<std::string_view> fdllm2{"fdllm2"};
      refuse_unread(*app_, "--objective", objective,
                    {{"--block", fdllm2}, {"--schedule", fdllm2}, {"--no-pad", fdllm2},
                     {"--no-complementary", fdllm2}, {"--no-token-shift", fdllm2}});
    }
    if (objective == "ar") return f(train::ArObjective{});
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

 private:
  const CLI::App* app_ = nullptr;  // the command add_flags() filled this from
};

//! train_args.json, in a run's folder beside trainer_state.json: the run-defining flags it was given.
inline constexpr const char* train_args_file = "train_args.json";

//! train::forget_run() and the run's train_args.json: what `init --overwrite` discards.
inline void forget_run(const std::filesystem::path& dir) {
  train::forget_run(dir);
  std::filesystem::remove(dir / train_args_file);
}

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
    cmd_->add_option("--examples", examples_, "training examples drawn from --task")->capture_default_str()->needs(task);
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
    cmd_->add_option("--seed", options_.seed, "data order, noise and initialisation seed")
        ->capture_default_str()
        ->check(unsigned64());
    cmd_->add_option("--save-every", options_.save_every, "checkpoint every N steps (0 = at the end)")
        ->capture_default_str();
    cmd_->add_option("--out", out_, "output folder (checkpoint, optimizer state, loss.csv)")->required();
    auto* resume = cmd_->add_flag("--resume", resume_,
                                  "continue the run checkpointed in --out, with the flags it was given (train_args.json); "
                                  "a flag given again must leave it the same run, but for --steps at a constant rate");
    resume->excludes(init)->excludes(preset);  // the weights come from the checkpoint
    cmd_->add_flag("--overwrite", overwrite_, "replace a checkpoint already in --out (a fresh run there is refused)")
        ->excludes(resume);
    cmd_->add_flag("--quiet", quiet_, "no progress line");
  }

  bool parsed() const { return cmd_->parsed(); }

  int run();  // train_command.cpp

  //! The flags that define a run: its data, its start, its objective and its optimisation. A run
  //! records those it was given in train_args.json beside its checkpoint, and --resume takes each
  //! one that is not given again (not --save-every or --quiet, which a resumed run may change).
  static constexpr const char* run_flags[] = {
      "--data",    "--task",       "--examples", "--init",      "--preset",          "--objective",
      "--block",   "--schedule",   "--no-pad",   "--no-complementary", "--no-token-shift", "--context",
      "--batch",   "--accumulate", "--steps",    "--lr",        "--warmup",          "--decay",
      "--weight-decay", "--clip",  "--seed"};

 private:
  void record_args() const;  // writes train_args.json in --out
  void recall_args();        // reads it back, for --resume

  CLI::App* cmd_ = nullptr;
  std::string data_, task_, init_, preset_, out_, decay_ = "cosine";
  int examples_ = 20000;
  bool resume_ = false, overwrite_ = false, quiet_ = false;
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

  int run();  // loss_command.cpp

 private:
  CLI::App* cmd_ = nullptr;
  std::string model_, batch_, grads_out_;
  bool json_ = false;
  ObjectiveSpec spec_;
};

}  // namespace blockdiff::cli
