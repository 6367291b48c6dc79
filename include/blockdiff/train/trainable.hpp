// A Qwen2 model that trains: parameters and gradients in one flat array each (in checkpoint
// order, so the optimiser, clipping and checkpoints are loops over one span), the forward that
// keeps what the backward needs, and the backward, operation by operation (train/ops.hpp).
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

template <class T>
class TrainableQwen2 {
 public:
  using scalar = T;

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
    params_.reset({offset});
    grads_.reset({offset});
    bind();
  }

  //! Copies the weights of an inference model (f32 or BF16 weights) into a trainable one.
  static TrainableQwen2 from(model::Qwen2<backend::Host>& source) {
    TrainableQwen2 out(source.config());
    auto params = source.parameters();
    for (std::size_t i = 0; i < params.size(); ++i)
      params[i].visit([&](auto& b) {
        std::transform(b.data(), b.data() + out.tensors_[i].numel, out.params_.data() + out.tensors_[i].offset,
                       [](auto v) { return static_cast<T>(to_float(v)); });
      });
    return out;
  }
  static TrainableQwen2 load(const std::filesystem::path& dir) {
    auto m = model::Qwen2<backend::Host>::load(dir);
    return from(m);
  }

  //! The same weights as an inference model.
  model::Qwen2<backend::Host> to_model() const {
    model::Qwen2<backend::Host> out(config_);
    auto params = out.parameters();
    for (std::size_t i = 0; i < params.size(); ++i) {
      const T* src = params_.data() + tensors_[i].offset;
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
  std::span<T> parameters() { return params_.span(); }
  std::span<const T> parameters() const { return params_.span(); }
  std::span<T> gradients() { return grads_.span(); }
  std::span<const T> gradients() const { return grads_.span(); }
  std::span<T> parameter(std::size_t i) { return {params_.data() + tensors_[i].offset, std::size_t(tensors_[i].numel)}; }
  std::span<T> gradient(std::size_t i) { return {grads_.data() + tensors_[i].offset, std::size_t(tensors_[i].numel)}; }
  void zero_grad() { std::fill(grads_.data(), grads_.data() + grads_.numel(), T(0)); }
  //! Bytes of the activation arena after the largest step so far.
  std::size_t arena_bytes() const { return arena_.bytes(); }

  //! The mean cross-entropy of `batch` under `mask`; with `backward`, adds `grad_scale` times its
  //! gradient to `gradients()` (call zero_grad() first, or accumulate micro-batches).
  template <class Mask>
  LossResult step(const ModelBatch& batch, const Mask& mask, bool backward = true, T grad_scale = T(1)) {
    check(batch);
    ops::BlasInCallerThread blas_scope;
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
    for (int p : b.positions)
      require(p >= 0 && p < config_.max_position_embeddings, "training batch: position ", p,
              " is beyond max_position_embeddings ", config_.max_position_embeddings);
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
    threads_ = detail::host_threads();
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
    carve(&dnorm_scratch_, std::int64_t(threads_) * H);
    carve(&attn_scratch_, std::int64_t(threads_) * 2 * S * S);
    if (std::size_t(total) > arena_.capacity()) arena_.resize({total});
    for (auto& [p, off] : slots) *p = arena_.data() + off;
    if (allowed_.size() < std::size_t(S * S)) allowed_.resize(std::size_t(S * S));
    if (labels_.size() < std::size_t(targets)) labels_.resize(std::size_t(targets));
    ensure_rope(c.max_position_embeddings);
  }

  void ensure_rope(int n) {
    if (rope_positions_ >= n) return;
    const int half = config_.head_dim() / 2;
    cos_.resize(std::size_t(n) * half);
    sin_.resize(std::size_t(n) * half);
    for (int i = 0; i < half; ++i) {
      // inv_freq and the angle in f32 as the inference path (and transformers) computes them.
      const float inv = static_cast<float>(1.0 / std::pow(config_.rope_theta, double(2 * i) / config_.head_dim()));
      for (int p = 0; p < n; ++p) {
        const float angle = static_cast<float>(p) * inv;
        cos_[std::size_t(p) * half + i] = T(std::cos(angle));
        sin_[std::size_t(p) * half + i] = T(std::sin(angle));
      }
    }
    rope_positions_ = n;
  }

  template <class Mask>
  void forward(const ModelBatch& b, const Mask& mask) {
    const auto& c = config_;
    const std::int64_t N = std::int64_t(b.rows) * b.length;
    const int H = c.hidden_size, I = c.intermediate_size, qd = c.q_dim(), kvd = c.kv_dim(), d = c.head_dim();
    const T eps = T(c.rms_norm_eps);
    dims_ = ops::AttentionDims{b.rows, b.length, c.num_attention_heads, c.num_key_value_heads, d};
    ops::fill_mask(mask, b.length, allowed_.data());
    scale_ = T(1) / std::sqrt(T(d));
    ops::embedding_forward(embed(params_.data()), b.tokens.data(), N, H, acts_[0].x);
    for (std::size_t l = 0; l < acts_.size(); ++l) {
      auto& a = acts_[l];
      auto& W = layers_[l];
      ops::rmsnorm_forward(a.x, N, H, W.input_norm, eps, a.xn1, a.rstd1);
      ops::linear_forward(a.xn1, N, H, W.wq, qd, W.bq, a.q);
      ops::linear_forward(a.xn1, N, H, W.wk, kvd, W.bk, a.k);
      ops::linear_forward(a.xn1, N, H, W.wv, kvd, W.bv, a.v);
      ops::rope(a.q, N, c.num_attention_heads, d, b.positions.data(), cos_.data(), sin_.data());
      ops::rope(a.k, N, c.num_key_value_heads, d, b.positions.data(), cos_.data(), sin_.data());
      ops::attention_forward(a.q, a.k, a.v, dims_, allowed_.data(), scale_, a.att, a.lse, attn_scratch_);
      std::copy_n(a.x, N * H, a.x_mid);
      ops::linear_forward(a.att, N, qd, W.wo, H, static_cast<const T*>(nullptr), a.x_mid, true);
      ops::rmsnorm_forward(a.x_mid, N, H, W.post_norm, eps, a.xn2, a.rstd2);
      ops::linear_forward(a.xn2, N, H, W.w_gate, I, static_cast<const T*>(nullptr), a.gate);
      ops::linear_forward(a.xn2, N, H, W.w_up, I, static_cast<const T*>(nullptr), a.up);
      ops::swiglu_forward(a.gate, a.up, N * I, a.h);
      T* next = l + 1 < acts_.size() ? acts_[l + 1].x : x_final_;
      std::copy_n(a.x_mid, N * H, next);
      ops::linear_forward(a.h, N, I, W.w_down, H, static_cast<const T*>(nullptr), next, true);
    }
    ops::rmsnorm_forward(x_final_, N, H, final_norm(params_.data()), eps, xn_final_, rstd_final_);
  }

  //! Gathers the target rows, computes the summed loss chunk by chunk and, with `backward`, the
  //! gradient of `weight` times it for the final normed hidden states (into dxn_) and the lm_head.
  double loss_and_head_backward(const ModelBatch& b, T weight, bool backward) {
    const int H = config_.hidden_size, V = config_.vocab_size;
    const auto n = std::int64_t(b.targets.size());
    for (std::int64_t i = 0; i < n; ++i) {
      std::copy_n(xn_final_ + b.targets[std::size_t(i)].index * H, H, gathered_ + i * H);
      labels_[std::size_t(i)] = b.targets[std::size_t(i)].label;
    }
    double loss = 0.0;
    for (std::int64_t i0 = 0; i0 < n; i0 += kHeadChunk) {
      const std::int64_t m = std::min(kHeadChunk, n - i0);
      loss += ops::cross_entropy_head(gathered_ + i0 * H, m, H, head(params_.data()), V, labels_.data() + i0, weight,
                                      logits_, backward ? dgathered_ + i0 * H : nullptr,
                                      backward ? head(grads_.data()) : nullptr);
    }
    if (backward) {
      const std::int64_t N = std::int64_t(b.rows) * b.length;
      std::fill_n(dxn_, N * H, T(0));
      for (std::int64_t i = 0; i < n; ++i) {
        T* dst = dxn_ + b.targets[std::size_t(i)].index * H;
        const T* src = dgathered_ + i * H;
        for (int j = 0; j < H; ++j) dst[j] += src[j];
      }
    }
    return loss;
  }

  void backward_body(const ModelBatch& b) {
    const auto& c = config_;
    const std::int64_t N = std::int64_t(b.rows) * b.length;
    const int H = c.hidden_size, I = c.intermediate_size, qd = c.q_dim(), kvd = c.kv_dim(), d = c.head_dim();
    std::fill_n(dx_, N * H, T(0));
    ops::rmsnorm_backward(dxn_, x_final_, rstd_final_, N, H, final_norm(params_.data()), dx_, final_norm(grads_.data()),
                          dnorm_scratch_, threads_);
    for (std::size_t l = acts_.size(); l-- > 0;) {
      auto& a = acts_[l];
      auto& W = layers_[l];
      auto& G = glayers_[l];
      // MLP branch: x_next = x_mid + down(swiglu(gate(xn2), up(xn2))); dx_ holds d x_next.
      ops::linear_backward(dx_, a.h, N, I, W.w_down, H, dh_, G.w_down, static_cast<T*>(nullptr));
      ops::swiglu_backward(dh_, a.gate, a.up, N * I, dgate_, dup_);
      ops::linear_backward(dgate_, a.xn2, N, H, W.w_gate, I, dxn_, G.w_gate, static_cast<T*>(nullptr));
      ops::linear_backward(dup_, a.xn2, N, H, W.w_up, I, dxn_, G.w_up, static_cast<T*>(nullptr), true);
      ops::rmsnorm_backward(dxn_, a.x_mid, a.rstd2, N, H, W.post_norm, dx_, G.post_norm, dnorm_scratch_, threads_);
      // Attention branch: x_mid = x + o(attention(rope(q), rope(k), v)); dx_ now holds d x_mid.
      ops::linear_backward(dx_, a.att, N, qd, W.wo, H, datt_, G.wo, static_cast<T*>(nullptr));
      ops::attention_backward(datt_, a.q, a.k, a.v, a.att, a.lse, dims_, allowed_.data(), scale_, dq_, dk_, dv_,
                              attn_scratch_);
      ops::rope(dq_, N, c.num_attention_heads, d, b.positions.data(), cos_.data(), sin_.data(), /*inverse=*/true);
      ops::rope(dk_, N, c.num_key_value_heads, d, b.positions.data(), cos_.data(), sin_.data(), /*inverse=*/true);
      ops::linear_backward(dq_, a.xn1, N, H, W.wq, qd, dxn_, G.wq, G.bq);
      ops::linear_backward(dk_, a.xn1, N, H, W.wk, kvd, dxn_, G.wk, G.bk, true);
      ops::linear_backward(dv_, a.xn1, N, H, W.wv, kvd, dxn_, G.wv, G.bv, true);
      ops::rmsnorm_backward(dxn_, a.x, a.rstd1, N, H, W.input_norm, dx_, G.input_norm, dnorm_scratch_, threads_);
    }
    ops::embedding_backward(dx_, b.tokens.data(), N, H, embed(grads_.data()));
  }

  io::ModelConfig config_;
  std::vector<TensorInfo> tensors_;
  Buffer<T> params_, grads_, arena_;
  std::vector<LayerRefs> layers_, glayers_;
  std::vector<Activations> acts_;
  T *x_final_ = nullptr, *xn_final_ = nullptr, *rstd_final_ = nullptr, *gathered_ = nullptr, *dgathered_ = nullptr,
    *logits_ = nullptr, *dx_ = nullptr, *dxn_ = nullptr, *dq_ = nullptr, *dk_ = nullptr, *dv_ = nullptr,
    *datt_ = nullptr, *dgate_ = nullptr, *dup_ = nullptr, *dh_ = nullptr, *dnorm_scratch_ = nullptr,
    *attn_scratch_ = nullptr;
  std::vector<std::pair<T**, std::int64_t>> slots_;  // the arena's layout, reused
  std::vector<unsigned char> allowed_;
  std::vector<int> labels_;
  std::vector<T> cos_, sin_;
  int rope_positions_ = 0, threads_ = 1;
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
