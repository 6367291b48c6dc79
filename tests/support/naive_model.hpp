// A straightforward Qwen2 in double precision with plain loops, written from §1.1 of the notes.
//
// It shares nothing with blockdiff's kernels: only the weights are read from a loaded model. Its
// K/V store is a per-layer map from slot to vectors, so the tests can spell out each cache path
// of §3.3 (append, read-only block, sub-block overwrite) literally.
#pragma once

#include <cmath>
#include <functional>
#include <map>
#include <vector>

#include "blockdiff/model/qwen2.hpp"

namespace blockdiff::test {

class NaiveQwen2 {
 public:
  using Vec = std::vector<double>;
  struct Store {  // per layer: slot -> (k, v), each [kv_heads * head_dim]
    std::vector<std::map<int, std::pair<Vec, Vec>>> layers;
  };

  explicit NaiveQwen2(model::Qwen2<backend::Host>& m) : c_(m.config()) {
    for (auto& p : m.parameters())
      p.visit([&](auto& b) {
        auto& w = w_[p.name];
        for (std::int64_t i = 0; i < b.numel(); ++i) w.push_back(static_cast<double>(to_float(b[i])));
      });
    if (c_.tie_word_embeddings) w_["lm_head.weight"] = w_["model.embed_tokens.weight"];
  }

  Store make_store() const { return Store{std::vector<std::map<int, std::pair<Vec, Vec>>>(c_.num_hidden_layers)}; }

  //! Runs `tokens` at slots first_slot.. (positions = slots); writes their K/V into `store` when
  //! `write`, and attends the store's slots [0, kv_end) (the new tokens' K/V included) under
  //! `allowed(q_slot, k_slot)`. Returns logits [n][vocab].
  std::vector<Vec> forward(const std::vector<int>& tokens, int first_slot, Store& store, int kv_end,
                           const std::function<bool(int, int)>& allowed) const {
    const int H = c_.hidden_size, n = static_cast<int>(tokens.size()), d = c_.head_dim();
    const int nh = c_.num_attention_heads, nkv = c_.num_key_value_heads, I = c_.intermediate_size;
    std::vector<Vec> x(n, Vec(H));
    for (int t = 0; t < n; ++t)
      for (int j = 0; j < H; ++j) x[t][j] = w("model.embed_tokens.weight")[tokens[t] * H + j];
    for (int l = 0; l < c_.num_hidden_layers; ++l) {
      auto name = [&](const char* s) { return model::layer_tensor(l, s); };
      std::vector<Vec> q(n), k(n), v(n);
      for (int t = 0; t < n; ++t) {
        Vec h = rmsnorm(x[t], w(name("input_layernorm.weight")));
        q[t] = linear(h, w(name("self_attn.q_proj.weight")), &w(name("self_attn.q_proj.bias")), nh * d);
        k[t] = linear(h, w(name("self_attn.k_proj.weight")), &w(name("self_attn.k_proj.bias")), nkv * d);
        v[t] = linear(h, w(name("self_attn.v_proj.weight")), &w(name("self_attn.v_proj.bias")), nkv * d);
        rope(q[t], nh, first_slot + t);
        rope(k[t], nkv, first_slot + t);
        store.layers[l][first_slot + t] = {k[t], v[t]};
      }
      for (int t = 0; t < n; ++t) {
        Vec att(nh * d, 0.0);
        const int qs = first_slot + t;
        for (int h = 0; h < nh; ++h) {
          const int g = h / (nh / nkv);
          std::vector<double> s;
          std::vector<int> keys;
          for (int ks = 0; ks < kv_end; ++ks) {
            if (!allowed(qs, ks)) continue;
            const auto& kv = store.layers[l].at(ks);
            double dot = 0;
            for (int i = 0; i < d; ++i) dot += q[t][h * d + i] * kv.first[g * d + i];
            s.push_back(dot / std::sqrt(static_cast<double>(d)));
            keys.push_back(ks);
          }
          double mx = -1e300, sum = 0;
          for (double e : s) mx = std::max(mx, e);
          for (double& e : s) sum += e = std::exp(e - mx);
          for (std::size_t j = 0; j < s.size(); ++j)
            for (int i = 0; i < d; ++i) att[h * d + i] += s[j] / sum * store.layers[l].at(keys[j]).second[g * d + i];
        }
        Vec o = linear(att, w(name("self_attn.o_proj.weight")), nullptr, H);
        for (int j = 0; j < H; ++j) x[t][j] += o[j];
        Vec h2 = rmsnorm(x[t], w(name("post_attention_layernorm.weight")));
        Vec gate = linear(h2, w(name("mlp.gate_proj.weight")), nullptr, I);
        Vec up = linear(h2, w(name("mlp.up_proj.weight")), nullptr, I);
        for (int i = 0; i < I; ++i) gate[i] = gate[i] / (1.0 + std::exp(-gate[i])) * up[i];
        Vec down = linear(gate, w(name("mlp.down_proj.weight")), nullptr, H);
        for (int j = 0; j < H; ++j) x[t][j] += down[j];
      }
    }
    std::vector<Vec> logits(n);
    for (int t = 0; t < n; ++t)
      logits[t] = linear(rmsnorm(x[t], w("model.norm.weight")), w("lm_head.weight"), nullptr, c_.vocab_size);
    return logits;
  }

  //! The whole sequence from slot 0 with a fresh store.
  std::vector<Vec> forward(const std::vector<int>& tokens, const std::function<bool(int, int)>& allowed) const {
    Store s = make_store();
    return forward(tokens, 0, s, static_cast<int>(tokens.size()), allowed);
  }

 private:
  const std::vector<double>& w(const std::string& n) const { return w_.at(n); }
  Vec rmsnorm(const Vec& x, const Vec& g) const {
    double ss = 0;
    for (double e : x) ss += e * e;
    const double inv = 1.0 / std::sqrt(ss / static_cast<double>(x.size()) + c_.rms_norm_eps);
    Vec y(x.size());
    for (std::size_t i = 0; i < x.size(); ++i) y[i] = x[i] * inv * g[i];
    return y;
  }
  static Vec linear(const Vec& x, const Vec& W, const Vec* b, int out) {
    const std::size_t in = x.size();
    Vec y(static_cast<std::size_t>(out));
    for (int o = 0; o < out; ++o) {
      double s = b ? (*b)[o] : 0.0;
      for (std::size_t i = 0; i < in; ++i) s += W[o * in + i] * x[i];
      y[o] = s;
    }
    return y;
  }
  void rope(Vec& x, int heads, int pos) const {
    const int d = c_.head_dim(), half = d / 2;
    for (int h = 0; h < heads; ++h)
      for (int i = 0; i < half; ++i) {
        const double f = std::pow(c_.rope_theta, -2.0 * i / d) * pos;
        const double a = x[h * d + i], b = x[h * d + i + half];
        x[h * d + i] = a * std::cos(f) - b * std::sin(f);
        x[h * d + i + half] = b * std::cos(f) + a * std::sin(f);
      }
  }

  io::ModelConfig c_;
  std::map<std::string, std::vector<double>> w_;
};

}  // namespace blockdiff::test
