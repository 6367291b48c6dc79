// A small byte-level BPE tokenizer.json in Qwen2.5's layout (NFC, the Qwen2 Split regex,
// ByteLevel, ranked merges, ChatML and [MASK] added tokens), with merges learned here by a naive
// BPE trainer, and a naive BPE encoder to check the library's against.
#pragma once

#include <algorithm>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "blockdiff/tokenizer/tokenizer.hpp"

namespace blockdiff::test {

inline constexpr const char* tiny_training_text =
    "the cat sat on the mat and the dog sat on the log; aaaa abab baaab aaaaaa the rain in spain "
    "stays mainly in the plain. it's the thinking that counts, isn't it? 1234 5678 the end. "
    "hello world hello there hello again; banana bandana cabana aaa bbb ab ba";

//! Byte-level alphabet text of each character of a byte string, one symbol per byte.
inline std::vector<std::string> byte_symbols(std::string_view bytes) {
  std::vector<std::string> out;
  for (unsigned char b : bytes) out.push_back(tokenizer::detail::to_byte_level(std::string(1, char(b))));
  return out;
}

//! `n_merges` merges learned from `text` (split at spaces, a space kept in front of each word).
inline std::vector<std::pair<std::string, std::string>> learn_merges(std::string_view text, int n_merges) {
  std::vector<std::vector<std::string>> words;
  std::size_t at = 0;
  while (at < text.size()) {
    std::size_t end = text.find(' ', at + 1);
    if (end == std::string_view::npos) end = text.size();
    words.push_back(byte_symbols(text.substr(at, end - at)));
    at = end;
  }
  std::vector<std::pair<std::string, std::string>> merges;
  for (int m = 0; m < n_merges; ++m) {
    std::map<std::pair<std::string, std::string>, int> counts;
    for (auto& w : words)
      for (std::size_t i = 0; i + 1 < w.size(); ++i) ++counts[{w[i], w[i + 1]}];
    if (counts.empty()) break;
    auto best = std::max_element(counts.begin(), counts.end(),
                                 [](auto& a, auto& b) { return a.second < b.second; });  // first max: lexicographic ties
    merges.push_back(best->first);
    for (auto& w : words)
      for (std::size_t i = 0; i + 1 < w.size(); ++i)
        if (w[i] == best->first.first && w[i + 1] == best->first.second) {
          w[i] += w[i + 1];
          w.erase(w.begin() + std::ptrdiff_t(i) + 1);
        }
  }
  return merges;
}

struct TinyTokenizer {
  nlohmann::ordered_json json;
  std::vector<std::pair<std::string, std::string>> merges;
  std::map<std::string, int> vocab;
};

//! Ids: 256 byte tokens, then one per merge, then <|endoftext|>, <|im_start|>, <|im_end|>, |<MASK>|.
inline TinyTokenizer tiny_tokenizer(int n_merges = 60, bool merges_as_pairs = false) {
  TinyTokenizer t;
  t.merges = learn_merges(tiny_training_text, n_merges);
  nlohmann::ordered_json vocab = nlohmann::ordered_json::object();
  for (int b = 0; b < 256; ++b) {
    const auto s = tokenizer::detail::to_byte_level(std::string(1, char(b)));
    t.vocab[s] = b;
    vocab[s] = b;
  }
  nlohmann::ordered_json merges = nlohmann::ordered_json::array();
  for (auto& [l, r] : t.merges) {
    if (!t.vocab.count(l + r)) {
      const int id = int(t.vocab.size());
      t.vocab[l + r] = id;
      vocab[l + r] = id;
    }
    if (merges_as_pairs)
      merges.push_back({l, r});
    else
      merges.push_back(l + " " + r);
  }
  nlohmann::ordered_json added = nlohmann::ordered_json::array();
  int id = int(t.vocab.size());
  for (const char* s : {"<|endoftext|>", "<|im_start|>", "<|im_end|>", "|<MASK>|"})
    added.push_back({{"id", id++}, {"content", s}, {"single_word", false}, {"lstrip", false}, {"rstrip", false},
                     {"normalized", false}, {"special", true}});
  nlohmann::ordered_json byte_level{{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", false},
                                    {"use_regex", false}};
  t.json = {{"version", "1.0"},
            {"truncation", nullptr},
            {"padding", nullptr},
            {"added_tokens", added},
            {"normalizer", {{"type", "NFC"}}},
            {"pre_tokenizer",
             {{"type", "Sequence"},
              {"pretokenizers",
               {{{"type", "Split"}, {"pattern", {{"Regex", tokenizer::qwen2_pattern}}}, {"behavior", "Isolated"},
                 {"invert", false}},
                byte_level}}}},
            {"post_processor", byte_level},
            {"decoder", byte_level},
            {"model",
             {{"type", "BPE"},
              {"dropout", nullptr},
              {"unk_token", nullptr},
              {"continuing_subword_prefix", ""},
              {"end_of_word_suffix", ""},
              {"fuse_unk", false},
              {"byte_fallback", false},
              {"vocab", vocab},
              {"merges", merges}}}};
  return t;
}

//! Naive BPE of one pre-tokenized piece: repeatedly merge the lowest-ranked adjacent pair,
//! leftmost first. Quadratic, and independent of the library's heap.
inline std::vector<int> naive_bpe(const TinyTokenizer& t, std::string_view piece) {
  auto symbols = byte_symbols(piece);
  std::map<std::pair<std::string, std::string>, int> rank;
  for (std::size_t r = 0; r < t.merges.size(); ++r) rank.emplace(t.merges[r], int(r));
  while (true) {
    int best = -1, best_rank = 1 << 30;
    for (std::size_t i = 0; i + 1 < symbols.size(); ++i) {
      auto it = rank.find({symbols[i], symbols[i + 1]});
      if (it != rank.end() && it->second < best_rank) best = int(i), best_rank = it->second;
    }
    if (best < 0) break;
    symbols[std::size_t(best)] += symbols[std::size_t(best) + 1];
    symbols.erase(symbols.begin() + best + 1);
  }
  std::vector<int> ids;
  for (auto& s : symbols) ids.push_back(t.vocab.at(s));
  return ids;
}

}  // namespace blockdiff::test
