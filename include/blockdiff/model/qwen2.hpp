// The Qwen2 decoder (§1.1 of the notes): the architecture of Qwen2.5 and of Fast-dLLM v2.
//
// Pre-norm RMSNorm, attention with q/k/v bias and GQA, residual; RMSNorm, SwiGLU MLP, residual;
// final RMSNorm; lm_head (tied to the embedding or not). RoPE is the non-interleaved half
// rotation with inv_freq = theta^(-2i/d), angles and cos/sin in f32 as Hugging Face computes
// them. Arithmetic is f32. Weight matrices are held in f32, or, chosen when the model is made or
// loaded, in BF16: half the memory, and half the bytes each decoding step streams (a BF16
// checkpoint loads exactly; an f32 one is rounded to nearest even). Norms and biases are f32.
//
// One `forward` serves every path of AR and block-diffusion decoding: a batch of rows, each a
// run of tokens written into its own cache at `first_slot`, attending cache slots [0, kv_end)
// under the mask type, optionally advancing the committed length, and asking for logits only
// on the rows it needs (the lm_head is the largest GEMM of a small model).
//
// A model runs one forward at a time: `forward` writes the model's own workspaces, and the logits
// it returns live there until the next one. To decode many prompts at once, give them to one
// `generate` (or one `forward`) as a batch, which serves them all with each forward; a thread
// of its own needs a model of its own.
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <span>
#include <string>
#include <tuple>
#include <type_traits>
#include <variant>
#include <vector>

#include "blockdiff/backend/host.hpp"
#include "blockdiff/backend/kernel.hpp"
#include "blockdiff/core/error.hpp"
#include "blockdiff/io/checkpoint.hpp"
#include "blockdiff/model/kv_cache.hpp"
#include "blockdiff/backend/mask.hpp"

namespace blockdiff::model {

//! One row of a batched forward.
template <class Backend>
struct ForwardRow {
  std::span<const int> tokens;     //!< the tokens run through the model
  int first_slot = 0;              //!< cache slot of tokens[0]; also its RoPE position
  int kv_end = -1;                 //!< attend cache slots [0, kv_end); -1 means first_slot + n
  bool advance = false;            //!< afterwards, committed length = first_slot + n
  int logits_begin = 0;            //!< logits for tokens [logits_begin, logits_end) of this row
  int logits_end = -1;             //!< -1 means n (all rows); logits_begin == logits_end means none
  std::span<const int> positions;  //!< RoPE positions; empty means position = slot
  KvCache<Backend>* cache = nullptr;
};

//! One address per mask type, so that a recorded forward's key names its mask.
template <class Mask>
inline constexpr char mask_tag = 0;

//! Names of a layer's tensors in a Hugging Face checkpoint.
inline std::string layer_tensor(int layer, const char* suffix) {
  return "model.layers." + std::to_string(layer) + "." + suffix;
}

template <class Backend>
class Qwen2 {
 public:
  using backend_type = Backend;
  template <class T>
  using buffer = typename Backend::template buffer<T>;

  //! A weight matrix in the model's weight dtype.
  using Matrix = std::variant<buffer<float>, buffer<bf16>>;

  struct Layer {
    buffer<float> input_norm, post_norm;  // [H]
    Matrix wq, wk, wv;                    // [qd, H], [kvd, H], [kvd, H]
    buffer<float> bq, bk, bv;             // [qd], [kvd], [kvd]
    Matrix wo;                            // [H, qd]
    Matrix w_gate, w_up, w_down;          // [I, H], [I, H], [H, I]
  };

  //! A parameter's Hugging Face name and shape.
  struct ParameterSpec {
    std::string name;
    std::vector<std::int64_t> shape;
  };
  //! A parameter's name, shape and storage (f32, or BF16 for a matrix of a BF16-weight model).
  struct Parameter {
    std::string name;
    std::vector<std::int64_t> shape;
    std::variant<buffer<float>*, buffer<bf16>*> storage;

    DType dtype() const { return storage.index() == 0 ? DType::f32 : DType::bf16; }
    std::int64_t numel() const {
      return std::visit([](auto* b) { return b->numel(); }, storage);
    }
    //! The f32 storage: every parameter of an f32 model, and the norms and biases of a BF16 one.
    buffer<float>& f32() const {
      require(storage.index() == 0, "parameter \"", name, "\" is held in BF16, not f32");
      return *std::get<0>(storage);
    }
    //! f(buffer) with the storage in its own type.
    template <class F>
    decltype(auto) visit(F&& f) const {
      return std::visit([&](auto* b) -> decltype(auto) { return f(*b); }, storage);
    }
  };

  //! A model of `config` with zeroed weights, matrices held in `weights` (f32 or BF16).
  explicit Qwen2(io::ModelConfig config, DType weights = DType::f32) : config_(std::move(config)), weights_(weights) {
    config_.validate("Qwen2");
    require(weights == DType::f32 || weights == DType::bf16, "Qwen2: weights are held in F32 or BF16, not ",
            name_of(weights));
    const std::int64_t h = config_.hidden_size, v = config_.vocab_size, i = config_.intermediate_size;
    const std::int64_t qd = config_.q_dim(), kvd = config_.kv_dim();
    embed_ = matrix(v, h);
    final_norm_.resize({h});
    if (!config_.tie_word_embeddings) lm_head_ = matrix(v, h);
    layers_.resize(static_cast<std::size_t>(config_.num_hidden_layers));
    for (auto& l : layers_) {
      l.input_norm.resize({h});
      l.post_norm.resize({h});
      l.wq = matrix(qd, h);
      l.bq.resize({qd});
      l.wk = matrix(kvd, h);
      l.bk.resize({kvd});
      l.wv = matrix(kvd, h);
      l.bv.resize({kvd});
      l.wo = matrix(h, qd);
      l.w_gate = matrix(i, h);
      l.w_up = matrix(i, h);
      l.w_down = matrix(h, i);
    }
  }

  //! Loads a checkpoint folder one shard at a time, each tensor converted into the model's
  //! storage (`weights`: f32, or BF16 matrices). On the host a BF16 matrix loaded into BF16 is
  //! not copied: the model uses it in place in the shard's private mapping, which it keeps open
  //! (writing to such a weight copies that page; the file never changes). The checkpoint's files
  //! must then not be changed while the model lives. Other backends convert each tensor on the
  //! host and upload it.
  static Qwen2 load(const std::filesystem::path& dir, DType weights = DType::f32) {
    io::Checkpoint ckpt(dir);
    Qwen2 model(ckpt.config(), weights);
    auto params = model.parameters();
    std::vector<bool> filled(params.size(), false);
    std::tuple<std::vector<float>, std::vector<bf16>> staging;  // one tensor at a time, for device backends
    constexpr bool host = std::is_same_v<Backend, backend::Host>;
    const bool in_place = host && weights == DType::bf16;
    ckpt.for_each_shard(in_place, [&](const std::shared_ptr<io::SafetensorsFile>& file) {
      for (const auto& e : file->entries()) {
        auto it = std::find_if(params.begin(), params.end(), [&](const Parameter& p) { return p.name == e.name; });
        if (it == params.end()) {
          // An lm_head beside a tied config is ignored, as transformers does; anything else unknown is an error.
          require(e.name == "lm_head.weight", file->path(), ": unexpected tensor \"", e.name, "\" for a Qwen2 model");
          continue;
        }
        require(e.shape == it->shape, file->path(), ": tensor \"", e.name, "\" has shape ", e.shape_str(),
                " but config.json implies ", shape_text(it->shape));
        require(e.dtype == DType::f32 || e.dtype == DType::bf16 || e.dtype == DType::f16, file->path(), ": tensor \"",
                e.name, "\" has dtype ", name_of(e.dtype), "; weights must be F32, BF16 or F16");
        filled[static_cast<std::size_t>(it - params.begin())] = true;
        if constexpr (host) {
          if (in_place && e.dtype == DType::bf16 && it->dtype() == DType::bf16 &&
              reinterpret_cast<std::uintptr_t>(e.bytes.data()) % alignof(bf16) == 0) {
            auto* data = reinterpret_cast<bf16*>(const_cast<std::byte*>(e.bytes.data()));  // private, writable
            *std::get<1>(it->storage) = buffer<bf16>::borrow(data, Shape{it->shape[0], it->shape[1]}, file);
            continue;
          }
          it->visit([&](auto& b) { convert_to(e.dtype, e.bytes.data(), b.data(), static_cast<std::size_t>(e.numel())); });
        } else {
          it->visit([&]<class T>(buffer<T>& b) {
            auto& host_copy = std::get<std::vector<T>>(staging);
            host_copy.resize(static_cast<std::size_t>(e.numel()));
            convert_to(e.dtype, e.bytes.data(), host_copy.data(), host_copy.size());
            Backend::upload(b.data(), host_copy.data(), host_copy.size());
          });
        }
        file->release(e);
      }
    });
    for (std::size_t p = 0; p < params.size(); ++p)
      require(filled[p], dir.string(), ": missing tensor \"", params[p].name, "\"",
              params[p].name == "lm_head.weight" ? " (config.json says tie_word_embeddings is false)" : "");
    return model;
  }

  const io::ModelConfig& config() const { return config_; }
  int vocab_size() const { return config_.vocab_size; }
  //! The dtype the weight matrices are held in (f32 or BF16).
  DType weight_dtype() const { return weights_; }

  //! Names and shapes of every parameter of `config`, in checkpoint order (no allocation).
  static std::vector<ParameterSpec> parameter_specs(const io::ModelConfig& c) {
    std::vector<ParameterSpec> p;
    const std::int64_t h = c.hidden_size, v = c.vocab_size, i = c.intermediate_size;
    const std::int64_t qd = c.q_dim(), kvd = c.kv_dim();
    p.push_back({"model.embed_tokens.weight", {v, h}});
    for (int l = 0; l < c.num_hidden_layers; ++l) {
      p.push_back({layer_tensor(l, "input_layernorm.weight"), {h}});
      p.push_back({layer_tensor(l, "self_attn.q_proj.weight"), {qd, h}});
      p.push_back({layer_tensor(l, "self_attn.q_proj.bias"), {qd}});
      p.push_back({layer_tensor(l, "self_attn.k_proj.weight"), {kvd, h}});
      p.push_back({layer_tensor(l, "self_attn.k_proj.bias"), {kvd}});
      p.push_back({layer_tensor(l, "self_attn.v_proj.weight"), {kvd, h}});
      p.push_back({layer_tensor(l, "self_attn.v_proj.bias"), {kvd}});
      p.push_back({layer_tensor(l, "self_attn.o_proj.weight"), {h, qd}});
      p.push_back({layer_tensor(l, "post_attention_layernorm.weight"), {h}});
      p.push_back({layer_tensor(l, "mlp.gate_proj.weight"), {i, h}});
      p.push_back({layer_tensor(l, "mlp.up_proj.weight"), {i, h}});
      p.push_back({layer_tensor(l, "mlp.down_proj.weight"), {h, i}});
    }
    p.push_back({"model.norm.weight", {h}});
    if (!c.tie_word_embeddings) p.push_back({"lm_head.weight", {v, h}});
    return p;
  }

  //! Every parameter with its name, shape and storage, in checkpoint order.
  std::vector<Parameter> parameters() {
    std::vector<Parameter> p;
    auto specs = parameter_specs(config_);
    using Storage = std::variant<buffer<float>*, buffer<bf16>*>;
    auto of = [](Matrix& m) { return std::visit([](auto& b) -> Storage { return &b; }, m); };
    std::vector<Storage> storage{of(embed_)};
    for (auto& L : layers_) {
      for (Storage s : {Storage(&L.input_norm), of(L.wq), Storage(&L.bq), of(L.wk), Storage(&L.bk), of(L.wv),
                        Storage(&L.bv), of(L.wo), Storage(&L.post_norm), of(L.w_gate), of(L.w_up), of(L.w_down)})
        storage.push_back(s);
    }
    storage.push_back(&final_norm_);
    if (!config_.tie_word_embeddings) storage.push_back(of(lm_head_));
    for (std::size_t k = 0; k < specs.size(); ++k) p.push_back({specs[k].name, specs[k].shape, storage[k]});
    return p;
  }

  //! A cache for one sequence of up to `capacity` tokens.
  KvCache<Backend> make_cache(int capacity) const {
    if (capacity > config_.context()) fail("cache capacity ", capacity, " exceeds ", config_.describe_context());
    return KvCache<Backend>(config_, capacity);
  }

  //! Bytes of weights held in memory.
  std::size_t weight_bytes() const {
    auto of = [](const Matrix& m) { return std::visit([](auto& b) { return b.bytes(); }, m); };
    std::size_t n = of(embed_) + final_norm_.bytes() + of(lm_head_);
    for (auto& l : layers_)
      n += l.input_norm.bytes() + l.post_norm.bytes() + of(l.wq) + l.bq.bytes() + of(l.wk) + l.bk.bytes() + of(l.wv) +
           l.bv.bytes() + of(l.wo) + of(l.w_gate) + of(l.w_up) + of(l.w_down);
    return n;
  }

  //! Runs `rows` through the model under `mask`; returns logits [sum of requested rows, vocab],
  //! row r's logits starting at `logit_offset(r)`.
  template <class Mask>
  TensorView<const float> forward(std::span<ForwardRow<Backend>> rows, const Mask& mask = Mask{}) {
    const auto& c = config_;
    const int H = c.hidden_size, I = c.intermediate_size, qd = c.q_dim(), kvd = c.kv_dim(), d = c.head_dim();
    // Validate and lay the rows out one after another.
    std::int64_t T = 0, n_logits = 0;
    int max_position = 0, max_queries = 0, max_keys = 0;
    row_begin_.assign(rows.size() + 1, 0);
    logit_begin_.assign(rows.size() + 1, 0);
    for (std::size_t r = 0; r < rows.size(); ++r) {
      auto& row = rows[r];
      const int n = static_cast<int>(row.tokens.size());
      require(row.cache != nullptr, "forward: row ", r, " has no cache");
      if (row.kv_end < 0) row.kv_end = row.first_slot + n;
      if (row.logits_end < 0) row.logits_end = n;
      require(row.first_slot >= 0 && row.first_slot + n <= row.kv_end && row.kv_end <= row.cache->capacity(),
              "forward: row ", r, " writes slots [", row.first_slot, ", ", row.first_slot + n, ") and attends [0, ",
              row.kv_end, ") of a cache with capacity ", row.cache->capacity());
      require(0 <= row.logits_begin && row.logits_begin <= row.logits_end && row.logits_end <= n, "forward: row ", r,
              " asks for logits [", row.logits_begin, ", ", row.logits_end, ") of ", n, " tokens");
      require(row.positions.empty() || static_cast<int>(row.positions.size()) == n, "forward: row ", r, " has ",
              row.positions.size(), " positions for ", n, " tokens");
      for (int t : row.tokens)
        require(t >= 0 && t < c.vocab_size, "token id ", t, " is outside the vocabulary [0, ", c.vocab_size, ")");
      T += n;
      n_logits += row.logits_end - row.logits_begin;
      max_queries = std::max(max_queries, n);
      max_keys = std::max(max_keys, row.cache->capacity());
      row_begin_[r + 1] = T;
      logit_begin_[r + 1] = n_logits;
    }
    positions_.resize(static_cast<std::size_t>(T));
    tokens_.resize(static_cast<std::size_t>(T));
    const int context = c.context();
    for (std::size_t r = 0; r < rows.size(); ++r) {
      const auto& row = rows[r];
      std::copy(row.tokens.begin(), row.tokens.end(), tokens_.begin() + row_begin_[r]);
      for (std::size_t t = 0; t < row.tokens.size(); ++t) {
        const int p = row.positions.empty() ? row.first_slot + static_cast<int>(t) : row.positions[t];
        if (p < 0 || p >= context) fail("position ", p, " is beyond ", c.describe_context());
        positions_[static_cast<std::size_t>(row_begin_[r]) + t] = p;
        max_position = std::max(max_position, p);
      }
    }
    ensure_rope(max_position + 1);

    // Every workspace at its final size, so that the pointers below are the ones the kernels get.
    x_.resize({T, H});
    xn_.resize({T, H});
    q_.resize({T, qd});
    k_.resize({T, kvd});
    v_.resize({T, kvd});
    att_.resize({T, qd});
    gate_.resize({T, I});
    up_.resize({T, I});
    ids_.resize({T});
    pos_.resize({T});
    hidden_out_.resize({n_logits, H});
    logits_.resize({n_logits, c.vocab_size});

    // What changes from step to step goes to backend memory in three uploads: token ids,
    // positions, and every layer's attention rows (queries, cache slots, cache pointers).
    // The last layer's output matters only at the rows whose logits are asked for: when they are
    // fewer than all (a prefill, a commit forward, a block forward), that layer still writes every
    // token's K and V, but runs attention, o_proj and the MLP on those rows alone. Their queries
    // are R more attention rows after the layers' own.
    const int L = c.num_hidden_layers, R = static_cast<int>(rows.size());
    const bool narrow_last = n_logits < T;
    int max_logit_queries = 0;
    attention_rows_.resize(static_cast<std::size_t>(L + 1) * rows.size());
    for (int r = 0; r < R; ++r) {
      auto& row = rows[static_cast<std::size_t>(r)];
      const std::int64_t begin = row_begin_[static_cast<std::size_t>(r)];
      for (int l = 0; l < L; ++l)
        attention_rows_[static_cast<std::size_t>(l * R + r)] =
            AttentionRow{begin, static_cast<int>(row.tokens.size()), row.first_slot, row.kv_end,
                         row.cache->k(l), row.cache->v(l), row.cache->capacity()};
      const int n_q = row.logits_end - row.logits_begin;
      max_logit_queries = std::max(max_logit_queries, n_q);
      attention_rows_[static_cast<std::size_t>(L * R + r)] =
          AttentionRow{begin + row.logits_begin, n_q, row.first_slot + row.logits_begin, row.kv_end,
                       row.cache->k(L - 1), row.cache->v(L - 1), row.cache->capacity()};
    }
    rows_.resize({static_cast<std::int64_t>(attention_rows_.size())});
    Backend::upload(ids_.data(), tokens_.data(), tokens_.size());
    Backend::upload(pos_.data(), positions_.data(), positions_.size());
    Backend::upload(rows_.data(), attention_rows_.data(), attention_rows_.size());

    const AttentionShape shape{c.num_attention_heads, c.num_key_value_heads, d,
                               1.0f / std::sqrt(static_cast<float>(d)), max_queries, max_keys};
    AttentionShape logit_shape = shape;
    logit_shape.max_queries = max_logit_queries;
    const float eps = static_cast<float>(c.rms_norm_eps);
    // The kernel sequence depends on nothing else than this key: the shapes, the row layout,
    // the mask, and the workspace pointers (the weights keep theirs for the model's life). It is
    // made only for a backend that records (the host runs the sequence as it is).
    const auto key = [&]() -> std::span<const std::int64_t> {
      replay_key_.assign({T, n_logits, R, max_queries, max_keys, rope_positions_});
      for (int r = 0; r < R; ++r) {
        replay_key_.push_back(row_begin_[static_cast<std::size_t>(r)]);
        replay_key_.push_back(rows[static_cast<std::size_t>(r)].logits_begin);
        replay_key_.push_back(rows[static_cast<std::size_t>(r)].logits_end);
      }
      auto address = [](const auto& b) { return static_cast<std::int64_t>(reinterpret_cast<std::uintptr_t>(b.data())); };
      for (std::int64_t a : {address(x_), address(xn_), address(q_), address(k_), address(v_), address(att_),
                             address(gate_), address(up_), address(ids_), address(pos_), address(rows_),
                             address(hidden_out_), address(logits_), address(cos_), address(sin_)})
        replay_key_.push_back(a);
      replay_key_.push_back(static_cast<std::int64_t>(reinterpret_cast<std::uintptr_t>(&mask_tag<Mask>)));
      if constexpr (!std::is_empty_v<Mask>) {  // a mask with state (the training mask's length)
        static_assert(std::is_trivially_copyable_v<Mask>);
        std::array<std::int64_t, (sizeof(Mask) + 7) / 8> words{};
        std::memcpy(words.data(), &mask, sizeof(Mask));
        replay_key_.insert(replay_key_.end(), words.begin(), words.end());
      }
      return replay_key_;
    };
    replay_.run(key, [&] {
      std::visit([&](auto& e) { Kernel<Backend, op::Embedding>::run(e.data(), ids_.data(), T, H, x_.data()); }, embed_);
      for (int l = 0; l < L; ++l) {
        auto& Lw = layers_[static_cast<std::size_t>(l)];
        const std::span<const AttentionRow> layer_rows(rows_.data() + static_cast<std::int64_t>(l) * R,
                                                       static_cast<std::size_t>(R));
        std::visit(
            [&]<class W>(const buffer<W>& wq) {
              const LinearOut<W> qkv[] = {{wq.data(), qd, Lw.bq.data(), q_.data()},
                                          {std::get<buffer<W>>(Lw.wk).data(), kvd, Lw.bk.data(), k_.data()},
                                          {std::get<buffer<W>>(Lw.wv).data(), kvd, Lw.bv.data(), v_.data()}};
              Kernel<Backend, op::Linears>::run(x_.data(), T, H, std::span<const LinearOut<W>>(qkv),
                                                norm(Lw.input_norm, eps));
            },
            Lw.wq);
        Kernel<Backend, op::RopeKvWrite>::run(q_.data(), k_.data(), v_.data(), T, pos_.data(), cos_.data(), sin_.data(),
                                              layer_rows, shape);
        if (l < L - 1 || !narrow_last) {
          Kernel<Backend, op::Attention<Mask>>::run(q_.data(), att_.data(), layer_rows, shape, mask);
          attention_out_and_mlp(Lw, att_.data(), T, x_.data(), eps);
          continue;
        }
        if (n_logits == 0) break;  // the last layer's K and V were all that was needed
        const std::span<const AttentionRow> logit_rows(rows_.data() + static_cast<std::int64_t>(L) * R,
                                                       static_cast<std::size_t>(R));
        Kernel<Backend, op::Attention<Mask>>::run(q_.data(), att_.data(), logit_rows, logit_shape, mask);
        // The asked-for rows, packed: their attention output over q (no longer needed) and their
        // residual stream in hidden_out_, where the final norm reads it.
        for (int r = 0; r < R; ++r) {
          const auto& row = rows[static_cast<std::size_t>(r)];
          const std::int64_t from = row_begin_[static_cast<std::size_t>(r)] + row.logits_begin;
          const std::int64_t to = logit_begin_[static_cast<std::size_t>(r)], n = row.logits_end - row.logits_begin;
          Backend::copy(q_.data() + to * qd, att_.data() + from * qd, static_cast<std::size_t>(n * qd));
          Backend::copy(hidden_out_.data() + to * H, x_.data() + from * H, static_cast<std::size_t>(n * H));
        }
        attention_out_and_mlp(Lw, q_.data(), n_logits, hidden_out_.data(), eps);
      }
      // Final norm and lm_head on the requested rows only (already packed by a narrow last layer).
      if (!narrow_last) Backend::copy(hidden_out_.data(), x_.data(), static_cast<std::size_t>(T * H));
      std::visit(
          [&]<class W>(const buffer<W>& head) {
            const LinearOut<W> out[] = {{head.data(), c.vocab_size, nullptr, logits_.data()}};
            Kernel<Backend, op::Linears>::run(hidden_out_.data(), n_logits, H, std::span<const LinearOut<W>>(out),
                                              norm(final_norm_, eps));
          },
          c.tie_word_embeddings ? embed_ : lm_head_);
    });
    for (auto& row : rows)
      if (row.advance) row.cache->set_committed(row.first_slot + static_cast<int>(row.tokens.size()));
    return logits_.view();
  }

  //! How the backend runs a forward's kernels: on CUDA, the recorded graphs and their launch count.
  const typename Backend::Replay& replays() const { return replay_; }

  //! First logit row of batch row `r` in the last forward's output.
  std::int64_t logit_offset(std::size_t r) const { return logit_begin_[r]; }

 private:
  Matrix matrix(std::int64_t rows, std::int64_t cols) const {
    Matrix m;
    if (weights_ == DType::bf16) m.template emplace<buffer<bf16>>();
    std::visit([&](auto& b) { b.resize({rows, cols}); }, m);
    return m;
  }

  //! A layer after its attention, on n rows: x += att · woᵀ, then x += MLP(RMSNorm(x)).
  void attention_out_and_mlp(const Layer& Lw, const float* att, std::int64_t n, float* x, float eps) {
    const auto& c = config_;
    const int H = c.hidden_size, I = c.intermediate_size;
    linear(att, n, c.q_dim(), Lw.wo, H, nullptr, x, /*accumulate=*/true);
    std::visit(
        [&]<class W>(const buffer<W>& wg) {
          Kernel<Backend, op::SwiGluLinear>::run(x, n, H, wg.data(), std::get<buffer<W>>(Lw.w_up).data(), I,
                                                 gate_.data(), up_.data(), norm(Lw.post_norm, eps));
        },
        Lw.w_gate);
    linear(gate_.data(), n, I, Lw.w_down, H, nullptr, x, /*accumulate=*/true);
  }

  //! The RMSNorm (weight, eps) of a product's input; a backend that does not fold it into the
  //! product writes the normalised rows to xn_.
  InputNorm norm(const buffer<float>& weight, float eps) { return {weight.data(), eps, xn_.data()}; }

  //! y = x · wᵀ (+ bias) with w in whichever dtype it is held.
  static void linear(const float* x, std::int64_t n, int k, const Matrix& w, int m, const float* bias, float* y,
                     bool accumulate = false) {
    std::visit([&](auto& b) { Kernel<Backend, op::Linear>::run(x, n, k, b.data(), m, bias, y, accumulate); }, w);
  }

  //! cos/sin of position x inv_freq for positions [0, n), computed in f32 like transformers.
  void ensure_rope(int n) {
    if (n <= rope_positions_) return;
    const int half = config_.head_dim() / 2;
    const int grow = std::max(n, std::min(config_.context(), std::max(2 * rope_positions_, 256)));
    std::vector<float> cos_host(static_cast<std::size_t>(grow) * half), sin_host(cos_host.size());
    std::vector<float> inv_freq(static_cast<std::size_t>(half));
    for (int i = 0; i < half; ++i)
      inv_freq[static_cast<std::size_t>(i)] = static_cast<float>(
          1.0 / std::pow(config_.rope_theta, static_cast<double>(2 * i) / config_.head_dim()));
    for (int p = 0; p < grow; ++p)
      for (int i = 0; i < half; ++i) {
        const float angle = static_cast<float>(p) * inv_freq[static_cast<std::size_t>(i)];
        cos_host[static_cast<std::size_t>(p) * half + i] = std::cos(angle);
        sin_host[static_cast<std::size_t>(p) * half + i] = std::sin(angle);
      }
    cos_.resize({grow, half});
    sin_.resize({grow, half});
    Backend::upload(cos_.data(), cos_host.data(), cos_host.size());
    Backend::upload(sin_.data(), sin_host.data(), sin_host.size());
    rope_positions_ = grow;
  }

  io::ModelConfig config_;
  DType weights_ = DType::f32;
  Matrix embed_, lm_head_;
  buffer<float> final_norm_;
  std::vector<Layer> layers_;
  // Workspace, grown on demand and reused by every forward.
  buffer<float> x_, xn_, q_, k_, v_, att_, gate_, up_, hidden_out_, logits_, cos_, sin_;
  buffer<int> ids_, pos_;
  std::vector<int> positions_, tokens_;
  std::vector<std::int64_t> row_begin_, logit_begin_;
  std::vector<AttentionRow> attention_rows_;  // [layer][row], uploaded into rows_ by each forward
  buffer<AttentionRow> rows_;
  std::vector<std::int64_t> replay_key_;
  typename Backend::Replay replay_;
  int rope_positions_ = 0;
};

}  // namespace blockdiff::model
