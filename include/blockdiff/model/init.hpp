// Randomly initialised checkpoints of a named shape, for tests, demos and benchmarks.
//
// `write_random_checkpoint` writes config.json and model.safetensors (F32, BF16 or F16) straight
// from the generator, tensor by tensor, without building a model first. Weights are normal with
// std 0.02 (as transformers initialises Qwen2), norms are one and biases small; with
// `peaked = true` the embedding is scaled up so that next-token distributions are confident,
// which makes threshold decoding accept several tokens in some steps and one in others.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

#include "blockdiff/core/error.hpp"
#include "blockdiff/core/rng.hpp"
#include "blockdiff/core/threads.hpp"
#include "blockdiff/io/config.hpp"
#include "blockdiff/io/safetensors.hpp"
#include "blockdiff/model/qwen2.hpp"
#include "blockdiff/model/save.hpp"

namespace blockdiff::model {

//! The named shapes of `blockdiff init --preset`.
inline io::ModelConfig preset_config(const std::string& name) {
  io::ModelConfig c;
  c.max_position_embeddings = 32768;
  c.rope_theta = 1e6;
  c.bd_size = 32;
  if (name == "tiny") {
    c.hidden_size = 64, c.intermediate_size = 176, c.num_hidden_layers = 2;
    c.num_attention_heads = 4, c.num_key_value_heads = 2, c.vocab_size = 320;
    c.tie_word_embeddings = true, c.rope_theta = 1e4, c.max_position_embeddings = 4096;
    c.mask_token_id = 319, c.eos_token_id = 318, c.bos_token_id = 317;
  } else if (name == "tasks") {
    // The embedded default model: the character vocabulary of train/tasks.hpp (30 ids, EOS 0,
    // [MASK] 1), trained with block 8.
    c.hidden_size = 128, c.intermediate_size = 384, c.num_hidden_layers = 4;
    c.num_attention_heads = 4, c.num_key_value_heads = 2, c.vocab_size = 30;
    c.tie_word_embeddings = true, c.rope_theta = 1e4, c.max_position_embeddings = 256;
    c.mask_token_id = 1, c.eos_token_id = 0, c.bd_size = 8;
  } else if (name == "qwen2.5-0.5b") {
    c.hidden_size = 896, c.intermediate_size = 4864, c.num_hidden_layers = 24;
    c.num_attention_heads = 14, c.num_key_value_heads = 2, c.vocab_size = 151936;
    c.tie_word_embeddings = true;
    c.mask_token_id = 151665, c.eos_token_id = 151645, c.bos_token_id = 151643;
  } else if (name == "qwen2.5-1.5b") {
    c.hidden_size = 1536, c.intermediate_size = 8960, c.num_hidden_layers = 28;
    c.num_attention_heads = 12, c.num_key_value_heads = 2, c.vocab_size = 151936;
    c.tie_word_embeddings = true;
    c.mask_token_id = 151665, c.eos_token_id = 151645, c.bos_token_id = 151643;
  } else if (name == "qwen2.5-7b") {
    c.hidden_size = 3584, c.intermediate_size = 18944, c.num_hidden_layers = 28;
    c.num_attention_heads = 28, c.num_key_value_heads = 4, c.vocab_size = 152064;
    c.tie_word_embeddings = false;
    c.mask_token_id = 151665, c.eos_token_id = 151645, c.bos_token_id = 151643;
  } else {
    fail("unknown preset \"", name, "\" (known: tiny, tasks, qwen2.5-0.5b, qwen2.5-1.5b, qwen2.5-7b)");
  }
  return c;
}

namespace detail {
//! values[i] = std · N(0, 1), in chunks of 2^16 values, each drawn by its own generator, seeded
//! from (seed, tensor, chunk), on as many threads as there are, two values a Box-Muller draw: the
//! values are the same whatever the thread count. (One stream of normal() took about 24 ns a
//! value on one core of a 2-core EPYC: 36 s for a 1.5B model.)
inline void fill_normal(std::span<float> values, std::uint64_t seed, std::uint64_t tensor, double std) {
  constexpr std::size_t chunk = std::size_t{1} << 16;
  const auto chunks = static_cast<std::int64_t>((values.size() + chunk - 1) / chunk);
  const std::uint64_t base = Rng(seed).next() ^ (tensor << 40);  // chunks stay below 2^40
  parallel_for(chunks, chunks > 1, [&](std::int64_t c) {
    Rng rng(base ^ static_cast<std::uint64_t>(c));
    const std::size_t begin = static_cast<std::size_t>(c) * chunk, end = std::min(values.size(), begin + chunk);
    std::size_t i = begin;
    for (double a, b; i + 1 < end; i += 2) {
      rng.normal_pair(a, b);
      values[i] = static_cast<float>(a * std);
      values[i + 1] = static_cast<float>(b * std);
    }
    if (i < end) values[i] = static_cast<float>(rng.normal() * std);
  });
}
}  // namespace detail

//! Fills every parameter of `config`, in checkpoint order: `destination(name, shape)` returns the
//! std::span<float> to fill, then `done(name, shape, values)` is called with it.
template <class Destination, class Done>
void generate_random_weights(const io::ModelConfig& config, std::uint64_t seed, bool peaked, Destination&& destination,
                             Done&& done) {
  std::uint64_t tensor = 0;
  for (auto& p : Qwen2<backend::Host>::parameter_specs(config)) {
    std::span<float> values = destination(p.name, p.shape);
    const bool is_norm = p.name.find("norm") != std::string::npos;
    const bool is_bias = p.name.find("bias") != std::string::npos;
    const bool is_embed = p.name == "model.embed_tokens.weight" || p.name == "lm_head.weight";
    const double std = is_bias ? 0.02 : (is_embed && peaked ? 1.0 : 0.02 * (peaked ? 4.0 : 1.0));
    if (is_norm)
      std::fill(values.begin(), values.end(), 1.0f);
    else
      detail::fill_normal(values, seed, tensor, std);
    ++tensor;
    if (is_embed && peaked && config.mask_token_id) {
      // A small [MASK] row: the mask token is never predicted.
      const std::int64_t h = config.hidden_size;
      for (std::int64_t j = 0; j < h; ++j) values[static_cast<std::size_t>(*config.mask_token_id * h + j)] *= 0.01f;
    }
    done(p.name, p.shape, std::span<const float>(values));
  }
}

//! A model of `config` with random weights, matrices held in `weights` (f32: generated in place,
//! with no staging copy on the host; BF16: generated in f32 and rounded to nearest even).
template <class Backend = backend::Host>
Qwen2<Backend> random_model(const io::ModelConfig& config, std::uint64_t seed, bool peaked = true,
                            DType weights = DType::f32) {
  Qwen2<Backend> m(config, weights);
  auto params = m.parameters();
  std::size_t next = 0;
  std::vector<float> staging;
  std::vector<bf16> narrow;
  constexpr bool host = std::is_same_v<Backend, backend::Host>;
  generate_random_weights(
      config, seed, peaked,
      [&](const std::string&, const std::vector<std::int64_t>&) {
        const auto& p = params[next];
        if constexpr (host)
          if (p.dtype() == DType::f32) return p.f32().span();
        staging.resize(static_cast<std::size_t>(p.numel()));
        return std::span<float>(staging);
      },
      [&](const std::string&, const std::vector<std::int64_t>&, std::span<const float> values) {
        const auto& p = params[next++];
        if (p.dtype() == DType::bf16) {
          bf16* stored = std::get<1>(p.storage)->data();
          if constexpr (host) {
            convert_to(DType::f32, values.data(), stored, values.size());
          } else {  // rounded on the host, then uploaded
            narrow.resize(values.size());
            convert_to(DType::f32, values.data(), narrow.data(), narrow.size());
            Backend::upload(stored, narrow.data(), narrow.size());
          }
        } else if constexpr (!host) {
          Backend::upload(p.f32().data(), values.data(), values.size());
        }
      });
  return m;
}

//! Writes config.json and model.safetensors of a random model into `dir` (created if needed),
//! replacing the checkpoint there whatever its layout.
inline void write_random_checkpoint(const std::filesystem::path& dir, io::ModelConfig config, std::uint64_t seed,
                                    DType dtype, bool peaked = true) {
  config.torch_dtype = torch_dtype_name(dtype);  // refuses a dtype weights cannot have, before any file is written
  std::filesystem::create_directories(dir);
  io::SafetensorsWriter writer;
  writer.set_metadata("format", "pt");
  std::vector<float> values;
  generate_random_weights(
      config, seed, peaked,
      [&](const std::string&, const std::vector<std::int64_t>& shape) {
        std::int64_t n = 1;
        for (auto d : shape) n *= d;
        values.resize(static_cast<std::size_t>(n));
        return std::span<float>(values);
      },
      [&](const std::string& name, const std::vector<std::int64_t>& shape, std::span<const float> v) {
        writer.add_converted(name, dtype, shape, v);
      });
  writer.write(dir / "model.safetensors");
  config.save(dir / "config.json");
  remove_other_layouts(dir, 1);  // a sharded checkpoint's index there would shadow these weights
}

}  // namespace blockdiff::model
