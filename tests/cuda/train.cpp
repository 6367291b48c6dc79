// Training on the device against the host: the operations whose kernels are the CUDA backend's
// own (attention forward and backward, RMSNorm, the loss head) on shapes that stride every
// loop, and whole training steps (loss and every gradient) on the golden models — against the
// independent implementation's vectors and against the host step — and on models with head
// dimensions 64 and 128 over sequences longer than a block of threads.
#include <doctest/doctest.h>

#include <cmath>
#include <filesystem>
#include <fstream>

#include "../support/configs.hpp"
#include "../support/paths.hpp"
#include "blockdiff/blockdiff.hpp"
#include "../support/compare.hpp"
#include "launchers.hpp"

using namespace blockdiff;
namespace gpu = blockdiff::test::cuda;
using test::randn;
using test::rel;

namespace {
// Sums of a few hundred f32 terms in another order, through exp and a subtraction (dP − D).
constexpr double kTrainTol = 1e-4;

//! Each tensor's gradient within `tol` of max |reference| over that tensor.
void check_gradients(const std::vector<train::TrainableQwen2<float>::TensorInfo>& tensors,
                     const std::vector<float>& got, const float* reference, double tol) {
  REQUIRE(got.size() >= std::size_t(tensors.back().offset + tensors.back().numel));
  for (const auto& t : tensors) {
    std::vector<float> a(got.begin() + t.offset, got.begin() + t.offset + t.numel);
    std::vector<float> b(reference + t.offset, reference + t.offset + t.numel);
    INFO(t.name);
    CHECK(rel(a, b) <= tol);
  }
}
}  // namespace

TEST_CASE("training attention, forward and backward, each mask kind and GQA: CUDA == host") {
  struct Case {
    int rows, length, heads, kv_heads, d;
  };
  for (Case c : {Case{2, 40, 4, 2, 16}, Case{1, 200, 4, 1, 64}, Case{1, 130, 2, 2, 128}})
    for (std::string mask_name : {"causal", "block-diffusion", "full"}) {
      CAPTURE(c.length);
      CAPTURE(c.d);
      CAPTURE(mask_name);
      const train::ops::AttentionDims dims{c.rows, c.length, c.heads, c.kv_heads, c.d};
      const std::size_t tokens = std::size_t(c.rows) * c.length;
      const auto q = randn(tokens * dims.q_dim(), 1), k = randn(tokens * dims.kv_dim(), 2),
                 v = randn(tokens * dims.kv_dim(), 3), dout = randn(tokens * dims.q_dim(), 4);
      std::vector<unsigned char> allowed(std::size_t(c.length) * c.length);
      if (mask_name == "causal") train::ops::fill_mask(mask::Causal{}, c.length, allowed.data());
      else if (mask_name == "full") train::ops::fill_mask(mask::Full{}, c.length, allowed.data());
      else train::ops::fill_mask(mask::BlockDiffusionTraining<8>{c.length / 2}, c.length, allowed.data());
      const float scale = 1.0f / std::sqrt(float(c.d));

      std::vector<float> out(q.size()), lse(std::size_t(c.rows) * c.heads * c.length), dq(q.size()), dk(k.size()),
          dv(v.size()), scratch(std::size_t(train::ops::Ops<backend::Host>::attention_scratch(dims)));
      train::ops::attention_forward(q.data(), k.data(), v.data(), dims, allowed.data(), scale, out.data(), lse.data(),
                                    scratch.data());
      train::ops::attention_backward(dout.data(), q.data(), k.data(), v.data(), out.data(), lse.data(), dims,
                                     allowed.data(), scale, dq.data(), dk.data(), dv.data(), scratch.data());
      const auto g = gpu::train_attention(q, k, v, dout, dims, allowed, scale);
      CHECK(rel(g.out, out) <= kTrainTol);
      CHECK(rel(g.lse, lse) <= kTrainTol);
      CHECK(rel(g.dq, dq) <= kTrainTol);
      CHECK(rel(g.dk, dk) <= kTrainTol);
      CHECK(rel(g.dv, dv) <= kTrainTol);
    }
}

TEST_CASE("training RMSNorm, forward and backward (dx and dw accumulate): CUDA == host") {
  for (auto [n, h] : {std::pair{3, 16}, {200, 300}, {64, 1536}}) {
    CAPTURE(n);
    CAPTURE(h);
    const auto x = randn(std::size_t(n) * h, 5), w = randn(std::size_t(h), 6),
               dy = randn(std::size_t(n) * h, 7), dx0 = randn(std::size_t(n) * h, 8),
               dw0 = randn(std::size_t(h), 9);
    std::vector<float> y(x.size()), rstd(static_cast<std::size_t>(n)), dx = dx0, dw = dw0,
        scratch(std::size_t(train::ops::Ops<backend::Host>::rmsnorm_scratch(n, h)));
    train::ops::Ops<backend::Host>::rmsnorm_forward(x.data(), n, h, w.data(), 1e-6f, y.data(), rstd.data());
    train::ops::Ops<backend::Host>::rmsnorm_backward(dy.data(), x.data(), rstd.data(), n, h, w.data(), dx.data(),
                                                     dw.data(), scratch.data());
    const auto g = gpu::train_rmsnorm(x, n, h, w, 1e-6f, dy, dx0, dw0);
    CHECK(rel(g.y, y) <= kTrainTol);
    CHECK(rel(g.rstd, rstd) <= kTrainTol);
    CHECK(rel(g.dx, dx) <= kTrainTol);
    CHECK(rel(g.dw, dw) <= kTrainTol);
  }
}

TEST_CASE("training loss head (lm_head product, cross-entropy and its gradients): CUDA == host") {
  const int n = 50, h = 32, vocab = 1000;
  const auto x = randn(std::size_t(n) * h, 10), head = randn(std::size_t(vocab) * h, 11, 0.3),
             dhead0 = randn(std::size_t(vocab) * h, 12);
  std::vector<int> labels(n);
  for (int i = 0; i < n; ++i) labels[std::size_t(i)] = (i * 37) % vocab;
  std::vector<float> logits(std::size_t(n) * vocab), dx(x.size()), dhead = dhead0;
  const double loss = train::ops::cross_entropy_head(x.data(), n, h, head.data(), vocab, labels.data(), 0.02f,
                                                     logits.data(), dx.data(), dhead.data());
  const auto g = gpu::train_cross_entropy(x, n, h, head, vocab, labels, 0.02f, dhead0);
  CHECK(g.loss == doctest::Approx(loss).epsilon(1e-5));
  CHECK(rel(g.dx, dx) <= kTrainTol);
  CHECK(rel(g.dhead, dhead) <= kTrainTol);
}

TEST_CASE("a whole training step on the device: the golden loss and gradients, and the host's") {
  const auto loss_json = nlohmann::json::parse(std::ifstream(test::golden("loss.json")));
  for (std::string name : {"model-f32-tied", "model-bf16-untied"})
    for (std::string objective : {"fdllm2", "ar"}) {
      CAPTURE(name);
      CAPTURE(objective);
      auto m = train::TrainableQwen2<float>::load(test::golden(name));
      const auto file = train::read_batch_file(test::golden("loss-batch.json"), m.config().vocab_size);
      train::ModelBatch batch;
      train::LossResult host;
      m.zero_grad();
      if (objective == "ar") {
        Rng unused(0);
        train::ArObjective{}.build(file.windows, 0, file.windows.count(), unused, batch);
        host = m.step(batch, mask::Causal{});
      } else {
        const train::FastDllmV2Objective<8> fd{*m.config().mask_token_id};
        fd.build_with_masks(file.windows, 0, file.windows.count(), file.mask, batch);
        host = m.step(batch, fd.mask(file.windows.length));
      }
      const auto device = gpu::train_step(m.config(), m.download_parameters(), batch, objective == "fdllm2");
      const auto& expect = loss_json.at(name + "/" + objective);
      CHECK(device.n_tokens == expect.at("n_tokens").get<int>());
      CHECK(device.loss == doctest::Approx(expect.at("loss").get<double>()).epsilon(1e-5));
      CHECK(device.loss == doctest::Approx(host.loss).epsilon(1e-5));
      io::SafetensorsFile golden(test::golden("grads-" + name.substr(6) + "-" + objective + ".safetensors"));
      std::vector<float> reference(device.gradients.size());
      for (const auto& t : m.tensors()) {
        const auto& e = golden.at(t.name);
        REQUIRE(e.numel() == t.numel);
        std::copy_n(reinterpret_cast<const float*>(e.bytes.data()), t.numel, reference.begin() + t.offset);
      }
      check_gradients(m.tensors(), device.gradients, reference.data(), 2e-4);
      check_gradients(m.tensors(), device.gradients, m.download_gradients().data(), kTrainTol);
    }
}

TEST_CASE("a training step of models with head_dim 64 and 128 over 192-token rows: CUDA == host") {
  for (auto [heads, kv_heads] : {std::pair{4, 2}, {2, 1}}) {
    CAPTURE(heads);
    const auto c = test::small_config({.hidden = 256, .intermediate = 512, .vocab = 300, .heads = heads,
                                       .kv_heads = kv_heads, .max_positions = 512, .tied = heads == 2});
    train::TrainableQwen2<float> m(c);
    train::initialise(m, 3, 0.05);
    train::Windows windows;
    windows.length = 96;
    Rng rng(4);
    for (int i = 0; i < 3 * windows.length; ++i) {
      windows.ids.push_back(int(rng.below(298)));
      windows.supervised.push_back(i % windows.length >= 20 ? 1 : 0);
    }
    train::ModelBatch batch;
    const train::FastDllmV2Objective<8> fd{299};
    fd.build(windows, 0, windows.count(), rng, batch);
    REQUIRE(batch.length == 192);
    m.zero_grad();
    const auto host = m.step(batch, fd.mask(windows.length));
    const auto device = gpu::train_step(c, m.download_parameters(), batch, true);
    CHECK(device.n_tokens == host.n_tokens);
    CHECK(device.loss == doctest::Approx(host.loss).epsilon(1e-5));
    check_gradients(m.tensors(), device.gradients, m.download_gradients().data(), kTrainTol);
  }
}

TEST_CASE("the optimiser on the device: AdamW with and without decay, and the global norm: CUDA == host") {
  const std::size_t n = 100000;  // over the host's threading threshold and many blocks
  auto params = randn(n, 20), grads = randn(n, 21, 0.01), m = randn(n, 22, 0.01),
       v = randn(n, 23, 0.01);
  for (auto& x : v) x = x * x;
  const train::ops::AdamWStep<float> step{0.9f, 0.95f, 2e-3f, 1.3f, 1e-8f, 1.0f - 2e-4f};
  for (bool decay : {false, true}) {
    CAPTURE(decay);
    auto hp = params, hm = m, hv = v;
    const std::size_t begin = 1000, end = n - 7;
    train::ops::Ops<backend::Host>::adamw(hp.data(), grads.data(), hm.data(), hv.data(), begin, end, step, decay);
    const auto g = gpu::train_adamw(params, grads, m, v, begin, end, step, decay);
    CHECK(rel(g.params, hp) <= 1e-6);
    CHECK(rel(g.m, hm) <= 1e-6);
    CHECK(rel(g.v, hv) <= 1e-6);
    CHECK(g.params[begin - 1] == params[begin - 1]);  // outside the range: untouched
    CHECK(g.params[end] == params[end]);
    CHECK(g.sum_squares == doctest::Approx(train::ops::Ops<backend::Host>::sum_squares(hp.data(), n)).epsilon(1e-9));
  }
}

TEST_CASE("Trainer<O, backend::Cuda>: the host's loss curve, checkpoints the host loads, and resume") {
  const auto c = test::small_config({.vocab = 24, .max_positions = 128});
  std::vector<train::Example> examples;  // reverse a list of digits
  Rng rng(7);
  for (int i = 0; i < 64; ++i) {
    train::Example e;
    for (int j = 0, len = 2 + int(rng.below(6)); j < len; ++j) e.prompt.push_back(int(rng.below(10)));
    e.prompt.push_back(11);
    e.response.assign(e.prompt.rbegin() + 1, e.prompt.rend());
    e.response.push_back(22);
    examples.push_back(e);
  }
  train::TrainOptions o;
  o.context = 32;
  o.batch = 4;
  o.steps = 6;
  o.lr.peak = 3e-3;  // constant: a resumed run follows the same schedule
  o.lr.total = o.steps;
  o.seed = 9;
  train::TrainableQwen2<float> host_model(c);
  train::initialise(host_model, 11, 0.08);
  const auto initial = host_model.download_parameters();

  std::vector<double> host_loss, host_norm;
  train::Trainer<train::FastDllmV2Objective<8>> host(host_model, train::FastDllmV2Objective<8>{23}, examples, o);
  host.run({}, [&](const train::StepLog& s) {
    host_loss.push_back(s.loss);
    host_norm.push_back(s.grad_norm);
  });
  const auto out = test::temp_dir("cuda-trainer");
  const auto device = gpu::train_run(c, initial, examples, o, out.path().string(), false);
  REQUIRE(device.loss.size() == host_loss.size());
  for (std::size_t s = 0; s < host_loss.size(); ++s) {
    CAPTURE(s);
    CHECK(device.loss[s] == doctest::Approx(host_loss[s]).epsilon(1e-4));
    CHECK(device.grad_norm[s] == doctest::Approx(host_norm[s]).epsilon(1e-3));
  }
  // Parameters after six AdamW steps: an element whose gradient is rounding noise may step the
  // other way (2 lr), so the bound is on the mean difference, and loosely on the largest.
  const auto host_params = host_model.download_parameters();
  double mean = 0, largest = 0;
  for (std::size_t i = 0; i < host_params.size(); ++i) {
    const double d = std::fabs(double(device.parameters[i]) - double(host_params[i]));
    mean += d / double(host_params.size());
    largest = std::max(largest, d);
  }
  CHECK(mean <= 1e-2 * o.lr.peak);
  CHECK(largest <= 2 * o.lr.peak * o.steps);
  CHECK(mean < 1e-3 * o.lr.peak * o.steps);

  // The checkpoint is the device's weights, loadable on the host.
  const auto saved = train::TrainableQwen2<float>::load(out).download_parameters();
  CHECK(saved == device.parameters);

  // Three steps, then a resumed run to six: the uninterrupted curve.
  const auto half_dir = test::temp_dir("cuda-trainer-resume");
  auto three = o;
  three.steps = 3;
  three.lr.total = 3;
  gpu::train_run(c, initial, examples, three, half_dir.path().string(), false);
  const auto resumed = gpu::train_run(c, initial, examples, o, half_dir.path().string(), true);
  REQUIRE(resumed.loss.size() == 3);
  for (std::size_t s = 0; s < 3; ++s) CHECK(resumed.loss[s] == doctest::Approx(device.loss[s + 3]).epsilon(1e-4));
}
