// Small model configs for the training tests, written once: two layers by default, and the last
// two ids of the vocabulary are EOS and [MASK].
#pragma once

#include "blockdiff/io/config.hpp"

namespace blockdiff::test {

struct SmallShape {
  int hidden = 32, intermediate = 64, vocab = 16;
  int heads = 4, kv_heads = 2, layers = 2;
  int max_positions = 64;
  double rope_theta = 1e6;
  bool tied = true;
};

inline io::ModelConfig small_config(const SmallShape& s) {
  io::ModelConfig c;
  c.hidden_size = s.hidden;
  c.intermediate_size = s.intermediate;
  c.num_hidden_layers = s.layers;
  c.num_attention_heads = s.heads;
  c.num_key_value_heads = s.kv_heads;
  c.vocab_size = s.vocab;
  c.max_position_embeddings = s.max_positions;
  c.rope_theta = s.rope_theta;
  c.tie_word_embeddings = s.tied;
  c.eos_token_id = s.vocab - 2;
  c.mask_token_id = s.vocab - 1;
  return c;
}

}  // namespace blockdiff::test
