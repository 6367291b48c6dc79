// The LanguageModel concept: what the decoders and trainers need of a model.
//
// A batched forward over rows of tokens at given cache slots, under a mask kind, that returns
// logits for the rows asked for; a way to make a KV cache; and its config. The built-in Qwen2
// satisfies it, and so can a user's own model. The decoders read the returned logits before the
// next forward, so a model may keep them in a workspace that the next forward overwrites.
#pragma once

#include <concepts>
#include <cstddef>
#include <cstdint>
#include <span>

#include "blockdiff/core/tensor.hpp"
#include "blockdiff/io/config.hpp"
#include "blockdiff/backend/mask.hpp"
#include "blockdiff/model/qwen2.hpp"

namespace blockdiff {

template <class M>
concept LanguageModel = requires(M& m, const M& cm, std::span<model::ForwardRow<typename M::backend_type>> rows) {
  typename M::backend_type;
  { cm.config() } -> std::convertible_to<const io::ModelConfig&>;
  { m.template forward<mask::Causal>(rows) } -> std::convertible_to<TensorView<const float>>;
  { m.template forward<mask::BlockCausal<32>>(rows) } -> std::convertible_to<TensorView<const float>>;
  { cm.logit_offset(std::size_t{}) } -> std::convertible_to<std::int64_t>;
  { cm.make_cache(1) };
};

static_assert(LanguageModel<model::Qwen2<backend::Host>>);

}  // namespace blockdiff
