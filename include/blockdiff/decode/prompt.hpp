// Checks shared by every decoder: a prompt is non-empty, its ids are in the vocabulary, and it
// fits the context together with the tokens asked for.
#pragma once

#include <cstddef>
#include <string_view>
#include <vector>

#include "blockdiff/core/error.hpp"
#include "blockdiff/io/config.hpp"

namespace blockdiff::decode {

inline void check_token(int id, int vocab, std::string_view what) {
  require(id >= 0 && id < vocab, what, " ", id, " is outside the vocabulary [0, ", vocab, ")");
}

//! `extra` is what the decoder appends beyond max_new_tokens (block padding), 0 for AR.
inline void check_prompt(const std::vector<int>& prompt, int max_new_tokens, const io::ModelConfig& config,
                         std::size_t index, std::size_t count, int extra = 0) {
  const auto where = count > 1 ? ::blockdiff::detail::concat("prompt ", index) : std::string("prompt");
  require(!prompt.empty(), where, " is empty");
  for (std::size_t i = 0; i < prompt.size(); ++i)
    require(prompt[i] >= 0 && prompt[i] < config.vocab_size, where, ": token id ", prompt[i], " at index ", i,
            " is outside the vocabulary [0, ", config.vocab_size, ")");
  const long long need = static_cast<long long>(prompt.size()) + max_new_tokens + extra;
  if (need > config.context())
    fail(where, " of ", prompt.size(), " tokens plus max_new_tokens ",
          max_new_tokens, extra ? ::blockdiff::detail::concat(" (and ", extra, " slots of block padding)") : std::string(),
          " needs ", need, " positions, beyond ", config.describe_context());
}

}  // namespace blockdiff::decode
