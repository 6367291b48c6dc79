// `blockdiff train`, compiled apart from the rest of the program: it instantiates the trainer for
// every objective the flags can name.
#include "train_command.hpp"

#include <algorithm>
#include <fstream>
#include <memory>
#include <string_view>

namespace blockdiff::cli {

void TrainCommand::record_args() const {
  nlohmann::ordered_json args = nlohmann::ordered_json::object();
  for (const char* flag : run_flags) {
    const CLI::Option* option = cmd_->get_option(flag);
    if (option->count() == 0) continue;
    if (option->get_type_size() == 0) {
      args[flag] = true;
    } else {
      const std::string& value = option->results().back();
      const bool path = std::string_view(flag) == "--data" || std::string_view(flag) == "--init";
      args[flag] = path ? std::filesystem::absolute(value).string() : value;  // for a resume from elsewhere
    }
  }
  std::filesystem::create_directories(out_);
  io::replace_file(std::filesystem::path(out_) / train_args_file,
                   [&](std::ofstream& out) { out << args.dump(2) << "\n"; });
}

void TrainCommand::recall_args() {
  const auto path = std::filesystem::path(out_) / train_args_file;
  if (!std::filesystem::exists(path)) return;  // a run saved without it: its flags are given again
  const auto args = nlohmann::json::parse(std::ifstream(path), nullptr, false);
  require(!args.is_discarded() && args.is_object(), path.string(), ": not a JSON object of flags");
  // --init excludes --resume on the command line only: the weights come from the checkpoint, and
  // the tokenizer, at the end, from --init.
  const auto given_instead = [](const CLI::Option* o) { return o->count() > 0 && o->get_name() != "--resume"; };
  for (const auto& [flag, value] : args.items()) {
    require(std::ranges::find(run_flags, flag) != std::end(run_flags), path.string(), ": \"", flag,
            "\" is not a flag that defines a run");
    require(value.is_string() || value == true, path.string(), ": ", flag, " holds ", value.dump(),
            ", not a flag's text");
    CLI::Option* option = cmd_->get_option(flag);
    // Given again, or excluded by a flag given again (--data beside a recorded --task), it stays as
    // given: resume() then refuses what would make it another run, naming the difference.
    if (option->count() > 0 || std::ranges::any_of(option->get_excludes(), given_instead)) continue;
    try {
      option->add_result(value.is_string() ? value.get<std::string>() : std::string("true"));
      option->run_callback();  // its checks, then the value into its variable
    } catch (const CLI::Error& e) {
      fail(path.string(), ": ", flag, ": ", e.what());
    }
  }
}

int TrainCommand::run() {
  if (resume_) recall_args();
  require(!data_.empty() || !task_.empty(), "train: give --data or --task",
          resume_ ? ::blockdiff::detail::concat(" (", out_, " has no ", train_args_file,
                                                 " to take them from: give the flags its run began with)")
                  : std::string());
  require(!init_.empty() || !preset_.empty() || resume_, "train: give --init DIR or --preset NAME");
  // A fresh run does not write over a trained model: --resume continues it, --overwrite replaces it.
  if (!resume_ && !overwrite_) refuse_checkpoint(out_, "--resume continues its run, --overwrite replaces it");
  require(decay_ == "constant" || decay_ == "cosine", "--decay must be constant or cosine, got \"", decay_, "\"");
  options_.lr.decay = decay_ == "cosine" ? train::LrSchedule::Decay::cosine : train::LrSchedule::Decay::constant;
  options_.lr.total = options_.steps;

  // With --resume the weights come from the checkpoint (Trainer::resume); only the shape is read here.
  std::optional<train::TrainableQwen2<float>> model;
  if (resume_) {
    train::run_state_file(out_);  // before the config, so that a folder without a run says so
    model.emplace(io::ModelConfig::load(std::filesystem::path(out_) / "config.json"));
  } else if (!init_.empty()) {
    model.emplace(train::TrainableQwen2<float>::load(init_));
  } else {
    model.emplace(model::preset_config(preset_));
    train::initialise(*model, options_.seed);
  }
  // The trained model's config records the block size it was trained with.
  spec_.default_block(model->config());
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

  // The one line that depends on the objective's type; the rest runs on TrainerCore.
  std::unique_ptr<train::TrainerCore> trainer;
  spec_.visit(config.mask_token_id.value_or(-1), [&](auto objective) {
    trainer = std::make_unique<train::Trainer<decltype(objective)>>(*model, objective, examples, options_);
  });
  if (resume_) trainer->resume(out_);
  if (overwrite_) train::forget_run(out_);  // the old weights stay until the new ones are saved
  record_args();
  const auto start = std::chrono::steady_clock::now();
  const int first = trainer->step();
  std::int64_t tokens = 0;
  trainer->run(out_, [&](const train::StepLog& s) {
    tokens += s.tokens;
    if (quiet_) return;
    const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    const double per_step = elapsed / (s.step - first);
    std::fprintf(stderr, "\rstep %d/%d  loss %.4f  lr %.2e  |g| %.3f  %.0f tok/s  ETA %s   ", s.step, options_.steps,
                 s.loss, s.lr, s.grad_norm, double(tokens) / elapsed,
                 duration_text(per_step * (options_.steps - s.step)).c_str());
    if (s.step == options_.steps) std::fprintf(stderr, "\n");
  });
  if (!task_.empty())
    train::tasks::vocabulary().save(std::filesystem::path(out_) / "tokenizer.json");
  else if (!init_.empty() && std::filesystem::exists(std::filesystem::path(init_) / "tokenizer.json"))
    std::filesystem::copy_file(std::filesystem::path(init_) / "tokenizer.json",
                               std::filesystem::path(out_) / "tokenizer.json",
                               std::filesystem::copy_options::overwrite_existing);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::cout << nlohmann::json{{"out", out_},
                              {"objective", trainer->objective_name()},
                              {"steps", trainer->step()},
                              {"examples", examples.size()},
                              {"windows_per_epoch", trainer->windows_per_epoch()},
                              {"tokens", tokens},
                              {"seconds", seconds},
                              {"tokens_per_second", seconds > 0 ? double(tokens) / seconds : 0.0}}
                   .dump()
            << "\n";
  return 0;
}

}  // namespace blockdiff::cli
