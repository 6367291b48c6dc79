// Supervised examples and their packing into fixed training windows (§2.1 of the notes).
//
// An example is a prompt and a response (the response ends with its EOS); the loss is on the
// response only. Packing concatenates examples in the given order and cuts windows of L tokens,
// dropping the remainder. With block padding (the recipe's "+pad"), each example is first padded
// at its end with [MASK] to a multiple of the block, exactly as the official code does:
// `pad = B − len % B`, so an example whose length is already a multiple gets a whole block of
// pads. Pads are never supervised and are attended like any token. There is no document
// masking: with pads, examples start on block boundaries, so they only see earlier examples
// block-causally.
#pragma once

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "blockdiff/core/error.hpp"
#include "blockdiff/core/rng.hpp"
#include "blockdiff/io/json.hpp"
#include "blockdiff/train/objective.hpp"

namespace blockdiff::train {

struct Example {
  std::vector<int> prompt;
  std::vector<int> response;  //!< supervised, EOS included
  std::size_t size() const { return prompt.size() + response.size(); }
};

//! The pads packing puts after `e` where `pad_block` > 0 (the recipe's +pad): up to the next
//! multiple of the block, a whole block where `e` ends on one.
inline std::size_t block_padding(const Example& e, int pad_block) {
  return pad_block > 0 ? std::size_t(pad_block) - e.size() % std::size_t(pad_block) : 0;
}

//! Packs `examples` into windows of `length` tokens: the ones `order` names, in its order (an
//! index may repeat or be left out), or all as given when `order` is empty. `pad_block` > 0 pads
//! each example with `pad_id` to a multiple of it.
inline Windows pack(std::span<const Example> examples, int length, int pad_block, int pad_id,
                    std::span<const std::size_t> order = {}) {
  require(length > 0, "pack: the context length must be positive, got ", length);
  require(pad_block == 0 || length % pad_block == 0, "pack: the context ", length,
          " is not a multiple of the block size ", pad_block);
  require(pad_block == 0 || pad_id >= 0, "pack: block padding needs the [MASK] id");
  Windows w;
  w.length = length;
  const std::size_t count = order.empty() ? examples.size() : order.size();
  for (std::size_t n = 0; n < count; ++n) {
    const std::size_t k = order.empty() ? n : order[n];
    require(k < examples.size(), "pack: order[", n, "] is ", k, ", past the last of ", examples.size(), " examples");
    const Example& e = examples[k];
    require(!e.response.empty(), "example ", k, " has an empty response");
    require(e.size() <= std::size_t(length), "example ", k, " has ", e.size(), " tokens; the context is ", length);
    w.ids.insert(w.ids.end(), e.prompt.begin(), e.prompt.end());
    w.supervised.insert(w.supervised.end(), e.prompt.size(), 0);
    w.ids.insert(w.ids.end(), e.response.begin(), e.response.end());
    w.supervised.insert(w.supervised.end(), e.response.size(), 1);
    const std::size_t pad = block_padding(e, pad_block);
    w.ids.insert(w.ids.end(), pad, pad_id);
    w.supervised.insert(w.supervised.end(), pad, 0);
  }
  const std::size_t keep = w.ids.size() / std::size_t(length) * std::size_t(length);
  w.ids.resize(keep);
  w.supervised.resize(keep);
  return w;
}

//! A seeded permutation of [0, n) (Fisher-Yates with blockdiff's portable RNG).
inline std::vector<std::size_t> shuffled_order(std::size_t n, std::uint64_t seed) {
  std::vector<std::size_t> order(n);
  for (std::size_t i = 0; i < n; ++i) order[i] = i;
  Rng rng(seed);
  for (std::size_t i = n; i > 1; --i) std::swap(order[i - 1], order[rng.below(i)]);
  return order;
}

//! Reads examples from JSON lines {"prompt_ids": [...], "response_ids": [...]}; errors name the
//! file and line.
inline std::vector<Example> read_examples(const std::filesystem::path& path, int vocab_size) {
  std::ifstream in(path);
  require(in.good(), path.string(), ": cannot open the data file");
  std::vector<Example> out;
  std::string line;
  for (int number = 1; std::getline(in, line); ++number) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    auto where = [&] { return path.string() + ":" + std::to_string(number); };
    nlohmann::json j = nlohmann::json::parse(line, nullptr, false);
    require(!j.is_discarded(), where(), ": not valid JSON");
    require(j.is_object(), where(), ": expected an object with \"prompt_ids\" and \"response_ids\"");
    Example e;
    for (auto [field, dst] : {std::pair{"prompt_ids", &e.prompt}, std::pair{"response_ids", &e.response}}) {
      require(j.contains(field) && j[field].is_array(), where(), ": missing array field \"", field, "\"");
      for (auto& v : j[field]) {
        require(v.is_number_integer(), where(), ": \"", field, "\" holds a non-integer");
        require(io::holds_integer_in(v, 0, vocab_size - 1), where(), ": token id ", v.dump(), " in \"", field,
                "\" is outside the vocabulary [0, ", vocab_size, ")");
        dst->push_back(static_cast<int>(v.get<std::int64_t>()));
      }
    }
    require(!e.response.empty(), where(), ": \"response_ids\" is empty");
    out.push_back(std::move(e));
  }
  require(!out.empty(), path.string(), ": no examples");
  return out;
}

//! One explicit batch: windows and, for the block-diffusion objective, the noise of view 1.
struct ExplicitBatch {
  Windows windows;
  std::vector<std::uint8_t> mask;  //!< per token: 1 = masked in view 1, 0 = masked in view 2
};

//! Reads {"input_ids": [[...]], "supervised": [[0|1, ...]], "mask": [[0|1, ...]]}: equal-length
//! rows; "mask" may be absent (AR). Errors name the file, the field and the row.
inline ExplicitBatch read_batch_file(const std::filesystem::path& path, int vocab_size) {
  std::ifstream in(path);
  require(in.good(), path.string(), ": cannot open the batch file");
  nlohmann::json j = nlohmann::json::parse(in, nullptr, false);
  require(!j.is_discarded() && j.is_object(), path.string(), ": not a JSON object");
  ExplicitBatch out;
  auto rows_of = [&](const char* field, bool required) -> const nlohmann::json* {
    if (!j.contains(field)) {
      require(!required, path.string(), ": missing field \"", field, "\"");
      return nullptr;
    }
    const auto& f = j[field];
    require(f.is_array() && !f.empty(), path.string(), ": \"", field, "\" must be a non-empty array of rows");
    return &f;
  };
  const auto* ids = rows_of("input_ids", true);
  const auto* sup = rows_of("supervised", true);
  const auto* mask = rows_of("mask", false);
  const int L = (*ids)[0].is_array() ? int((*ids)[0].size()) : 0;
  require(L > 0, path.string(), ": \"input_ids\"[0] must be a non-empty array");
  out.windows.length = L;
  for (auto [field, rows] : {std::pair{"input_ids", ids}, std::pair{"supervised", sup}, std::pair{"mask", mask}}) {
    if (rows == nullptr) continue;
    require(rows->size() == ids->size(), path.string(), ": \"", field, "\" has ", rows->size(), " rows, \"input_ids\" ",
            ids->size());
    for (std::size_t r = 0; r < rows->size(); ++r) {
      const auto& row = (*rows)[r];
      require(row.is_array() && int(row.size()) == L, path.string(), ": \"", field, "\"[", r, "] must be an array of ",
              L, " integers");
      for (const auto& v : row) {
        require(v.is_number_integer(), path.string(), ": \"", field, "\"[", r, "] holds a non-integer");
        if (std::string_view(field) == "input_ids") {
          require(io::holds_integer_in(v, 0, vocab_size - 1), path.string(), ": token id ", v.dump(),
                  " in \"input_ids\"[", r, "] is outside the vocabulary [0, ", vocab_size, ")");
          out.windows.ids.push_back(v.get<int>());
        } else {
          require(io::holds_integer_in(v, 0, 1), path.string(), ": \"", field, "\"[", r, "] holds ", v.dump(),
                  "; expected 0 or 1");
          auto& flags = std::string_view(field) == "supervised" ? out.windows.supervised : out.mask;
          flags.push_back(v.get<std::uint8_t>());
        }
      }
    }
  }
  return out;
}

}  // namespace blockdiff::train
