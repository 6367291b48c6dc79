// The whole model's loss and gradient: against the golden vectors of an independent autograd
// implementation, against central finite differences in double precision for every mask kind,
// and the forward against the inference model's logits.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>

#include "../support/check_error.hpp"
#include "../support/configs.hpp"
#include "../support/count_new.hpp"
#include "../support/largest.hpp"
#include "../support/paths.hpp"
#include "blockdiff/blockdiff.hpp"
#include "blockdiff/train/data.hpp"
#include "blockdiff/train/objective.hpp"
#include "blockdiff/train/trainable.hpp"

using namespace blockdiff;
using train::TrainableQwen2;

namespace {

io::ModelConfig tiny_config(bool tied) {
  return test::small_config({.hidden = 16, .intermediate = 24, .vocab = 40, .rope_theta = 100.0, .tied = tied});
}

template <class T>
void randomise(TrainableQwen2<T>& m, std::uint64_t seed) {
  Rng rng(seed);
  for (std::size_t i = 0; i < m.tensors().size(); ++i) {
    const bool vector = m.tensors()[i].shape.size() == 1;
    const bool norm = m.tensors()[i].name.find("norm") != std::string::npos;
    for (auto& v : m.parameter(i)) v = T(norm ? 1.0 + 0.2 * rng.normal() : (vector ? 0.1 : 0.4) * rng.normal());
  }
}

train::Windows random_windows(int count, int L, int vocab, std::uint64_t seed) {
  Rng rng(seed);
  train::Windows w;
  w.length = L;
  for (int i = 0; i < count * L; ++i) {
    w.ids.push_back(int(rng.below(std::uint64_t(vocab - 2))));
    w.supervised.push_back(i % L >= L / 4 ? 1 : 0);
  }
  return w;
}

// Central differences of the loss for a sample of each tensor's entries, against the backward.
template <class Mask>
void check_model_gradient(TrainableQwen2<double>& m, const train::ModelBatch& batch, const Mask& mask) {
  m.zero_grad();
  m.step(batch, mask, true);
  Rng pick(99);
  const double h = 1e-5;
  for (std::size_t t = 0; t < m.tensors().size(); ++t) {
    auto p = m.parameter(t);
    auto g = m.gradient(t);
    double worst = 0, scale = 1e-4;
    for (int s = 0; s < 6; ++s) {
      const std::size_t i = pick.below(p.size());
      const double keep = p[i];
      p[i] = keep + h;
      const double up = m.step(batch, mask, false).loss;
      p[i] = keep - h;
      const double down = m.step(batch, mask, false).loss;
      p[i] = keep;
      const double numeric = (up - down) / (2 * h);
      test::take_largest(worst, std::fabs(numeric - g[i]));
      scale = std::max(scale, std::fabs(numeric));
    }
    INFO(m.tensors()[t].name, ": max |analytic - numeric| = ", worst, " against gradients up to ", scale);
    CHECK(worst <= 1e-6 * scale);
  }
}

}  // namespace

TEST_CASE("train/trainable: the whole model's gradient against finite differences, per mask kind") {
  for (bool tied : {true, false}) {
    CAPTURE(tied);
    TrainableQwen2<double> m(tiny_config(tied));
    randomise(m, tied ? 1 : 2);
    const int L = 16;
    auto windows = random_windows(2, L, 40, 3);
    Rng rng(4);
    train::ModelBatch batch;
    SUBCASE("AR objective, causal mask") {
      train::ArObjective ar;
      ar.build(windows, 0, 2, rng, batch);
      check_model_gradient(m, batch, ar.mask(L));
    }
    SUBCASE("Fast-dLLM v2 objective, the 2L mask") {
      train::FastDllmV2Objective<4> fd{39};
      fd.build(windows, 0, 2, rng, batch);
      check_model_gradient(m, batch, fd.mask(L));
    }
    SUBCASE("block-causal and full masks") {
      train::ArObjective ar;
      ar.build(windows, 0, 2, rng, batch);
      check_model_gradient(m, batch, mask::BlockCausal<4>{});
      check_model_gradient(m, batch, mask::Full{});
    }
  }
}

TEST_CASE("train/trainable: loss and gradients match the golden vectors of an independent implementation") {
  const auto loss_json = nlohmann::json::parse(std::ifstream(test::golden("loss.json")));
  for (std::string name : {"model-f32-tied", "model-bf16-untied"})
    for (std::string objective : {"fdllm2", "ar"}) {
      CAPTURE(name);
      CAPTURE(objective);
      auto m = TrainableQwen2<float>::load(test::golden(name));
      const auto batch_file = train::read_batch_file(test::golden("loss-batch.json"), m.config().vocab_size);
      const auto& expect = loss_json.at(name + "/" + objective);
      train::ModelBatch batch;
      train::LossResult r;
      m.zero_grad();
      if (objective == "ar") {
        train::ArObjective ar;
        Rng unused(0);
        ar.build(batch_file.windows, 0, batch_file.windows.count(), unused, batch);
        r = m.step(batch, ar.mask(batch_file.windows.length));
      } else {
        train::FastDllmV2Objective<8> fd{*m.config().mask_token_id};
        fd.build_with_masks(batch_file.windows, 0, batch_file.windows.count(), batch_file.mask, batch);
        r = m.step(batch, fd.mask(batch_file.windows.length));
      }
      CHECK(r.n_tokens == expect.at("n_tokens").get<int>());
      CHECK(r.loss == doctest::Approx(expect.at("loss").get<double>()).epsilon(1e-5));
      io::SafetensorsFile grads(test::golden("grads-" + name.substr(6) + "-" + objective + ".safetensors"));
      CHECK(grads.entries().size() == m.tensors().size());
      for (std::size_t t = 0; t < m.tensors().size(); ++t) {
        const auto& e = grads.at(m.tensors()[t].name);
        REQUIRE(e.numel() == m.tensors()[t].numel);
        const float* ref = reinterpret_cast<const float*>(e.bytes.data());
        auto g = m.gradient(t);
        double num = 0, den = 0;
        for (std::size_t i = 0; i < g.size(); ++i) {
          test::take_largest(num, double(std::fabs(g[i] - ref[i])));
          den = std::max(den, double(std::fabs(ref[i])));
        }
        INFO(e.name, ": max abs error ", num, " over max |g| ", den);
        CHECK(num <= 2e-4 * den);
      }
    }
}

TEST_CASE("train/trainable: the AR loss equals cross-entropy over the inference model's logits") {
  auto inference = model::Qwen2<backend::Host>::load(test::golden("model-bf16-untied"));
  auto m = TrainableQwen2<float>::from(inference);
  auto windows = random_windows(1, 24, 320, 5);
  train::ModelBatch batch;
  Rng unused(0);
  train::ArObjective{}.build(windows, 0, 1, unused, batch);
  const auto r = m.step(batch, mask::Causal{}, false);
  auto cache = inference.make_cache(24);
  model::ForwardRow<backend::Host> row;
  row.tokens = batch.tokens;
  row.cache = &cache;
  auto logits = inference.forward<mask::Causal>(std::span(&row, 1));
  double loss = 0;
  for (auto& t : batch.targets) {
    const float* z = logits.row(t.index);
    double mx = -1e30, sum = 0;
    for (int j = 0; j < 320; ++j) mx = std::max(mx, double(z[j]));
    for (int j = 0; j < 320; ++j) sum += std::exp(double(z[j]) - mx);
    loss += mx + std::log(sum) - double(z[t.label]);
  }
  loss /= double(batch.targets.size());
  CHECK(r.loss == doctest::Approx(loss).epsilon(1e-5));
}

TEST_CASE("train/trainable: a step of an already-seen shape allocates nothing") {
  TrainableQwen2<float> m(tiny_config(false));
  randomise(m, 6);
  auto windows = random_windows(4, 32, 40, 7);
  train::FastDllmV2Objective<8> fd{39};
  train::ModelBatch batch;
  Rng rng(8);
  fd.build(windows, 0, 4, rng, batch);
  m.step(batch, fd.mask(32));
  const std::size_t arena = m.arena_bytes();
  fd.build(windows, 0, 4, rng, batch);  // same shape, new noise
  const long before = test::allocations.load();
  m.step(batch, fd.mask(32));
  CHECK(test::allocations.load() - before == 0);
  CHECK(m.arena_bytes() == arena);
}

TEST_CASE("train/trainable: bad batches are named") {
  TrainableQwen2<float> m(tiny_config(true));
  train::ModelBatch b;
  b.reset(1, 4);
  b.tokens[2] = 40;
  b.targets.push_back({0, 1});
  CHECK_ERROR(m.step(b, mask::Causal{}), "token id 40 is outside the vocabulary");
  b.tokens[2] = 0;
  b.targets.push_back({4, 1});
  CHECK_ERROR(m.step(b, mask::Causal{}), "loss term (4, 1) is outside");
  b.targets = {{0, -1}};
  CHECK_ERROR(m.step(b, mask::Causal{}), "loss term (0, -1) is outside the batch or vocabulary");
  b.targets = {{-1, 1}};
  CHECK_ERROR(m.step(b, mask::Causal{}), "loss term (-1, 1) is outside the batch or vocabulary");
  b.targets = {{0, 1}};
  b.positions[3] = m.config().context();
  CHECK_ERROR(m.step(b, mask::Causal{}), "training batch: position " + std::to_string(m.config().context()) + " is beyond");
  b.positions[3] = -1;
  CHECK_ERROR(m.step(b, mask::Causal{}), "training batch: position -1 is beyond");
  b.positions.pop_back();
  CHECK_ERROR(m.step(b, mask::Causal{}), "training batch: 4 tokens and 3 positions for 1 rows of 4");
  b.reset(0, 4);
  CHECK_ERROR(m.step(b, mask::Causal{}), "training batch: rows and length must be positive, got 0 x 4");
  b.reset(2, 0);
  CHECK_ERROR(m.step(b, mask::Causal{}), "training batch: rows and length must be positive, got 2 x 0");
  CHECK_ERROR(m.set_block_size(0), "block size must be positive, got 0");
}

TEST_CASE("train/trainable: initialise draws N(0, std²) matrices, residual outputs at std/√(2·layers), norms 1, biases 0") {
  // 4 layers: the residual branches' outputs (o_proj, down_proj) at std/√8, a third of std.
  auto config = test::small_config({.hidden = 64, .intermediate = 96, .vocab = 200, .layers = 4, .tied = false});
  TrainableQwen2<double> m(config), same(config), other(config);
  const double std = 0.5;
  train::initialise(m, 7, std);
  train::initialise(same, 7, std);
  train::initialise(other, 8, std);
  int matrices = 0, residual = 0, norms = 0, biases = 0;
  for (std::size_t t = 0; t < m.tensors().size(); ++t) {
    const auto& name = m.tensors()[t].name;
    CAPTURE(name);
    const auto p = m.parameter(t);
    CHECK(std::equal(p.begin(), p.end(), same.parameter(t).begin()));  // a seed is one model
    if (name.find("norm") != std::string::npos) {
      CHECK(std::all_of(p.begin(), p.end(), [](double v) { return v == 1.0; }));
      ++norms;
    } else if (m.tensors()[t].shape.size() == 1) {
      CHECK(std::all_of(p.begin(), p.end(), [](double v) { return v == 0.0; }));
      ++biases;
    } else {
      const bool out = name.find("o_proj") != std::string::npos || name.find("down_proj") != std::string::npos;
      double sum = 0, squares = 0;
      for (double v : p) sum += v, squares += v * v;
      const double n = double(p.size()), mean = sum / n, sd = std::sqrt(squares / n - mean * mean);
      const double expected = out ? std / std::sqrt(8.0) : std;
      CHECK(std::fabs(mean) < 4 * expected / std::sqrt(n));  // four standard errors of the mean
      CHECK(sd == doctest::Approx(expected).epsilon(0.15));    // 2,048 values or more: 1.6% a standard error
      CHECK(!std::equal(p.begin(), p.end(), other.parameter(t).begin()));  // another seed, another model
      ++matrices;
      residual += out ? 1 : 0;
    }
  }
  CHECK(norms == 4 * 2 + 1);
  CHECK(biases == 4 * 3);
  CHECK(residual == 4 * 2);
  CHECK(matrices == 4 * 7 + 2);  // seven a layer, the embedding and the untied lm_head
}
