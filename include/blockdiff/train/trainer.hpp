// The training loop: data order, micro-batches, AdamW, checkpoints and resume.
//
// Everything a step draws is a function of (seed, step): the epoch's example order is
// shuffled_order(seed, epoch), and the noise of micro-batch k of step s comes from
// Rng(seed, s, k). So a run resumed from a checkpoint (weights and optimiser state in F32, the
// step count) is bit-identical to an uninterrupted one with the same thread count.
//
// A checkpoint folder is a Hugging Face folder the inference path loads (config.json,
// model.safetensors), plus optimizer.safetensors (exp_avg.NAME, exp_avg_sq.NAME) and
// trainer_state.json (the step, and what defines the run: resume() continues only that run).
// loss.csv beside them logs every step.
//
// The backend is a template parameter of the model, the optimiser and the loop alike:
// `Trainer<O>` trains on the host, `Trainer<O, backend::Cuda>` (with <blockdiff/cuda.cuh>) keeps
// the weights, gradients and AdamW moments on the device, and checkpoints are the same files.
#pragma once

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "blockdiff/core/description.hpp"
#include "blockdiff/core/error.hpp"
#include "blockdiff/core/rng.hpp"
#include "blockdiff/io/file.hpp"
#include "blockdiff/io/json.hpp"
#include "blockdiff/io/safetensors.hpp"
#include "blockdiff/model/save.hpp"
#include "blockdiff/train/data.hpp"
#include "blockdiff/train/objective.hpp"
#include "blockdiff/train/optimizer.hpp"
#include "blockdiff/train/trainable.hpp"

namespace blockdiff::train {

struct TrainOptions {
  int context = 128;     //!< L, tokens per window
  int batch = 8;         //!< windows per micro-batch
  int accumulate = 1;    //!< micro-batches per optimiser step
  int steps = 100;
  LrSchedule lr{};
  AdamWOptions adam{};
  double clip = 1.0;     //!< global-norm clipping; 0 = off
  std::uint64_t seed = 0;
  int save_every = 0;    //!< also checkpoint every N steps (0: only at the end)

  void validate(int pad_block) const {
    require(context > 0, "the context must be positive, got ", context);
    require(pad_block == 0 || context % pad_block == 0, "the context ", context, " is not a multiple of the block size ",
            pad_block);
    require(batch > 0, "the batch must be positive, got ", batch);
    require(accumulate > 0, "gradient accumulation must be positive, got ", accumulate);
    require(steps > 0, "the step count must be positive, got ", steps);
    require(std::isfinite(clip) && clip >= 0, "the clipping norm ", clip, " makes no sense");
    lr.validate();
  }
};

//! Removes the training run's own files from `dir`: trainer_state.json, optimizer.safetensors and
//! loss.csv. The weights stay, no longer resumable as that run, until a new save replaces them.
inline void forget_run(const std::filesystem::path& dir) {
  for (const char* file : {"trainer_state.json", "optimizer.safetensors", "loss.csv"}) std::filesystem::remove(dir / file);
}

//! The trainer_state.json of `dir`, which a folder must hold to be resumed.
inline std::filesystem::path run_state_file(const std::filesystem::path& dir) {
  auto path = dir / "trainer_state.json";
  require(std::filesystem::exists(path), dir.string(), ": no trainer_state.json, so nothing to resume");
  return path;
}

//! What one optimiser step did.
struct StepLog {
  int step = 0;  //!< 1-based, the number of updates done
  double loss = 0, lr = 0, grad_norm = 0;
  std::int64_t tokens = 0;  //!< tokens through the model this step (both views count)
  double seconds = 0;
};

//! Everything of a training run that does not depend on the objective's type: the loop, data
//! order, the optimiser, checkpoints, resume and the loss log. Trainer<O> adds the objective's
//! micro-batch (one virtual call each), so that a program training many objectives compiles the
//! rest once.
template <class Backend>
class BasicTrainerCore {
  using Ops = ops::Ops<Backend>;

 public:
  using Model = TrainableQwen2<float, Backend>;
  int step() const { return step_; }
  const TrainOptions& options() const { return options_; }
  int windows_per_epoch() const { return windows_.count(); }
  virtual ~BasicTrainerCore() = default;

  const char* objective_name() const { return objective_name_; }

  //! Runs until `options().steps` updates are done, calling `on_step` after each; checkpoints
  //! into `out` (every save_every steps and at the end) when `out` is not empty. A NaN or Inf
  //! loss stops the run with an error naming the step; the last checkpoint stays as it was.
  //! `out` may hold no other run: only the one this trainer resumed from or saved, so that a
  //! fresh run does not write over another's log and checkpoints (forget_run() discards one).
  void run(const std::filesystem::path& out, const std::function<void(const StepLog&)>& on_step = {}) {
    if (!out.empty()) {
      refuse_other_run(out);
      open_log(out);
    }
    while (step_ < options_.steps) {
      const auto t0 = std::chrono::steady_clock::now();
      StepLog log;
      log.step = step_ + 1;
      log.lr = options_.lr.at(step_);
      model_.zero_grad();
      double loss = 0.0;
      for (int k = 0; k < options_.accumulate; ++k) {
        stage(std::int64_t(step_) * options_.accumulate + k);
        loss += micro_batch(k) / options_.accumulate;
        log.tokens += std::int64_t(batch_.rows) * batch_.length;
      }
      log.loss = loss;
      log.grad_norm = clip_global_norm<float, Backend>(model_.gradients(), options_.clip);
      require(std::isfinite(loss) && std::isfinite(log.grad_norm), "training diverged: the loss is ", loss,
              " and the gradient norm ", log.grad_norm, " at step ", log.step,
              last_saved_ >= 0 ? "; the last good checkpoint (step " + std::to_string(last_saved_) + ") is in " +
                                     out.string()
                               : std::string("; no checkpoint was saved yet"));
      optimizer_.update(model_.parameters(), model_.gradients(), log.lr);
      ++step_;
      log.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      if (log_.is_open())
        log_ << log.step << "," << log.loss << "," << log.lr << "," << log.grad_norm << "," << log.tokens << ","
             << log.seconds << "\n";
      if (on_step) on_step(log);
      if (!out.empty() && (step_ == options_.steps || (options_.save_every > 0 && step_ % options_.save_every == 0)))
        save(out);
    }
    if (log_.is_open()) log_.flush();
  }

  //! Writes the model, the optimiser state and the trainer state into `dir`.
  void save(const std::filesystem::path& dir) {
    std::filesystem::create_directories(dir);
    // The log first: a folder whose trainer_state.json names step N holds the whole lines of
    // steps 1 to N, whatever stops the process after it.
    if (log_.is_open()) log_.flush();
    std::vector<model::NamedTensor> tensors;
    const std::vector<float> params = model_.download_parameters();
    for (auto& t : model_.tensors())
      tensors.push_back({t.name, t.shape, {params.data() + t.offset, std::size_t(t.numel)}});
    // Each file names its step, so that resume() can tell a folder whose save was interrupted.
    const std::string step = std::to_string(step_);
    model::save_checkpoint(model_.config(), tensors, dir, DType::f32, 1, {{"step", step}});
    io::SafetensorsWriter opt;
    opt.set_metadata("step", step);
    const std::vector<float> m = download(optimizer_.first_moment()), v = download(optimizer_.second_moment());
    for (auto& t : model_.tensors()) {
      opt.add("exp_avg." + t.name, t.shape, std::span<const float>(m.data() + t.offset, std::size_t(t.numel)));
      opt.add("exp_avg_sq." + t.name, t.shape, std::span<const float>(v.data() + t.offset, std::size_t(t.numel)));
    }
    opt.write(dir / "optimizer.safetensors");
    nlohmann::ordered_json state{{"step", step_}};
    state.update(run_state());
    io::replace_file(dir / "trainer_state.json", [&](std::ofstream& out) { out << state.dump(2) << "\n"; });
    last_saved_ = step_;
    own_ = std::filesystem::weakly_canonical(dir);
  }

  //! Continues from a folder written by save(): weights, optimiser moments and the step count.
  //! The model must have the same shape; the options must name the same run.
  void resume(const std::filesystem::path& dir) {
    const auto state_path = run_state_file(dir);
    auto state = nlohmann::json::parse(std::ifstream(state_path), nullptr, false);
    require(!state.is_discarded() && state.is_object() && state.contains("step") &&
                io::holds_integer_in(state["step"], 0, INT32_MAX),
            state_path.string(), ": not valid JSON with an integer \"step\" (0 to ", INT32_MAX, ")");
    // save() writes the weights, then the optimiser state, then trainer_state.json, each file
    // whole and naming its step; one interrupted between them leaves files of two steps, which
    // must not be mixed, and nor may weights written there by other means (they name no step).
    // The files of saves older than the step's naming name none, and pass together.
    const int saved_step = state["step"].get<int>();
    const std::string step = std::to_string(saved_step);
    std::vector<std::pair<std::filesystem::path, std::string>> named;  // (file, the step it names or "")
    for (const char* file : {"model.safetensors", "optimizer.safetensors"}) {
      if (!std::filesystem::exists(dir / file)) continue;  // weights in shards; the optimiser's is required below
      const io::SafetensorsFile f(dir / file);
      const auto at = f.metadata().find("step");
      named.emplace_back(dir / file, at == f.metadata().end() ? std::string() : at->second);
    }
    const bool any_named = std::any_of(named.begin(), named.end(), [](const auto& n) { return !n.second.empty(); });
    for (const auto& [path, held] : named)
      require(!any_named || held == step, path.string(), held.empty() ? std::string(" names no step") : " holds step " + held,
              " but trainer_state.json step ", step,
              ": the folder mixes two checkpoints (a save was interrupted, or a model was written over the run)");
    const auto resumed = TrainableQwen2<float>::load(dir);
    const auto& a = resumed.config();
    const auto& b = model_.config();
    require(a.hidden_size == b.hidden_size && a.intermediate_size == b.intermediate_size &&
                a.num_hidden_layers == b.num_hidden_layers && a.num_attention_heads == b.num_attention_heads &&
                a.num_key_value_heads == b.num_key_value_heads && a.vocab_size == b.vocab_size &&
                a.tie_word_embeddings == b.tie_word_embeddings,
            dir.string(), ": the checkpoint holds a model of a different shape from the one being trained");
    const auto objective = io::optional_field(state, "objective", std::string(), state_path.string());
    require(objective == objective_name_, dir.string(), ": the checkpoint was trained with the \"", objective,
            "\" objective, not \"", objective_name_, "\"");
    require(saved_step >= 0 && saved_step <= options_.steps, dir.string(), ": resumed at step ", saved_step,
            " of a run of ", options_.steps);
    refuse_another_run(dir, state, saved_step);
    // Every moment is checked before anything is replaced: a refused resume leaves the trainer as it was.
    io::SafetensorsFile opt(dir / "optimizer.safetensors");
    std::vector<std::pair<const io::TensorEntry*, float*>> moments;  // (checked entry, where it goes)
    for (auto& t : model_.tensors())
      for (auto [prefix, dst] : {std::pair{"exp_avg.", optimizer_.first_moment()},
                                 std::pair{"exp_avg_sq.", optimizer_.second_moment()}}) {
        const auto& e = opt.at(prefix + t.name);
        require(e.dtype == DType::f32 && e.numel() == t.numel, opt.path(), ": \"", e.name, "\" has dtype ",
                name_of(e.dtype), " and ", e.numel(), " elements; expected F32 and ", t.numel);
        moments.emplace_back(&e, dst.data() + t.offset);
      }
    model_.upload_parameters(resumed.parameters());
    for (auto [e, dst] : moments) {
      std::vector<float> values(std::size_t(e->numel()));
      std::memcpy(values.data(), e->bytes.data(), e->bytes.size());
      Ops::upload(dst, values.data(), values.size());
    }
    step_ = saved_step;
    optimizer_.set_steps(step_);
    last_saved_ = step_;
    own_ = std::filesystem::weakly_canonical(dir);
  }

 protected:
  BasicTrainerCore(Model& model, const char* objective_name, std::string objective_spec, int pad_block,
                   std::vector<Example> examples, TrainOptions options)
      : model_(model), objective_name_(objective_name), objective_spec_(std::move(objective_spec)), pad_block_(pad_block),
        examples_(std::move(examples)), options_(options), data_fingerprint_(fingerprint(examples_)) {
    options_.validate(pad_block_);
    require(!examples_.empty(), "training needs at least one example");
    pad_id_ = model.config().mask_token_id.value_or(-1);
    if (pad_id_ >= 0) refuse_mask_id(examples_, pad_id_);
    epoch_ = 0;
    windows_ = pack(examples_, options_.context, pad_block_, pad_id_, shuffled_order(examples_.size(), epoch_seed(0)));
    if (windows_.count() == 0) {
      std::size_t packed = 0;  // what pack() laid out before it dropped the partial window
      for (const auto& e : examples_) packed += e.size() + block_padding(e, pad_block_);
      fail("the examples fill no window of ", options_.context, " tokens: packed, they hold ", packed);
    }
    optimizer_ = AdamW<float, Backend>(model.parameters().size(), options_.adam);
    std::vector<std::pair<std::size_t, std::size_t>> decay;
    for (auto& t : model.tensors())
      if (t.shape.size() == 2) decay.push_back({std::size_t(t.offset), std::size_t(t.numel)});
    optimizer_.set_decay_ranges(decay);
    staging_.length = options_.context;
  }

  //! The [MASK] id is no token of the data: the objectives pad and mask with it, so an example
  //! that holds it would be trained on positions it cannot tell from noise or padding.
  static void refuse_mask_id(const std::vector<Example>& examples, int mask_id) {
    for (std::size_t e = 0; e < examples.size(); ++e)
      for (auto [part, ids] : {std::pair{"prompt", &examples[e].prompt}, std::pair{"response", &examples[e].response}}) {
        const auto at = std::ranges::find(*ids, mask_id);
        require(at == ids->end(), "training example ", e, " (0-based) holds the [MASK] id ", mask_id, " in its ", part,
                " at index ", at - ids->begin(), ": the objectives pad and mask with it, so it is no token of the data");
      }
  }

  static std::vector<float> download(std::span<const float> values) {
    std::vector<float> host(values.size());
    Ops::download(host.data(), values.data(), host.size());
    return host;
  }

  //! Micro-batch `k` of the step under way, staged in staging_: builds the objective's batch,
  //! adds its gradient (scaled for accumulation) and returns its mean loss.
  virtual double micro_batch(int k) = 0;

  std::uint64_t epoch_seed(std::int64_t epoch) const { return options_.seed * 0x9E3779B97F4A7C15ull + 17 + epoch; }
  std::uint64_t noise_seed(int step, int k) const {
    return (options_.seed * 0x100000001B3ull ^ 0xD1B54A32D192ED03ull) + std::uint64_t(step) * 65537u + std::uint64_t(k);
  }

  //! Copies the windows of micro-batch `micro` into staging_, repacking when an epoch turns.
  void stage(std::int64_t micro) {
    const int L = options_.context, n = windows_.count();
    staging_.ids.resize(std::size_t(options_.batch) * L);
    staging_.supervised.resize(staging_.ids.size());
    for (int r = 0; r < options_.batch; ++r) {
      const std::int64_t g = micro * options_.batch + r;
      const std::int64_t epoch = g / n;
      if (epoch != epoch_) {
        epoch_ = epoch;
        windows_ = pack(examples_, L, pad_block_, pad_id_, shuffled_order(examples_.size(), epoch_seed(epoch)));
      }
      const int w = int(g % n);
      std::copy_n(windows_.ids_of(w).data(), L, staging_.ids.data() + std::size_t(r) * L);
      std::copy_n(windows_.supervised_of(w).data(), L, staging_.supervised.data() + std::size_t(r) * L);
    }
  }

  //! What defines the run beside its step, as trainer_state.json records it: resume() refuses a
  //! checkpoint whose run differs in any of these (save_every alone may change), since the run
  //! it would continue is then neither the one saved nor one that could have been.
  nlohmann::ordered_json run_state() const {
    const TrainOptions& o = options_;
    return {{"seed", o.seed},
            {"objective", objective_name_},
            {"objective_spec", objective_spec_},
            {"context", o.context},
            {"batch", o.batch},
            {"accumulate", o.accumulate},
            {"steps", o.steps},
            {"lr", o.lr.peak},
            {"warmup", o.lr.warmup},
            {"lr_total", o.lr.total},
            {"decay", o.lr.decay == LrSchedule::Decay::cosine ? "cosine" : "constant"},
            {"min_lr_ratio", o.lr.min_ratio},
            {"beta1", o.adam.beta1},
            {"beta2", o.adam.beta2},
            {"eps", o.adam.eps},
            {"weight_decay", o.adam.weight_decay},
            {"clip", o.clip},
            {"examples", examples_.size()},
            {"data_fingerprint", data_fingerprint_},
            {"parameters", model_.parameters().size()}};
  }

  //! Refuses to resume `state` (trainer_state.json of `dir`, at `saved_step`) as this run unless
  //! it is this run: every field of run_state() the state records is the same, and the steps done
  //! ran at the rates this run's schedule gives them (so a constant rate may run longer, a
  //! cosine decay may not). States written before a field was recorded are not held to it.
  void refuse_another_run(const std::filesystem::path& dir, const nlohmann::json& state, int saved_step) const {
    const nlohmann::ordered_json mine = run_state();
    std::string differs;
    for (const auto& [key, value] : mine.items()) {
      if (key == "steps" || key == "lr_total" || !state.contains(key) || state[key] == nlohmann::json(value)) continue;
      differs += ::blockdiff::detail::concat(differs.empty() ? "" : ", ", key, " ", value.dump(), " (the checkpoint's ",
                                             state[key].dump(), ")");
    }
    require(differs.empty(), dir.string(), ": this run differs from the checkpoint's in ", differs,
            "; resume() continues a run under the options it began with (to change them, start a new run from its "
            "weights)");
    if (!state.contains("lr_total")) return;  // a state written before it was recorded
    require(io::holds_integer_in(state["lr_total"], 1, INT32_MAX), dir.string(),
            ": trainer_state.json's \"lr_total\" must be a positive integer, not ", state["lr_total"].dump());
    LrSchedule was = options_.lr;  // the same but for the step count it spans (checked equal above)
    was.total = state["lr_total"].get<int>();
    for (int s = 0; s < saved_step; ++s)
      require(was.at(s) == options_.lr.at(s), dir.string(), ": step ", s + 1, " ran at learning rate ", was.at(s),
              ", but this run's schedule over ", options_.lr.total, " steps gives it ", options_.lr.at(s),
              "; a decaying rate spans the run's steps, so the run cannot be resumed with another step count");
  }

  //! FNV-1a over the examples (their lengths and ids, in order): the data a checkpoint was trained on.
  static std::string fingerprint(const std::vector<Example>& examples) {
    std::uint64_t h = 0xcbf29ce484222325ull;
    const auto mix = [&](std::uint64_t v) {
      for (int b = 0; b < 8; ++b) h = (h ^ ((v >> (8 * b)) & 0xff)) * 0x100000001b3ull;
    };
    for (const auto& e : examples)
      for (const auto* part : {&e.prompt, &e.response}) {
        mix(part->size());
        for (int id : *part) mix(std::uint64_t(std::uint32_t(id)));
      }
    char hex[17];
    std::snprintf(hex, sizeof hex, "%016llx", static_cast<unsigned long long>(h));
    return hex;
  }

  //! Refuses an `out` that holds a run (its trainer_state.json) other than this trainer's own.
  void refuse_other_run(const std::filesystem::path& out) const {
    const auto state = out / "trainer_state.json";
    if (!std::filesystem::exists(state) || std::filesystem::weakly_canonical(out) == own_) return;
    const auto j = nlohmann::json::parse(std::ifstream(state), nullptr, false);
    const bool has_step =
        !j.is_discarded() && j.is_object() && j.contains("step") && io::holds_integer_in(j["step"], 0, INT32_MAX);
    fail(out.string(), " holds another training run", has_step ? " (at step " + std::to_string(j["step"].get<int>()) + ")" : "",
         ": resume() from it to continue that run, or train::forget_run() to discard it, or train elsewhere");
  }

  //! Opens loss.csv in `out` for appending, after rewriting it whole with the header and, when
  //! resuming, the lines of the steps already done: the steps a crash cut off after the last
  //! checkpoint, and a line it left half-written, are dropped, so the log runs 1, 2, ... again.
  void open_log(const std::filesystem::path& out) {
    if (log_.is_open()) log_.close();  // an earlier run()'s, ended or stopped by an error
    std::filesystem::create_directories(out);
    const auto path = out / "loss.csv";
    std::vector<std::string> keep;
    if (step_ > 0 && std::filesystem::exists(path)) {
      std::ifstream in(path);
      std::string line;
      std::getline(in, line);  // header
      while (std::getline(in, line)) {
        const int s = std::atoi(line.c_str());
        const bool whole = std::count(line.begin(), line.end(), ',') == 5;
        if (whole && s == int(keep.size()) + 1 && s <= step_) keep.push_back(line);
      }
    }
    io::replace_file(path, [&](std::ofstream& f) {
      f << "step,loss,lr,grad_norm,tokens,seconds\n";
      for (auto& line : keep) f << line << "\n";
    });
    log_.open(path, std::ios::app);
    require(log_.good(), path.string(), ": cannot append to the loss log");
  }

  Model& model_;
  std::filesystem::path own_;  //!< the folder this trainer resumed from or last saved, canonical
  const char* objective_name_;
  std::string objective_spec_;  //!< the objective with its parameters (description())
  int pad_block_;
  std::vector<Example> examples_;
  TrainOptions options_;
  std::string data_fingerprint_;
  AdamW<float, Backend> optimizer_;
  Windows windows_, staging_;
  ModelBatch batch_;
  std::ofstream log_;
  std::int64_t epoch_ = 0;
  int step_ = 0, pad_id_ = -1, last_saved_ = -1;
};

//! The host's trainer core, what a program that trains on the host holds.
using TrainerCore = BasicTrainerCore<backend::Host>;

//! Trains `model` with objective O: the core's run, with O's micro-batches and attention mask.
template <Objective O, class Backend = backend::Host>
class Trainer final : public BasicTrainerCore<Backend> {
  using Core = BasicTrainerCore<Backend>;

 public:
  Trainer(typename Core::Model& model, O objective, std::vector<Example> examples, TrainOptions options)
      : Core(model, O::name, description(objective), objective.pad_block(), std::move(examples), options),
        objective_(std::move(objective)) {
    // The objective masks with its id and the windows are padded with the model's: they must be
    // one token, the one the checkpoint's config.json names for its decoders.
    if constexpr (requires { objective_.mask_id; }) {
      const auto& mask = model.config().mask_token_id;
      require(mask == objective_.mask_id, "the objective masks with id ", objective_.mask_id,
              ", but the model's mask_token_id is ", mask ? std::to_string(*mask) : std::string("not set"),
              ": they must be one id, which the data is padded with and a checkpoint names for its decoders");
    }
  }

 private:
  double micro_batch(int k) override {
    Rng rng(this->noise_seed(this->step_, k));
    const TrainOptions& o = this->options_;
    objective_.build(this->staging_, 0, o.batch, rng, this->batch_);
    return this->model_.step(this->batch_, objective_.mask(o.context), true, 1.0f / float(o.accumulate)).loss;
  }

  O objective_;
};

}  // namespace blockdiff::train
