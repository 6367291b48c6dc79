// A character-level vocabulary stored as a Hugging Face tokenizer.json (a BPE model with no
// merges and single-character tokens, plus added special tokens), which is what the embedded
// default model uses: its folder then looks like any Hugging Face checkpoint.
//
// Ids: the special tokens first (`<|im_end|>`, the stop token, then `|<MASK>|`), then one id per
// character, in the order given. Text is ASCII; a character outside the vocabulary is an error
// that names it.
#pragma once

#include <array>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <span>
#include <string_view>
#include <vector>

#include "blockdiff/core/error.hpp"
#include "blockdiff/io/file.hpp"
#include "blockdiff/io/json.hpp"

namespace blockdiff::tokenizer {

class CharVocab {
 public:
  static constexpr const char* eos_token = "<|im_end|>";
  static constexpr const char* mask_token = "|<MASK>|";

  CharVocab() = default;
  explicit CharVocab(std::string_view characters) {
    specials_ = {eos_token, mask_token};
    for (char ch : characters) {
      require(static_cast<unsigned char>(ch) >= 0x20 && static_cast<unsigned char>(ch) < 0x7f,
              "CharVocab: only printable ASCII characters, got byte ", int(static_cast<unsigned char>(ch)));
      require(id_of_[static_cast<unsigned char>(ch)] < 0, "CharVocab: the character '", ch, "' appears twice");
      id_of_[static_cast<unsigned char>(ch)] = size();
      chars_.push_back(ch);
    }
  }

  int size() const { return static_cast<int>(specials_.size() + chars_.size()); }
  int eos_id() const { return 0; }
  int mask_id() const { return 1; }

  std::vector<int> encode(std::string_view text) const {
    std::vector<int> ids;
    ids.reserve(text.size());
    for (char ch : text) {
      const int id = static_cast<unsigned char>(ch) < 128 ? id_of_[static_cast<unsigned char>(ch)] : -1;
      require(id >= 0, "the character '", std::string(1, ch), "' (byte ", int(static_cast<unsigned char>(ch)),
              ") is not in the vocabulary");
      ids.push_back(id);
    }
    return ids;
  }

  //! Text of `ids`; special tokens are written as their names.
  std::string decode(std::span<const int> ids) const {
    std::string out;
    for (int id : ids) {
      require(id >= 0 && id < size(), "token id ", id, " is outside the vocabulary [0, ", size(), ")");
      if (id < int(specials_.size()))
        out += specials_[std::size_t(id)];
      else
        out += chars_[std::size_t(id) - specials_.size()];
    }
    return out;
  }

  //! The Hugging Face tokenizer.json of this vocabulary.
  nlohmann::ordered_json to_json() const {
    nlohmann::ordered_json added = nlohmann::ordered_json::array();
    for (std::size_t i = 0; i < specials_.size(); ++i)
      added.push_back({{"id", i},
                       {"content", specials_[i]},
                       {"single_word", false},
                       {"lstrip", false},
                       {"rstrip", false},
                       {"normalized", false},
                       {"special", true}});
    nlohmann::ordered_json vocab = nlohmann::ordered_json::object();
    for (std::size_t i = 0; i < specials_.size(); ++i) vocab[specials_[i]] = i;
    for (std::size_t i = 0; i < chars_.size(); ++i) vocab[std::string(1, chars_[i])] = specials_.size() + i;
    return {{"version", "1.0"},
            {"truncation", nullptr},
            {"padding", nullptr},
            {"added_tokens", added},
            {"normalizer", nullptr},
            {"pre_tokenizer", nullptr},
            {"post_processor", nullptr},
            {"decoder", nullptr},
            {"model",
             {{"type", "BPE"},
              {"dropout", nullptr},
              {"unk_token", nullptr},
              {"continuing_subword_prefix", nullptr},
              {"end_of_word_suffix", nullptr},
              {"fuse_unk", false},
              {"byte_fallback", false},
              {"vocab", vocab},
              {"merges", nlohmann::ordered_json::array()}}}};
  }
  //! Writes to_json() to `path` whole, or throws naming it and leaves what was there.
  void save(const std::filesystem::path& path) const {
    io::replace_file(path, [&](std::ofstream& out) { out << to_json().dump(2) << "\n"; });
  }

  //! Reads a tokenizer.json written by save(): the specials in order, then single characters.
  static CharVocab load(const std::filesystem::path& path) {
    std::ifstream in(path);
    require(in.good(), path.string(), ": cannot open");
    auto j = nlohmann::json::parse(in, nullptr, false);
    require(!j.is_discarded() && j.is_object(), path.string(), ": not valid JSON");
    require(j.contains("model") && j["model"].is_object() &&
                io::optional_field(j["model"], "type", std::string(), path.string(), "model.") == "BPE" &&
                j["model"].contains("vocab") && j["model"]["vocab"].is_object(),
            path.string(), ": expected a BPE model with a vocab");
    const auto& merges = j["model"].contains("merges") ? j["model"]["merges"] : nlohmann::json();
    require(merges.is_null() || (merges.is_array() && merges.empty()), path.string(),
            ": a character-level vocabulary has no merges");
    const auto& v = j["model"]["vocab"];
    std::vector<std::string> by_id(v.size());
    for (auto it = v.begin(); it != v.end(); ++it) {
      require(it.value().is_number_integer(), path.string(), ": token \"", it.key(), "\" has the id ",
              it.value().dump(), ", not an integer");
      require(io::holds_integer_in(it.value(), 0, std::int64_t(v.size()) - 1) &&
                  by_id[it.value().get<std::size_t>()].empty(),
              path.string(), ": token \"", it.key(), "\" has a bad or repeated id ", it.value().dump());
      by_id[it.value().get<std::size_t>()] = it.key();
    }
    require(by_id.size() >= 2 && by_id[0] == eos_token && by_id[1] == mask_token, path.string(), ": ids 0 and 1 must be ",
            eos_token, " and ", mask_token);
    std::string chars;
    for (std::size_t i = 2; i < by_id.size(); ++i) {
      require(by_id[i].size() == 1, path.string(), ": token ", i, " \"", by_id[i], "\" is not a single character");
      chars += by_id[i];
    }
    return CharVocab(chars);
  }

 private:
  std::vector<std::string> specials_;
  std::string chars_;
  std::array<int, 128> id_of_ = filled();
  static std::array<int, 128> filled() {
    std::array<int, 128> a{};
    a.fill(-1);
    return a;
  }
};

}  // namespace blockdiff::tokenizer
