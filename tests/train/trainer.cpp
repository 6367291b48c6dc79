// The training loop: it learns, it resumes bit-identically, and it refuses bad runs by name.
#include <doctest/doctest.h>

#include <cstring>
#include <fstream>
#include <iterator>
#include <limits>
#include <set>
#include <sstream>

#include "../support/check_error.hpp"
#include "../support/configs.hpp"
#include "../support/largest.hpp"
#include "../support/paths.hpp"
#include "blockdiff/model/init.hpp"
#include "blockdiff/train/trainer.hpp"

using namespace blockdiff;

namespace {

io::ModelConfig small_config() { return test::small_config({.rope_theta = 1000.0}); }

// Reverse a string of 3 to 6 digits (ids 1..10); the response ends with EOS (14).
std::vector<train::Example> reverse_task(int n, std::uint64_t seed) {
  Rng rng(seed);
  std::vector<train::Example> out;
  for (int i = 0; i < n; ++i) {
    train::Example e;
    const int len = 3 + int(rng.below(4));
    for (int j = 0; j < len; ++j) e.prompt.push_back(1 + int(rng.below(10)));
    e.prompt.push_back(11);  // separator
    e.response.assign(e.prompt.rbegin() + 1, e.prompt.rend());
    e.response.push_back(14);
    out.push_back(e);
  }
  return out;
}

train::TrainableQwen2<float> fresh_model(std::uint64_t seed) {
  train::TrainableQwen2<float> m(small_config());
  Rng rng(seed);
  for (std::size_t i = 0; i < m.tensors().size(); ++i) {
    const bool norm = m.tensors()[i].name.find("norm") != std::string::npos;
    const bool bias = m.tensors()[i].shape.size() == 1;
    for (auto& v : m.parameter(i)) v = norm ? 1.0f : bias ? 0.0f : float(0.08 * rng.normal());
  }
  return m;
}

std::string read_bytes(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

train::TrainOptions options(int steps) {
  train::TrainOptions o;
  o.context = 16;
  o.batch = 8;
  o.steps = steps;
  o.lr.peak = 3e-3;
  o.lr.warmup = std::min(10, steps);
  o.lr.total = steps;
  o.lr.decay = train::LrSchedule::Decay::cosine;
  o.seed = 5;
  return o;
}

// The AR objective, recording what each micro-batch saw: its windows' tokens, and the first draw
// of the noise stream it was given (which the AR objective itself leaves unused).
struct RecordingAr : train::ArObjective {
  std::shared_ptr<std::vector<std::vector<int>>> windows = std::make_shared<std::vector<std::vector<int>>>();
  std::shared_ptr<std::vector<std::uint64_t>> draws = std::make_shared<std::vector<std::uint64_t>>();
  void build(const train::Windows& w, int first, int count, Rng& rng, train::ModelBatch& out) const {
    draws->push_back(Rng(rng).next());
    for (int r = first; r < first + count; ++r) windows->emplace_back(w.ids_of(r).begin(), w.ids_of(r).end());
    ArObjective::build(w, first, count, rng, out);
  }
};

int saved_step(const std::filesystem::path& dir) {
  if (!std::filesystem::exists(dir / "trainer_state.json")) return 0;
  return nlohmann::json::parse(std::ifstream(dir / "trainer_state.json"))["step"].get<int>();
}

}  // namespace

TEST_CASE("train/trainer: the paper's recipe drives the loss of a small model far below its start") {
  auto m = fresh_model(1);
  train::Trainer trainer(m, train::FastDllmV2Objective<4>(15), reverse_task(512, 2), options(1000));
  std::vector<double> losses;
  trainer.run({}, [&](const train::StepLog& s) { losses.push_back(s.loss); });
  REQUIRE(losses.size() == 1000);
  double first = 0, last = 0;
  for (int i = 0; i < 10; ++i) first += losses[std::size_t(i)] / 10, last += losses[losses.size() - 1 - std::size_t(i)] / 10;
  INFO("mean loss of the first 10 steps ", first, ", of the last 10 ", last);
  CHECK(last < 0.5 * first);
}

TEST_CASE("train/trainer: an example that holds the [MASK] id is refused, naming where") {
  auto m = fresh_model(1);
  REQUIRE(m.config().mask_token_id == 15);
  const auto clean = reverse_task(4, 2);
  auto examples = clean;
  examples[2].response.insert(examples[2].response.begin() + 1, 15);
  CHECK_ERROR(train::Trainer(m, train::FastDllmV2Objective<4>(15), examples, options(1)),
              "training example 2 (0-based) holds the [MASK] id 15 in its response at index 1");
  examples = clean;
  examples[0].prompt[0] = 15;
  CHECK_ERROR(train::Trainer(m, train::ArObjective{}, examples, options(1)),
              "training example 0 (0-based) holds the [MASK] id 15 in its prompt at index 0");
  // The clean data trains (its ids 1..11 and 14 stay clear of 15).
  train::Trainer t(m, train::FastDllmV2Objective<4>(15), clean, options(1));
  t.run({});
  CHECK(t.step() == 1);
}

TEST_CASE("train/trainer: weight decay shrinks the matrices only, by lr · decay, and leaves norms and biases") {
  // One step from the same start on the same data, without and with decay: AdamW's decay is
  // decoupled, so the two differ by exactly lr · decay · p0 in each matrix and not at all elsewhere.
  auto start = fresh_model(3);
  auto step = [&](double decay) {
    auto m = fresh_model(3);
    auto o = options(1);
    o.adam.weight_decay = decay;
    train::Trainer t(m, train::FastDllmV2Objective<4>(15), reverse_task(16, 4), o);
    t.run({});
    return std::vector<float>(m.parameters().begin(), m.parameters().end());
  };
  const auto plain = step(0.0), decayed = step(0.5);
  const double shrink = options(1).lr.at(0) * 0.5;
  int matrices = 0, vectors = 0;
  for (const auto& t : start.tensors()) {
    const bool matrix = t.shape.size() == 2;
    (matrix ? matrices : vectors) += 1;
    double worst = 0;
    for (std::int64_t k = 0; k < t.numel; ++k) {
      const auto at = std::size_t(t.offset + k);
      const double want = matrix ? shrink * start.parameters()[at] : 0.0;
      test::take_largest(worst, std::abs(double(plain[at]) - double(decayed[at]) - want));
    }
    CHECK_MESSAGE(worst < 1e-7, t.name, (matrix ? " (a matrix)" : " (a norm or bias)"), " is off by ", worst);
  }
  CHECK(matrices > 0);
  CHECK(vectors > 0);  // the model has norms (and biases) to leave alone
}

TEST_CASE("train/trainer: each epoch takes every window once, in an order of its own; micro-batches draw their own noise") {
  // Six examples of one window each (16 tokens), two windows a micro-batch, two micro-batches a
  // step: six steps are four epochs.
  std::vector<train::Example> examples(6);
  for (int e = 0; e < 6; ++e) {
    examples[std::size_t(e)].prompt.assign(8, 1 + e);
    examples[std::size_t(e)].response = {12, 12, 12, 12, 12, 12, 12, 14};
  }
  auto m = fresh_model(6);
  auto o = options(6);
  o.batch = 2;
  o.accumulate = 2;
  o.save_every = 2;
  RecordingAr objective;
  train::Trainer t(m, objective, examples, o);
  const auto dir = test::temp_dir("trainer-epochs");
  std::vector<std::int64_t> tokens;
  t.run(dir, [&](const train::StepLog& s) {
    tokens.push_back(s.tokens);
    CHECK_MESSAGE(saved_step(dir) == (s.step - 1) / 2 * 2, "at step ", s.step);  // saved every 2 steps so far
  });
  CHECK(saved_step(dir) == 6);
  CHECK(tokens == std::vector<std::int64_t>(6, 2 * 2 * 16));  // both micro-batches of a step count
  // A log line cut short (by hand, or by a full disk) is dropped when the run is resumed, not kept
  // as if it were whole.
  const std::string log = read_bytes(dir / "loss.csv");
  const auto last_line = log.rfind('\n', log.size() - 2) + 1;
  REQUIRE(log.compare(last_line, 2, "6,") == 0);
  std::ofstream(dir / "loss.csv", std::ios::binary | std::ios::trunc) << log.substr(0, last_line + 5);
  {
    auto resumed = fresh_model(6);
    train::Trainer again(resumed, objective, examples, o);
    again.resume(dir);
    again.run(dir);  // nothing left to run: the log is rewritten
  }
  CHECK(read_bytes(dir / "loss.csv") == log.substr(0, last_line));
  const auto& seen = *objective.windows;
  REQUIRE(seen.size() == 24);
  std::vector<std::vector<int>> every;  // each example's window: its prompt, then its response
  for (const auto& e : examples) {
    every.push_back(e.prompt);
    every.back().insert(every.back().end(), e.response.begin(), e.response.end());
  }
  std::ranges::sort(every);
  std::set<std::vector<std::vector<int>>> orders;
  for (int epoch = 0; epoch < 4; ++epoch) {
    std::vector<std::vector<int>> order(seen.begin() + epoch * 6, seen.begin() + epoch * 6 + 6), sorted = order;
    std::ranges::sort(sorted);
    CHECK_MESSAGE(sorted == every, "epoch ", epoch, " does not take every example once");
    orders.insert(order);
  }
  CHECK(orders.size() == 4);
  // Each micro-batch of each step has a noise stream of its own.
  const auto& draws = *objective.draws;
  CHECK(draws.size() == 12);
  CHECK(std::set<std::uint64_t>(draws.begin(), draws.end()).size() == 12);
}

TEST_CASE("train/trainer: clipping scales the gradient before AdamW, bounding the first update by lr · clip / (clip + eps)") {
  // At AdamW's first step the bias-corrected moments are g and g², so an element moves by
  // lr · |g| / (|g| + eps): nearly lr for any gradient well above eps, and at most
  // lr · clip / (clip + eps) when the gradient is first scaled to the norm `clip`.
  auto largest_update = [&](double clip) {
    auto m = fresh_model(7);
    const auto before = m.download_parameters();
    auto o = options(1);
    o.clip = clip;
    o.adam.weight_decay = 0;
    train::Trainer t(m, train::ArObjective{}, reverse_task(16, 4), o);
    double norm = 0;
    t.run({}, [&](const train::StepLog& s) { norm = s.grad_norm; });
    CHECK(norm > 1e-3);  // the norm logged is the gradient's own, before clipping
    const auto after = m.download_parameters();
    double largest = 0;
    for (std::size_t i = 0; i < before.size(); ++i) test::take_largest(largest, std::abs(double(after[i]) - before[i]));
    return largest;
  };
  const double lr = options(1).lr.at(0), eps = train::AdamWOptions{}.eps, clip = 1e-9;
  CHECK(largest_update(0.0) > 0.9 * lr);
  CHECK(largest_update(clip) <= lr * clip / (clip + eps) * (1 + 1e-3));
}

TEST_CASE("train/trainer: a resumed run is bit-identical to an uninterrupted one") {
  auto dir = test::temp_dir("trainer-resume");
  auto examples = reverse_task(64, 3);
  auto o = options(6);
  o.save_every = 3;
  o.batch = 4;
  {
    auto m = fresh_model(4);
    train::Trainer t(m, train::FastDllmV2Objective<4>(15), examples, o);
    t.run(dir / "whole");
  }
  {
    auto m = fresh_model(4);
    auto half = o;
    half.steps = 3;
    train::Trainer t(m, train::FastDllmV2Objective<4>(15), examples, half);
    t.run(dir / "part");
  }
  std::filesystem::copy(dir / "part", dir / "torn-model");  // step 3, for the interrupted saves below
  std::filesystem::copy(dir / "part", dir / "torn-optimizer");
  {
    auto m = fresh_model(99);  // the weights come from the checkpoint
    train::Trainer t(m, train::FastDllmV2Objective<4>(15), examples, o);
    t.resume(dir / "part");
    CHECK(t.step() == 3);
    // A run that crashed after its checkpoint logged a step past it, and cut off a line of a
    // later one ("1" of "12,..."): neither belongs to the resumed log.
    std::ofstream(dir / "part" / "loss.csv", std::ios::app) << "4,9.5,0.001,1.5,256,0.01\n1";
    t.run(dir / "part");
  }
  for (const char* f : {"model.safetensors", "optimizer.safetensors"}) {
    INFO(f);
    CHECK(read_bytes(dir / "whole" / f) == read_bytes(dir / "part" / f));
  }
  // The loss log holds every step once, with the same losses (times differ).
  auto without_seconds = [](const std::string& csv) {
    std::string out;
    std::istringstream in(csv);
    for (std::string line; std::getline(in, line);) out += line.substr(0, line.rfind(',')) + "\n";
    return out;
  };
  CHECK(without_seconds(read_bytes(dir / "whole" / "loss.csv")) == without_seconds(read_bytes(dir / "part" / "loss.csv")));
  // A resume folder from another shape or objective is refused.
  auto other = small_config();
  other.hidden_size = 16;
  train::TrainableQwen2<float> wrong(other);
  train::Trainer t2(wrong, train::FastDllmV2Objective<4>(15), examples, o);
  CHECK_ERROR(t2.resume(dir / "part"), "a different shape");
  auto m = fresh_model(4);
  train::Trainer t3(m, train::ArObjective{}, examples, o);
  CHECK_ERROR(t3.resume(dir / "part"), "trained with the \"fdllm2\" objective");
  CHECK_ERROR(t3.resume(dir / "nothing"), "no trainer_state.json");
  // A save interrupted after the weights, or after the optimiser state, left a step-6 file beside
  // step-3 ones: resuming would mix the two, so it is refused, naming the file and both steps.
  const auto copy_over = std::filesystem::copy_options::overwrite_existing;
  std::filesystem::copy_file(dir / "whole" / "model.safetensors", dir / "torn-model" / "model.safetensors", copy_over);
  std::filesystem::copy_file(dir / "whole" / "optimizer.safetensors", dir / "torn-optimizer" / "optimizer.safetensors",
                             copy_over);
  auto m4 = fresh_model(4);
  train::Trainer t4(m4, train::FastDllmV2Objective<4>(15), examples, o);
  CHECK_ERROR(t4.resume(dir / "torn-model"), "model.safetensors holds step 6 but trainer_state.json step 3");
  CHECK_ERROR(t4.resume(dir / "torn-optimizer"), "optimizer.safetensors holds step 6 but trainer_state.json step 3");
  // A trainer_state.json cut short, or whose step is not an integer, or not one a run can reach
  // (2^32 + 6 as 32 bits is 6, and 2^64 - 1, which JSON holds unsigned, as 64 signed bits is -1).
  for (const char* state : {"{\"step\": 6", "{\"step\": \"six\"}", "[6]", "{\"step\": -1}", "{\"step\": 4294967302}",
                            "{\"step\": 18446744073709551615}"}) {
    std::filesystem::remove_all(dir / "bad-state");
    std::filesystem::copy(dir / "part", dir / "bad-state");
    test::write_text(dir / "bad-state" / "trainer_state.json", state);
    CHECK_ERROR(t4.resume(dir / "bad-state"), (dir / "bad-state" / "trainer_state.json").string() +
                                                  ": not valid JSON with an integer \"step\"");
  }
  // A model written over a whole run by other means (a random init here) names no step.
  std::filesystem::copy(dir / "part", dir / "overwritten");  // step 6 throughout
  model::write_random_checkpoint(dir / "overwritten", small_config(), 1, DType::f32);
  CHECK_ERROR(t4.resume(dir / "overwritten"), "model.safetensors names no step but trainer_state.json step 6");
  CHECK(t4.step() == 0);
  // An optimiser moment of the wrong dtype (here the last one, read after every weight) is
  // refused before the weights are replaced.
  std::filesystem::copy(dir / "part", dir / "bad-moment");
  {
    const io::SafetensorsFile good(dir / "part" / "optimizer.safetensors");
    io::SafetensorsWriter bad;
    bad.set_metadata("step", good.metadata().at("step"));
    const auto last = "exp_avg_sq." + m4.tensors().back().name;
    for (const auto& e : good.entries()) {
      if (e.name != last) {
        bad.add(e.name, e.dtype, e.shape, e.bytes);
        continue;
      }
      std::vector<float> values(std::size_t(e.numel()));
      std::memcpy(values.data(), e.bytes.data(), e.bytes.size());
      bad.add_converted(e.name, DType::bf16, e.shape, values);
    }
    bad.write(dir / "bad-moment" / "optimizer.safetensors");
  }
  const auto before_resume = m4.download_parameters();
  CHECK_ERROR(t4.resume(dir / "bad-moment"), "\"exp_avg_sq." + m4.tensors().back().name + "\" has dtype BF16");
  CHECK(m4.download_parameters() == before_resume);
  CHECK(t4.step() == 0);

  // A fresh run, or one resumed from elsewhere, does not write into another run's folder: its
  // log and checkpoint are left as they were, until forget_run() discards that run.
  const std::string whole_log = read_bytes(dir / "whole" / "loss.csv");
  const std::string whole_model = read_bytes(dir / "whole" / "model.safetensors");
  CHECK_ERROR(t4.run(dir / "whole"), "whole holds another training run (at step 6): resume() from it");
  auto m5 = fresh_model(4);
  train::Trainer t5(m5, train::FastDllmV2Objective<4>(15), examples, o);
  t5.resume(dir / "part");
  std::filesystem::copy(dir / "part", dir / "part-copy");
  CHECK_ERROR(t5.run(dir / "part-copy"), "part-copy holds another training run (at step 6)");
  const std::string part_log = read_bytes(dir / "part" / "loss.csv");
  t5.run(dir / "torn-model" / ".." / "part");  // its own folder, by another path: nothing left to do
  CHECK(read_bytes(dir / "part" / "loss.csv") == part_log);
  CHECK(read_bytes(dir / "whole" / "loss.csv") == whole_log);
  CHECK(read_bytes(dir / "whole" / "model.safetensors") == whole_model);
  CHECK(t4.step() == 0);
  train::forget_run(dir / "whole");
  for (const char* f : {"trainer_state.json", "optimizer.safetensors", "loss.csv"})
    CHECK_FALSE(std::filesystem::exists(dir / "whole" / f));
  CHECK(std::filesystem::exists(dir / "whole" / "model.safetensors"));
  t4.run(dir / "whole");  // the same run as before, written again
  CHECK(read_bytes(dir / "whole" / "model.safetensors") == whole_model);
  CHECK(without_seconds(read_bytes(dir / "whole" / "loss.csv")) == without_seconds(whole_log));
  const std::string rewritten_log = read_bytes(dir / "whole" / "loss.csv");
  t4.run(dir / "whole");  // run again once done: nothing to do, and the log stays whole
  CHECK(read_bytes(dir / "whole" / "loss.csv") == rewritten_log);
}

TEST_CASE("train/trainer: a checkpoint resumes only as the run that wrote it") {
  const auto dir = test::temp_dir("trainer-same-run");
  const auto examples = reverse_task(32, 3);
  using Objective = train::FastDllmV2Objective<4>;
  auto o = options(3);
  o.lr.warmup = 0;  // cosine from the first step
  {
    auto m = fresh_model(4);
    train::Trainer t(m, Objective(15), examples, o);
    t.run(dir / "cosine");
  }
  const auto refused = [&](train::TrainOptions other, std::vector<train::Example> data, const std::string& message,
                           Objective objective = Objective(15)) {
    auto m = fresh_model(4);
    const auto before = m.download_parameters();
    train::Trainer t(m, objective, std::move(data), other);
    CHECK_ERROR(t.resume(dir / "cosine"), message);
    CHECK(t.step() == 0);
    CHECK(m.download_parameters() == before);
  };
  auto other = o;
  other.batch = 4;
  other.seed = 6;
  refused(other, examples, "this run differs from the checkpoint's in seed 6 (the checkpoint's 5), batch 4 (the checkpoint's 8);");
  other = o;
  other.adam.weight_decay = 0.0;
  refused(other, examples, "weight_decay 0.0 (the checkpoint's 0.1)");
  refused(o, reverse_task(32, 4), "in data_fingerprint");
  refused(o, reverse_task(33, 3), "in examples 33 (the checkpoint's 32), data_fingerprint");
  auto resplit = examples;  // the same tokens in the same order, one more of them in a prompt
  resplit[0].prompt.push_back(resplit[0].response.front());
  resplit[0].response.erase(resplit[0].response.begin());
  refused(o, resplit, "in data_fingerprint");
  Objective noisier(15);
  noisier.schedule.eps = 0.01f;  // the schedule's parameters are the run's too
  refused(o, examples, "objective_spec \"fdllm2: block 4, linear (eps 0.01) noise, +pad +CM, token shift, [MASK] 15\"",
          noisier);
  // A cosine decay spans the run: three more steps would have run the first three at other rates.
  other = o;
  other.steps = other.lr.total = 6;
  refused(other, examples, "step 2 ran at learning rate");
  other.steps = other.lr.total = 2;  // fewer steps than the checkpoint has done
  refused(other, examples, "cosine: resumed at step 3 of a run of 2");

  // A constant rate may run longer: the same as a run of that length throughout.
  o.lr.decay = train::LrSchedule::Decay::constant;
  o.lr.warmup = 1;
  auto longer = o;
  longer.steps = longer.lr.total = 5;
  for (const auto& [name, steps] : {std::pair{"whole", 5}, std::pair{"part", 3}}) {
    auto m = fresh_model(4);
    train::Trainer t(m, Objective(15), examples, steps == 5 ? longer : o);
    t.run(dir / name);
  }
  auto m = fresh_model(99);
  train::Trainer t(m, Objective(15), examples, longer);
  t.resume(dir / "part");
  t.run(dir / "part");
  CHECK(read_bytes(dir / "whole" / "model.safetensors") == read_bytes(dir / "part" / "model.safetensors"));

  // A state written before these fields were recorded is held only to those it records.
  const auto state_path = dir / "part" / "trainer_state.json";
  auto state = nlohmann::json::parse(read_bytes(state_path));
  for (const char* key : {"objective_spec", "lr_total", "decay", "min_lr_ratio", "beta1", "beta2", "eps", "weight_decay",
                          "clip", "examples", "data_fingerprint"})
    state.erase(key);
  std::ofstream(state_path) << state.dump(2);
  auto decayed = longer;
  decayed.adam.weight_decay = 0.0;
  auto m2 = fresh_model(4);
  train::Trainer t2(m2, Objective(15), reverse_task(32, 4), decayed);
  t2.resume(dir / "part");
  CHECK(t2.step() == 5);
  // A field of the wrong type is refused by name.
  const auto objective = state["objective"];
  state["objective"] = 5;
  std::ofstream(state_path) << state.dump(2);
  auto m3 = fresh_model(4);
  train::Trainer t3(m3, Objective(15), reverse_task(32, 4), decayed);
  CHECK_ERROR(t3.resume(dir / "part"), "trainer_state.json: \"objective\" must be a string, not 5");
  // The schedule's step count, which checks the rates of the steps done, is not passed over when
  // it is not a count.
  state["objective"] = objective;
  for (const nlohmann::json& lr_total : {nlohmann::json("5"), nlohmann::json(0), nlohmann::json(4294967301LL)}) {
    state["lr_total"] = lr_total;
    std::ofstream(state_path) << state.dump(2);
    CHECK_ERROR(t3.resume(dir / "part"),
                "trainer_state.json's \"lr_total\" must be a positive integer, not " + lr_total.dump());
  }
  CHECK(t3.step() == 0);
}

TEST_CASE("train/trainer: bad runs are refused by name, and a NaN stops at its step") {
  auto examples = reverse_task(16, 6);
  auto m = fresh_model(7);
  auto o = options(5);
  o.context = 18;
  CHECK_ERROR(train::Trainer(m, train::FastDllmV2Objective<4>(15), examples, o), "the context 18 is not a multiple");
  // The objective's [MASK] id is the model's: another would pad with one id and mask with another.
  o.context = 16;
  CHECK_ERROR(train::Trainer(m, train::FastDllmV2Objective<4>(13), examples, o),
              "the objective masks with id 13, but the model's mask_token_id is 15");
  o = options(5);
  o.lr.peak = -1;
  CHECK_ERROR(train::Trainer(m, train::ArObjective{}, examples, o), "learning rate -1 makes no sense");
  o = options(0);
  CHECK_ERROR(train::Trainer(m, train::ArObjective{}, examples, o), "the step count must be positive");
  o = options(5);
  o.context = 4;
  CHECK_ERROR(train::Trainer(m, train::ArObjective{}, examples, o), "tokens; the context is 4");
  const auto refused = [&](auto edit, const std::string& message, std::vector<train::Example> data) {
    auto bad = options(5);
    edit(bad);
    CHECK_ERROR(train::Trainer(m, train::ArObjective{}, std::move(data), bad), message);
  };
  refused([](train::TrainOptions& b) { b.context = 0; }, "the context must be positive, got 0", examples);
  refused([](train::TrainOptions& b) { b.batch = 0; }, "the batch must be positive, got 0", examples);
  refused([](train::TrainOptions& b) { b.accumulate = 0; }, "gradient accumulation must be positive, got 0", examples);
  refused([](train::TrainOptions& b) { b.clip = -1; }, "the clipping norm -1 makes no sense", examples);
  refused([](train::TrainOptions& b) { b.clip = std::numeric_limits<double>::infinity(); }, "the clipping norm inf",
          examples);
  refused([](train::TrainOptions&) {}, "training needs at least one example", {});
  refused([](train::TrainOptions&) {}, "the examples fill no window of 16 tokens: packed, they hold 9",
          {{{1, 2, 3, 4}, {5, 6, 7, 8, 14}}});

  auto dir = test::temp_dir("trainer-nan");
  o = options(4);
  o.save_every = 2;
  o.lr.peak = 0.5;  // diverges: a learning rate this large blows the weights up
  o.lr.warmup = 0;
  o.clip = 0;
  m.parameter(0)[0] = std::numeric_limits<float>::quiet_NaN();
  train::Trainer t(m, train::ArObjective{}, examples, o);
  CHECK_ERROR(t.run(dir), "at step 1; no checkpoint was saved yet");
}
