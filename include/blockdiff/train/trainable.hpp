// A Qwen2 model that trains: parameters and gradients in one flat array each (in checkpoint
// order, so the optimiser, clipping and checkpoints are loops over one span), the forward that
// keeps what the backward needs, and the backward, operation by operation (train/ops.hpp).
//
// The backend is a template parameter: `TrainableQwen2<float>` trains on the host,
// `TrainableQwen2<float, backend::Cuda>` (with <blockdiff/cuda.cuh>) runs the same step with
// every buffer in device memory and the device twins of the operations. The step is written
// once, against `ops::Ops<Backend>`.
//
// Activation memory is planned: `plan(rows, length, targets)` lays out every buffer of a step in
// one arena, which grows only when a larger shape arrives; a run of same-shaped steps allocates
// nothing. Attention keeps only its output and the log-sum-exp per query; the backward rebuilds
// the probabilities (as flash attention does), so memory is linear in the sequence length
// except for S·S scratch per thread.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "blockdiff/backend/host.hpp"
#include "blockdiff/core/error.hpp"
#include "blockdiff/core/rng.hpp"
#include "blockdiff/core/tensor.hpp"
#include "blockdiff/io/config.hpp"
#include "blockdiff/model/qwen2.hpp"
#include "blockdiff/train/batch.hpp"
#include "blockdiff/train/ops.hpp"

namespace blockdiff::train {

//! The loss of one batch: the mean over `n_tokens` cross-entropy terms.
struct LossResult {
  double loss = 0.0;
  std::int64_t n_tokens = 0;
};

template <class T, class Backend = backend::Host>
class TrainableQwen2 {
  using Ops = ops::Ops<Backend>;
  template <class U>
  using buffer = typename Ops::template buffer<U>;

 public:
  using scalar = T;
  using backend_type = Backend;

  //! A parameter's name and shape, and where it lives in `parameters()` / `gradients()`.
  struct TensorInfo {
    std::string name;
    std::vector<std::int64_t> shape;
    std::int64_t offset = 0, numel = 0;
  };

  explicit TrainableQwen2(io::ModelConfig config) : config_(std::move(config)) {
    config_.validate("TrainableQwen2");
    std::int64_t offset = 0;
    for (auto& spec : model::Qwen2<backend::Host>::parameter_specs(config_)) {
      std::int64_t n = 1;
      for (auto s : spec.shape) n *= s;
      tensors_.push_back({spec.name, spec.shape, offset, n});
      offset += n;
    }
    params_.resize({offset});
    grads_.resize({offset});
    Ops::zero(params_.data(), std::size_t(offset));
    Ops::zero(grads_.data(), std::size_t(offset));
    bind();
  }

  //! Copies the weights of an inference model (f32 or BF16 weights) into a trainable one.
  static TrainableQwen2 from(model::Qwen2<backend::Host>& source) {
    TrainableQwen2 out(source.config());
    std::vector<T> host(std::size_t(out.params_.numel()));
    auto params = source.parameters();
    for (std::size_t i = 0; i < params.size(); ++i)
      params[i].visit([&](auto& b) {
        std::transform(b.data(), b.data() + out.tensors_[i].numel, host.data() + out.tensors_[i].offset,
                       [](auto v) { return static_cast<T>(to_float(v)); });
      });
    out.upload_parameters(host);
    return out;
  }
  //! The same model on this backend (its parameters; gradients start at zero).
  template <class Other>
  static TrainableQwen2 from(const TrainableQwen2<T, Other>& source) {
    TrainableQwen2 out(source.config());
    out.upload_parameters(source.download_parameters());
    return out;
  }
  static TrainableQwen2 load(const std::filesystem::path& dir) {
    auto m = model::Qwen2<backend::Host>::load(dir);
    return from(m);
  }

  //! The same weights as an inference model.
  model::Qwen2<backend::Host> to_model() const {
    model::Qwen2<backend::Host> out(config_);
    const std::vector<T> host = download_parameters();
    auto params = out.parameters();
    for (std::size_t i = 0; i < params.size(); ++i) {
      const T* src = host.data() + tensors_[i].offset;
      std::transform(src, src + tensors_[i].numel, params[i].f32().data(), [](T v) { return static_cast<float>(v); });
    }
    return out;
  }

  const io::ModelConfig& config() const { return config_; }
  //! Records the block size of block-diffusion training (config.json's bd_size).
  void set_block_size(int block) {
    require(block > 0, "block size must be positive, got ", block);
    config_.bd_size = block;
  }
  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  //! Every parameter and every gradient, in the backend's memory (device memory for CUDA; the
  //! download_ and upload_ functions below move them to and from the host on any backend).
  std::span<T> parameters() { return {params_.data(), std::size_t(params_.numel())}; }
  std::span<const T> parameters() const { return {params_.data(), std::size_t(params_.numel())}; }
  std::span<T> gradients() { return {grads_.data(), std::size_t(grads_.numel())}; }
  std::span<const T> gradients() const { return {grads_.data(), std::size_t(grads_.numel())}; }
  std::span<T> parameter(std::size_t i) { return {params_.data() + tensors_[i].offset, std::size_t(tensors_[i].numel)}; }
  std::span<T> gradient(std::size_t i) { return {grads_.data() + tensors_[i].offset, std::size_t(tensors_[i].numel)}; }
  void zero_grad() { Ops::zero(grads_.data(), std::size_t(grads_.numel())); }

  std::vector<T> download_parameters() const { return download(params_); }
  std::vector<T> download_gradients() const { return download(grads_); }
  void upload_parameters(std::span<const T> host) {
    require(host.size() == std::size_t(params_.numel()), "upload_parameters: ", host.size(), " values for a model of ",
            params_.numel(), " parameters");
    Ops::upload(params_.data(), host.data(), host.size());
  }
  //! Bytes of the activation arena after the largest step so far.
  std::size_t arena_bytes() const { return arena_.bytes(); }

  //! The mean cross-entropy of `batch` under `mask`; with `backward`, adds `grad_scale` times its
  //! gradient to `gradients()` (call zero_grad() first, or accumulate micro-batches).
  template <class Mask>
  LossResult step(const ModelBatch& batch, const Mask& mask, bool backward = true, T grad_scale = T(1)) {
    check(batch);
    [[maybe_unused]] typename Ops::Scope scope;  // OpenBLAS in this thread alone, for the step
    LossResult result;
    result.n_tokens = static_cast<std::int64_t>(batch.targets.size());
    if (batch.targets.empty()) return result;
    plan(batch.rows, batch.length, static_cast<std::int64_t>(batch.targets.size()));
    forward(batch, mask);
    result.loss = loss_and_head_backward(batch, grad_scale / T(result.n_tokens), backward) / double(result.n_tokens);
    if (backward) backward_body(batch);
    return result;
  }

 private:
  struct LayerRefs {
    T *input_norm, *wq, *bq, *wk, *bk, *wv, *bv, *wo, *post_norm, *w_gate, *w_up, *w_down;
  };
  struct Activations {  // one layer's saved tensors
    T *x, *xn1, *rstd1, *q, *k, *v, *att, *lse, *x_mid, *xn2, *rstd2, *gate, *up, *h;
  };

  void bind() {
    layers_.clear();
    glayers_.clear();
    const int per_layer = 12;
    for (int l = 0; l < config_.num_hidden_layers; ++l) {
      auto refs = [&](T* base) {
        auto at = [&](int j) { return base + tensors_[std::size_t(1 + l * per_layer + j)].offset; };
        return LayerRefs{at(0), at(1), at(2), at(3), at(4), at(5), at(6), at(7), at(8), at(9), at(10), at(11)};
      };
      layers_.push_back(refs(params_.data()));
      glayers_.push_back(refs(grads_.data()));
    }
  }
  static std::vector<T> download(const buffer<T>& b) {
    std::vector<T> host(std::size_t(b.numel()));
    Ops::download(host.data(), b.data(), host.size());
    return host;
  }

  std::size_t final_norm_index() const { return 1 + std::size_t(config_.num_hidden_layers) * 12; }
  T* embed(T* base) const { return base + tensors_[0].offset; }
  T* final_norm(T* base) const { return base + tensors_[final_norm_index()].offset; }
  T* head(T* base) const {
    return config_.tie_word_embeddings ? embed(base) : base + tensors_[final_norm_index() + 1].offset;
  }

  void check(const ModelBatch& b) const {
    require(b.rows > 0 && b.length > 0, "training batch: rows and length must be positive, got ", b.rows, " x ",
            b.length);
    const auto n = std::size_t(b.rows) * std::size_t(b.length);
    require(b.tokens.size() == n && b.positions.size() == n, "training batch: ", b.tokens.size(), " tokens and ",
            b.positions.size(), " positions for ", b.rows, " rows of ", b.length);
    for (int t : b.tokens)
      require(t >= 0 && t < config_.vocab_size, "training batch: token id ", t, " is outside the vocabulary [0, ",
              config_.vocab_size, ")");
    for (int p : b.positions)  // the message is built only for a position out of range
      if (p < 0 || p >= config_.context()) fail("training batch: position ", p, " is beyond ", config_.describe_context());
    for (auto& t : b.targets)
      require(t.index >= 0 && t.index < std::int64_t(n) && t.label >= 0 && t.label < config_.vocab_size,
              "training batch: loss term (", t.index, ", ", t.label, ") is outside the batch or vocabulary");
  }

  static constexpr std::int64_t kHeadChunk = 256;  // rows of logits alive at once

  //! Lays out every buffer of a (rows × length, targets) step in one arena.
  void plan(int rows, int length, std::int64_t targets) {
    const auto& c = config_;
    const std::int64_t N = std::int64_t(rows) * length, H = c.hidden_size, I = c.intermediate_size;
    const std::int64_t qd = c.q_dim(), kvd = c.kv_dim(), S = length, L = c.num_hidden_layers;
    const ops::AttentionDims dims{rows, length, c.num_attention_heads, c.num_key_value_heads, c.head_dim()};
    std::int64_t total = 0;
    auto& slots = slots_;
    slots.clear();
    auto carve = [&](T** p, std::int64_t n) {
      slots.push_back({p, total});
      total += (n + 15) / 16 * 16;  // 64-byte aligned for f32
    };
    acts_.resize(std::size_t(L));
    for (auto& a : acts_) {
      carve(&a.x, N * H);
      carve(&a.xn1, N * H);
      carve(&a.rstd1, N);
      carve(&a.q, N * qd);
      carve(&a.k, N * kvd);
      carve(&a.v, N * kvd);
      carve(&a.att, N * qd);
      carve(&a.lse, std::int64_t(rows) * c.num_attention_heads * S);
      carve(&a.x_mid, N * H);
      carve(&a.xn2, N * H);
      carve(&a.rstd2, N);
      carve(&a.gate, N * I);
      carve(&a.up, N * I);
      carve(&a.h, N * I);
    }
    const std::int64_t chunk = std::min<std::int64_t>(kHeadChunk, std::max<std::int64_t>(targets, 1));
    carve(&x_final_, N * H);
    carve(&xn_final_, N * H);
    carve(&rstd_final_, N);
    carve(&gathered_, targets * H);
    carve(&dgathered_, targets * H);
    carve(&logits_, chunk * c.vocab_size);
    carve(&dx_, N * H);
    carve(&dxn_, N * H);
    carve(&dq_, N * qd);
    carve(&dk_, N * kvd);
    carve(&dv_, N * kvd);
    carve(&datt_, N * qd);
    carve(&dgate_, N * I);
    carve(&dup_, N * I);
    carve(&dh_, N * I);
    carve(&dnorm_scratch_, Ops::rmsnorm_scratch(N, int(H)));
    carve(&attn_scratch_, Ops::attention_scratch(dims));
    if (std::size_t(total) > arena_.bytes() / sizeof(T)) arena_.resize({total});
    for (auto& [p, off] : slots) *p = arena_.data() + off;
    allowed_host_.resize(std::size_t(S * S));
    allowed_.resize({S * S});
    tokens_.resize({N});
    positions_.resize({N});
    labels_.resize({std::max<std::int64_t>(targets, 1)});
    target_index_.resize({std::max<std::int64_t>(targets, 1)});
    ensure_rope(c.context());
  }

  void ensure_rope(int n) {
    if (rope_positions_ >= n) return;
    const int half = config_.head_dim() / 2;
    std::vector<T> cos(std::size_t(n) * half), sin(std::size_t(n) * half);
    for (int i = 0; i < half; ++i) {
      // inv_freq and the angle in f32 as the inference path (and transformers) computes them.
      const float inv = static_cast<float>(1.0 / std::pow(config_.rope_theta, double(2 * i) / config_.head_dim()));
      for (int p = 0; p < n; ++p) {
        const float angle = static_cast<float>(p) * inv;
        cos[std::size_t(p) * half + i] = T(std::cos(angle));
        sin[std::size_t(p) * half + i] = T(std::sin(angle));
      }
    }
    cos_.resize({std::int64_t(cos.size())});
    sin_.resize({std::int64_t(sin.size())});
    Ops::upload(cos_.data(), cos.data(), cos.size());
    Ops::upload(sin_.data(), sin.data(), sin.size());
    rope_positions_ = n;
  }

  template <class Mask>
  void forward(const ModelBatch& b, const Mask& mask) {
    const auto& c = config_;
    const std::int64_t N = std::int64_t(b.rows) * b.length;
    const int H = c.hidden_size, I = c.intermediate_size, qd = c.q_dim(), kvd = c.kv_dim(), d = c.head_dim();
    const T eps = T(c.rms_norm_eps);
    dims_ = ops::AttentionDims{b.rows, b.length, c.num_attention_heads, c.num_key_value_heads, d};
    ops::fill_mask(mask, b.length, allowed_host_.data());
    Ops::upload(allowed_.data(), allowed_host_.data(), allowed_host_.size());
    Ops::upload(tokens_.data(), b.tokens.data(), b.tokens.size());
    Ops::upload(positions_.data(), b.positions.data(), b.positions.size());
    scale_ = T(1) / std::sqrt(T(d));
    Ops::embedding_forward(embed(params_.data()), tokens_.data(), N, H, acts_[0].x);
    for (std::size_t l = 0; l < acts_.size(); ++l) {
      auto& a = acts_[l];
      auto& W = layers_[l];
      Ops::rmsnorm_forward(a.x, N, H, W.input_norm, eps, a.xn1, a.rstd1);
      Ops::linear_forward(a.xn1, N, H, W.wq, qd, W.bq, a.q);
      Ops::linear_forward(a.xn1, N, H, W.wk, kvd, W.bk, a.k);
      Ops::linear_forward(a.xn1, N, H, W.wv, kvd, W.bv, a.v);
      Ops::rope(a.q, N, c.num_attention_heads, d, positions_.data(), cos_.data(), sin_.data());
      Ops::rope(a.k, N, c.num_key_value_heads, d, positions_.data(), cos_.data(), sin_.data());
      Ops::attention_forward(a.q, a.k, a.v, dims_, allowed_.data(), scale_, a.att, a.lse, attn_scratch_);
      Ops::copy(a.x_mid, a.x, std::size_t(N * H));
      Ops::linear_forward(a.att, N, qd, W.wo, H, static_cast<const T*>(nullptr), a.x_mid, true);
      Ops::rmsnorm_forward(a.x_mid, N, H, W.post_norm, eps, a.xn2, a.rstd2);
      Ops::linear_forward(a.xn2, N, H, W.w_gate, I, static_cast<const T*>(nullptr), a.gate);
      Ops::linear_forward(a.xn2, N, H, W.w_up, I, static_cast<const T*>(nullptr), a.up);
      Ops::swiglu_forward(a.gate, a.up, N * I, a.h);
      T* next = l + 1 < acts_.size() ? acts_[l + 1].x : x_final_;
      Ops::copy(next, a.x_mid, std::size_t(N * H));
      Ops::linear_forward(a.h, N, I, W.w_down, H, static_cast<const T*>(nullptr), next, true);
    }
    Ops::rmsnorm_forward(x_final_, N, H, final_norm(params_.data()), eps, xn_final_, rstd_final_);
  }

  //! Gathers the target rows, computes the summed loss chunk by chunk and, with `backward`, the
  //! gradient of `weight` times it for the final normed hidden states (into dxn_) and the lm_head.
  double loss_and_head_backward(const ModelBatch& b, T weight, bool backward) {
    const int H = config_.hidden_size, V = config_.vocab_size;
    const auto n = std::int64_t(b.targets.size());
    labels_host_.resize(std::size_t(n));
    index_host_.resize(std::size_t(n));
    for (std::size_t i = 0; i < std::size_t(n); ++i)
      index_host_[i] = b.targets[i].index, labels_host_[i] = b.targets[i].label;
    Ops::upload(labels_.data(), labels_host_.data(), labels_host_.size());
    Ops::upload(target_index_.data(), index_host_.data(), index_host_.size());
    Ops::gather_rows(xn_final_, target_index_.data(), n, H, gathered_);
    double loss = 0.0;
    for (std::int64_t i0 = 0; i0 < n; i0 += kHeadChunk) {
      const std::int64_t m = std::min(kHeadChunk, n - i0);
      loss += Ops::cross_entropy_head(gathered_ + i0 * H, m, H, head(params_.data()), V, labels_.data() + i0, weight,
                                      logits_, backward ? dgathered_ + i0 * H : nullptr,
                                      backward ? head(grads_.data()) : nullptr);
    }
    if (backward) {
      const std::int64_t N = std::int64_t(b.rows) * b.length;
      Ops::zero(dxn_, std::size_t(N * H));
      Ops::scatter_add_rows(dgathered_, target_index_.data(), n, H, dxn_);
    }
    return loss;
  }

  void backward_body(const ModelBatch& b) {
    const auto& c = config_;
    const std::int64_t N = std::int64_t(b.rows) * b.length;
    const int H = c.hidden_size, I = c.intermediate_size, qd = c.q_dim(), kvd = c.kv_dim(), d = c.head_dim();
    Ops::zero(dx_, std::size_t(N * H));
    Ops::rmsnorm_backward(dxn_, x_final_, rstd_final_, N, H, final_norm(params_.data()), dx_, final_norm(grads_.data()),
                          dnorm_scratch_);
    for (std::size_t l = acts_.size(); l-- > 0;) {
      auto& a = acts_[l];
      auto& W = layers_[l];
      auto& G = glayers_[l];
      // MLP branch: x_next = x_mid + down(swiglu(gate(xn2), up(xn2))); dx_ holds d x_next.
      Ops::linear_backward(dx_, a.h, N, I, W.w_down, H, dh_, G.w_down, static_cast<T*>(nullptr));
      Ops::swiglu_backward(dh_, a.gate, a.up, N * I, dgate_, dup_);
      Ops::linear_backward(dgate_, a.xn2, N, H, W.w_gate, I, dxn_, G.w_gate, static_cast<T*>(nullptr));
      Ops::linear_backward(dup_, a.xn2, N, H, W.w_up, I, dxn_, G.w_up, static_cast<T*>(nullptr), true);
      Ops::rmsnorm_backward(dxn_, a.x_mid, a.rstd2, N, H, W.post_norm, dx_, G.post_norm, dnorm_scratch_);
      // Attention branch: x_mid = x + o(attention(rope(q), rope(k), v)); dx_ now holds d x_mid.
      Ops::linear_backward(dx_, a.att, N, qd, W.wo, H, datt_, G.wo, static_cast<T*>(nullptr));
      Ops::attention_backward(datt_, a.q, a.k, a.v, a.att, a.lse, dims_, allowed_.data(), scale_, dq_, dk_, dv_,
                              attn_scratch_);
      Ops::rope(dq_, N, c.num_attention_heads, d, positions_.data(), cos_.data(), sin_.data(), /*inverse=*/true);
      Ops::rope(dk_, N, c.num_key_value_heads, d, positions_.data(), cos_.data(), sin_.data(), /*inverse=*/true);
      Ops::linear_backward(dq_, a.xn1, N, H, W.wq, qd, dxn_, G.wq, G.bq);
      Ops::linear_backward(dk_, a.xn1, N, H, W.wk, kvd, dxn_, G.wk, G.bk, true);
      Ops::linear_backward(dv_, a.xn1, N, H, W.wv, kvd, dxn_, G.wv, G.bv, true);
      Ops::rmsnorm_backward(dxn_, a.x, a.rstd1, N, H, W.input_norm, dx_, G.input_norm, dnorm_scratch_);
    }
    Ops::embedding_backward(dx_, tokens_.data(), N, H, embed(grads_.data()));
  }

  io::ModelConfig config_;
  std::vector<TensorInfo> tensors_;
  buffer<T> params_, grads_, arena_;
  std::vector<LayerRefs> layers_, glayers_;
  std::vector<Activations> acts_;
  T *x_final_ = nullptr, *xn_final_ = nullptr, *rstd_final_ = nullptr, *gathered_ = nullptr, *dgathered_ = nullptr,
    *logits_ = nullptr, *dx_ = nullptr, *dxn_ = nullptr, *dq_ = nullptr, *dk_ = nullptr, *dv_ = nullptr,
    *datt_ = nullptr, *dgate_ = nullptr, *dup_ = nullptr, *dh_ = nullptr, *dnorm_scratch_ = nullptr,
    *attn_scratch_ = nullptr;
  std::vector<std::pair<T**, std::int64_t>> slots_;  // the arena's layout, reused
  std::vector<unsigned char> allowed_host_;  // staged on the host, then uploaded
  std::vector<int> labels_host_;
  std::vector<std::int64_t> index_host_;
  // What a step reads besides the arena, in the backend's memory: the mask, the batch's tokens
  // and positions, the loss terms' labels and rows, and the rotary tables.
  buffer<unsigned char> allowed_;
  buffer<int> tokens_, positions_, labels_;
  buffer<std::int64_t> target_index_;
  buffer<T> cos_, sin_;
  int rope_positions_ = 0;
  ops::AttentionDims dims_{};
  T scale_ = T(1);
};

//! A fresh model for training from scratch: matrices and embeddings ~ N(0, std²), the output
//! projections of each residual branch (o_proj, down_proj) scaled by 1/√(2·layers) as GPT-2
//! does, norms 1, biases 0.
template <class T>
void initialise(TrainableQwen2<T>& m, std::uint64_t seed, double std = 0.02) {
  Rng rng(seed);
  const double residual = std / std::sqrt(2.0 * m.config().num_hidden_layers);
  for (std::size_t i = 0; i < m.tensors().size(); ++i) {
    const auto& t = m.tensors()[i];
    const bool norm = t.name.find("norm") != std::string::npos;
    const bool out = t.name.find("o_proj") != std::string::npos || t.name.find("down_proj") != std::string::npos;
    for (auto& v : m.parameter(i))
      v = norm ? T(1) : t.shape.size() == 1 ? T(0) : T((out ? residual : std) * rng.normal());
  }
}

}  // namespace blockdiff::train
