// Byte-level BPE from a Hugging Face tokenizer.json, as Qwen2/2.5 (and GPT-2, Llama 3) use it.
//
//   text ─ repair UTF-8 ─ split out added tokens ─ NFC ─ regex pre-tokenizer (Isolated) ─ bytes ─ BPE ─ ids
//
// - Added tokens (`<|im_end|>`, `|<MASK>|`, ...) are found in the raw text first, leftmost-longest,
//   and are never split or normalised.
// - NFC comes from utf8proc, the pre-tokenizer's regex from PCRE2 (JIT, Unicode properties).
// - BPE merges by rank over token ids, leftmost first among equal ranks, with a heap and lazy
//   invalidation: O(n log n) in the word's length. Frequent words come from a per-encoder cache.
// - Invalid UTF-8 in the input is repaired (each maximal ill-formed subpart becomes U+FFFD) before
//   anything else, as Hugging Face does for bytes; decoding repairs the same way, and the
//   StreamDecoder holds back a character cut between tokens until it is complete.
//
// `Tokenizer` is immutable once loaded and safe to share; `Tokenizer::encode` serialises callers
// on one internal encoder, so threads that encode in parallel each make their own `Encoder`.
#pragma once

#include <utf8proc.h>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <span>
#include <sstream>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "blockdiff/core/error.hpp"
#include "blockdiff/io/json.hpp"
#include "blockdiff/tokenizer/utf8.hpp"

namespace blockdiff::tokenizer {

//! A token of `added_tokens`: matched in the raw text before anything else.
struct AddedToken {
  int id = 0;
  std::string content;
  bool special = false;
  bool lstrip = false, rstrip = false;  //!< the match also swallows whitespace (Unicode's White_Space) on that side
};

namespace detail {

//! GPT-2's reversible map from bytes to printable code points (the `ByteLevel` alphabet):
//! printable Latin-1 bytes map to themselves, the other 68 to U+0100 onwards.
struct ByteLevelAlphabet {
  std::array<char32_t, 256> code_of{};
  std::array<std::int16_t, 512> byte_of{};  // code point -> byte, -1 if none

  constexpr ByteLevelAlphabet() {
    byte_of.fill(-1);
    int extra = 0;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      code_of[static_cast<std::size_t>(b)] = printable ? char32_t(b) : char32_t(256 + extra++);
      byte_of[code_of[static_cast<std::size_t>(b)]] = static_cast<std::int16_t>(b);
    }
  }
};
inline constexpr ByteLevelAlphabet byte_level{};

inline void append_utf8(std::string& out, char32_t c) {
  if (c < 0x80) {
    out += static_cast<char>(c);
  } else if (c < 0x800) {
    out += static_cast<char>(0xC0 | (c >> 6));
    out += static_cast<char>(0x80 | (c & 0x3F));
  } else if (c < 0x10000) {
    out += static_cast<char>(0xE0 | (c >> 12));
    out += static_cast<char>(0x80 | ((c >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (c & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (c >> 18));
    out += static_cast<char>(0x80 | ((c >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((c >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (c & 0x3F));
  }
}

//! The UTF-8 text of `bytes` in the ByteLevel alphabet (how byte-level vocabularies spell tokens).
inline std::string to_byte_level(std::string_view bytes) {
  std::string out;
  for (unsigned char b : bytes) append_utf8(out, byte_level.code_of[b]);
  return out;
}

//! A compiled PCRE2 pattern (UTF, Unicode properties, JIT when available).
class Regex {
 public:
  Regex(const std::string& pattern, const std::string& origin) {
    int code = 0;
    PCRE2_SIZE offset = 0;
    code_ = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(), PCRE2_UTF | PCRE2_UCP, &code,
                          &offset, nullptr);
    if (!code_) {
      PCRE2_UCHAR message[256];
      pcre2_get_error_message(code, message, sizeof message);
      fail(origin, ": the pre-tokenizer's regex does not compile at offset ", offset, ": ",
           reinterpret_cast<const char*>(message));
    }
    jit_ = pcre2_jit_compile(code_, PCRE2_JIT_COMPLETE) == 0;
  }
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;
  ~Regex() { pcre2_code_free(code_); }

  //! Match data for one thread.
  pcre2_match_data* make_match_data() const { return pcre2_match_data_create_from_pattern(code_, nullptr); }

  //! The first match in `text` at or after `from`: [begin, end), or nullopt.
  std::optional<std::pair<std::size_t, std::size_t>> find(std::string_view text, std::size_t from,
                                                          pcre2_match_data* md) const {
    const auto subject = reinterpret_cast<PCRE2_SPTR>(text.data());
    // The text was repaired before, so PCRE2 need not check it again.
    const int rc = jit_ ? pcre2_jit_match(code_, subject, text.size(), from, PCRE2_NO_UTF_CHECK, md, nullptr)
                        : pcre2_match(code_, subject, text.size(), from, PCRE2_NO_UTF_CHECK, md, nullptr);
    if (rc == PCRE2_ERROR_NOMATCH) return std::nullopt;
    require(rc >= 0, "tokenizer: the pre-tokenizer's regex failed with PCRE2 error ", rc);
    const PCRE2_SIZE* v = pcre2_get_ovector_pointer(md);
    return std::pair{std::size_t(v[0]), std::size_t(v[1])};
  }

 private:
  pcre2_code* code_ = nullptr;
  bool jit_ = false;
};

}  // namespace detail

//! The pre-tokenizer's regex of Qwen2 and Qwen2.5 (a `Split` in `Isolated` mode).
inline constexpr const char* qwen2_pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

//! The pre-tokenizer's regex of GPT-2 (`ByteLevel` with `use_regex: true`).
inline constexpr const char* gpt2_pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

class Encoder;

//! Everything a tokenizer.json says, read once and never changed.
struct TokenizerModel {
  std::string origin;                         //!< the file, for messages
  std::unordered_map<std::string, int> vocab;  //!< token text (in the model's alphabet) -> id
  std::vector<std::string> bytes_of;          //!< id -> the bytes it decodes to (empty: no such id)
  std::vector<bool> is_special;               //!< id -> an added token marked special
  std::vector<AddedToken> added;              //!< longest first
  std::array<bool, 256> added_first_byte{};   //!< some added token starts with this byte
  std::unordered_map<std::uint64_t, std::pair<int, int>> merges;  //!< (left, right) -> (rank, merged id)
  std::array<int, 256> byte_token{};          //!< byte-level: the id of each single byte
  bool nfc = false;
  bool byte_level = false;                    //!< the model's alphabet is GPT-2's byte map
  bool add_prefix_space = false;
  std::unique_ptr<detail::Regex> split;       //!< Isolated split, or none

  static std::uint64_t key(int left, int right) {
    return (std::uint64_t(std::uint32_t(left)) << 32) | std::uint32_t(right);
  }
};

class Tokenizer {
 public:
  //! Reads `path`: a tokenizer.json, or a folder that holds one.
  static Tokenizer load(const std::filesystem::path& path) {
    const auto file = std::filesystem::is_directory(path) ? path / "tokenizer.json" : path;
    std::ifstream in(file, std::ios::binary);
    require(in.good(), file.string(), ": cannot open");
    std::stringstream ss;
    ss << in.rdbuf();
    return from_json(ss.str(), file.string());
  }

  //! Parses the text of a tokenizer.json; `origin` names it in errors.
  static Tokenizer from_json(std::string_view text, const std::string& origin = "tokenizer.json");

  //! Ids of `text` (no BOS/EOS are added: Qwen adds none).
  std::vector<int> encode(std::string_view text) const;
  //! Bytes of `ids` as UTF-8 text (ill-formed sequences become U+FFFD).
  std::string decode(std::span<const int> ids, bool skip_special = false) const {
    return utf8::repaired(decode_bytes(ids, skip_special));
  }
  //! The raw bytes of `ids`.
  std::string decode_bytes(std::span<const int> ids, bool skip_special = false) const {
    std::string out;
    for (int id : ids) {
      check_id(id);
      if (skip_special && m_->is_special[std::size_t(id)]) continue;
      out += m_->bytes_of[std::size_t(id)];
    }
    return out;
  }

  //! The id of a token given as its text (added tokens by content, others in the model's alphabet).
  std::optional<int> token_id(std::string_view token) const {
    for (auto& a : m_->added)
      if (a.content == token) return a.id;
    auto it = m_->vocab.find(std::string(token));
    return it == m_->vocab.end() ? std::nullopt : std::optional<int>(it->second);
  }
  //! One past the largest id.
  int size() const { return static_cast<int>(m_->bytes_of.size()); }
  bool contains(int id) const { return id >= 0 && id < size() && !m_->bytes_of[std::size_t(id)].empty(); }
  bool is_special(int id) const { check_id(id); return m_->is_special[std::size_t(id)]; }
  std::span<const AddedToken> added_tokens() const { return m_->added; }
  const std::string& origin() const { return m_->origin; }
  const std::shared_ptr<const TokenizerModel>& model() const { return m_; }

  void check_id(int id) const {
    require(contains(id), "token id ", id, " is not in the vocabulary of ", m_->origin, " (ids 0 to ", size() - 1, ")");
  }

 private:
  struct Shared;
  std::shared_ptr<const TokenizerModel> m_;
  std::shared_ptr<Shared> shared_;  // the convenience encoder and its lock
};

//! An encoder with its own regex match data, scratch and word cache: one per thread.
class Encoder {
 public:
  explicit Encoder(const Tokenizer& t, std::size_t cache_words = 1 << 16)
      : m_(t.model()), cache_limit_(cache_words), md_(m_->split ? m_->split->make_match_data() : nullptr) {}
  Encoder(const Encoder&) = delete;
  Encoder& operator=(const Encoder&) = delete;
  ~Encoder() {
    if (md_) pcre2_match_data_free(md_);
  }

  //! Appends the ids of `text` to `out`.
  void encode(std::string_view text, std::vector<int>& out) {
    split_added(text, [&](std::string_view t) { encode_text(t, out); }, [&](const AddedToken& a) { out.push_back(a.id); });
  }

  std::vector<int> encode(std::string_view text) {
    std::vector<int> out;
    encode(text, out);
    return out;
  }

  //! The pieces BPE sees, in order: added tokens whole, the rest as the pre-tokenizer splits it
  //! (after repair and NFC). For inspecting a tokenizer.json; encode() does not build them.
  std::vector<std::string> pieces(std::string_view text) {
    std::vector<std::string> out;
    split_added(text, [&](std::string_view t) { for_each_piece(t, [&](std::string_view w) { out.emplace_back(w); }); },
                [&](const AddedToken& a) { out.push_back(a.content); });
    return out;
  }

 private:
  // Where the whitespace that ends at `end` begins, no earlier than `floor`; and where the
  // whitespace that begins at `begin` ends: what lstrip and rstrip swallow. The text is
  // well-formed (split_added repairs it first).
  static std::size_t space_before(std::string_view text, std::size_t floor, std::size_t end) {
    while (end > floor) {
      std::size_t start = end - 1;
      while (start > floor && (static_cast<unsigned char>(text[start]) & 0xC0) == 0x80) --start;
      if (!utf8::white_space(utf8::code_point(text.substr(start, end - start)))) break;
      end = start;
    }
    return end;
  }
  static std::size_t space_after(std::string_view text, std::size_t begin) {
    while (begin < text.size()) {
      const auto rest = text.substr(begin);
      if (!utf8::white_space(utf8::code_point(rest))) break;
      begin += static_cast<std::size_t>(utf8::sequence_length(rest));
    }
    return begin;
  }

  // Repairs `text`, then calls `on_text` on each stretch between added tokens and `on_added` on
  // each added token: leftmost, longest at a position.
  template <class OnText, class OnAdded>
  void split_added(std::string_view text, OnText&& on_text, OnAdded&& on_added) {
    std::string repaired;
    if (!utf8::valid(text)) {
      repaired = utf8::repaired(text);
      text = repaired;
    }
    std::size_t piece = 0;
    for (std::size_t i = 0; i < text.size();) {
      const AddedToken* hit = m_->added_first_byte[static_cast<unsigned char>(text[i])] ? added_at(text, i) : nullptr;
      if (!hit) {
        ++i;
        continue;
      }
      std::size_t begin = i, end = i + hit->content.size();
      if (hit->lstrip) begin = space_before(text, piece, begin);
      if (hit->rstrip) end = space_after(text, end);
      on_text(text.substr(piece, begin - piece));
      on_added(*hit);
      piece = i = end;
    }
    on_text(text.substr(piece));
  }

  const AddedToken* added_at(std::string_view text, std::size_t i) const {
    for (auto& a : m_->added)  // longest first
      if (text.compare(i, a.content.size(), a.content) == 0) return &a;
    return nullptr;
  }

  // Normalise, pre-tokenise and BPE one stretch of text that holds no added token.
  void encode_text(std::string_view text, std::vector<int>& out) {
    for_each_piece(text, [&](std::string_view word) { encode_word(word, out); });
  }

  // Calls `f` on each pre-tokenizer piece of `text` (which holds no added token), after NFC.
  template <class F>
  void for_each_piece(std::string_view text, F&& f) {
    if (text.empty()) return;
    if (m_->nfc) text = nfc(text);
    if (m_->add_prefix_space && text.front() != ' ') {
      prefixed_.assign(1, ' ');
      prefixed_.append(text);
      text = prefixed_;
    }
    if (!m_->split) return f(text);
    std::size_t at = 0;
    while (at < text.size()) {
      auto match = m_->split->find(text, at, md_);
      if (!match) break;
      auto [b, e] = *match;
      if (b > at) f(text.substr(at, b - at));  // Isolated keeps the gaps as pieces too
      if (e == b) {  // an empty match: step over one character
        const int n = utf8::sequence_length(text.substr(b));
        e = b + std::size_t(n > 0 ? n : 1);
      }
      f(text.substr(b, e - b));
      at = e;
    }
    if (at < text.size()) f(text.substr(at));
  }

  std::string_view nfc(std::string_view text) {
    // Text below U+0300 (lead bytes < 0xCC) is already NFC: no combining marks, no singletons.
    if (std::all_of(text.begin(), text.end(), [](char c) { return static_cast<unsigned char>(c) < 0xCC; })) return text;
    utf8proc_uint8_t* dst = nullptr;
    const auto n = utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(text.data()), utf8proc_ssize_t(text.size()), &dst,
                                utf8proc_option_t(UTF8PROC_STABLE | UTF8PROC_COMPOSE));
    require(n >= 0, "tokenizer: NFC failed: ", utf8proc_errmsg(n));
    normalized_.assign(reinterpret_cast<const char*>(dst), std::size_t(n));
    std::free(dst);
    return normalized_;
  }

  void encode_word(std::string_view word, std::vector<int>& out) {
    if (word.empty()) return;
    const bool cacheable = word.size() <= 64;
    if (cacheable) {
      key_.assign(word);
      if (auto it = cache_.find(key_); it != cache_.end()) {
        out.insert(out.end(), it->second.begin(), it->second.end());
        return;
      }
    }
    const std::size_t first = out.size();
    bpe(word, out);
    if (cacheable) {
      if (cache_.size() >= cache_limit_) cache_.clear();
      cache_.emplace(key_, std::vector<int>(out.begin() + std::ptrdiff_t(first), out.end()));
    }
  }

  // The word's initial symbols (bytes or characters), then merges by rank.
  void bpe(std::string_view word, std::vector<int>& out) {
    syms_.clear();
    if (m_->byte_level) {
      for (unsigned char b : word) syms_.push_back({m_->byte_token[b], int(syms_.size()) - 1, int(syms_.size()) + 1});
    } else {
      for (std::size_t i = 0; i < word.size();) {
        const auto n = std::size_t(std::max(1, utf8::sequence_length(word.substr(i))));
        auto it = m_->vocab.find(std::string(word.substr(i, n)));
        require(it != m_->vocab.end(), m_->origin, ": the character \"", std::string(word.substr(i, n)),
                "\" is not in the vocabulary (and the model has no unk_token)");
        syms_.push_back({it->second, int(syms_.size()) - 1, int(syms_.size()) + 1});
        i += n;
      }
    }
    const int n = static_cast<int>(syms_.size());
    syms_.back().next = -1;
    heap_.clear();  // a binary heap in a vector that keeps its capacity across words
    auto push = [&](int left) {
      const int right = syms_[std::size_t(left)].next;
      if (right < 0) return;
      const int a = syms_[std::size_t(left)].id, b = syms_[std::size_t(right)].id;
      auto it = m_->merges.find(TokenizerModel::key(a, b));
      if (it == m_->merges.end()) return;
      heap_.push_back({it->second.first, left, a, b, it->second.second});
      std::push_heap(heap_.begin(), heap_.end());
    };
    for (int i = 0; i + 1 < n; ++i) push(i);
    while (!heap_.empty()) {
      std::pop_heap(heap_.begin(), heap_.end());
      const Candidate c = heap_.back();
      heap_.pop_back();
      Symbol& l = syms_[std::size_t(c.left)];
      // Stale when either side has changed since the candidate was pushed.
      if (l.id != c.left_id || l.next < 0 || syms_[std::size_t(l.next)].id != c.right_id) continue;
      Symbol& r = syms_[std::size_t(l.next)];
      l.id = c.merged;
      r.id = -1;  // removed
      l.next = r.next;
      if (r.next >= 0) syms_[std::size_t(r.next)].prev = c.left;
      if (l.prev >= 0) push(l.prev);
      push(c.left);
    }
    for (int i = 0; i >= 0; i = syms_[std::size_t(i)].next) out.push_back(syms_[std::size_t(i)].id);
  }

  struct Symbol {
    int id, prev, next;
  };
  struct Candidate {
    int rank, left, left_id, right_id, merged;
    // The heap's top is the lowest rank, then the leftmost.
    bool operator<(const Candidate& o) const { return rank != o.rank ? rank > o.rank : left > o.left; }
  };

  std::shared_ptr<const TokenizerModel> m_;
  std::size_t cache_limit_;
  pcre2_match_data* md_ = nullptr;
  std::unordered_map<std::string, std::vector<int>> cache_;
  std::string key_, normalized_, prefixed_;
  std::vector<Symbol> syms_;
  std::vector<Candidate> heap_;
};

struct Tokenizer::Shared {
  std::mutex lock;
  std::unique_ptr<Encoder> encoder;
};

inline std::vector<int> Tokenizer::encode(std::string_view text) const {
  std::lock_guard guard(shared_->lock);
  if (!shared_->encoder) shared_->encoder = std::make_unique<Encoder>(*this);
  return shared_->encoder->encode(text);
}

inline Tokenizer Tokenizer::from_json(std::string_view text, const std::string& origin) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    fail(origin, ": not valid JSON (", e.what(), ")");
  }
  require(j.is_object(), origin, ": not a JSON object");
  auto m = std::make_shared<TokenizerModel>();
  m->origin = origin;
  auto type_of = [&](const nlohmann::json& part, const char* what) {
    require(part.is_object() && part.contains("type") && part["type"].is_string(), origin, ": ", what,
            " has no \"type\"");
    return part["type"].get<std::string>();
  };

  // The model: BPE over a vocabulary and ranked merges.
  require(j.contains("model") && j["model"].is_object(), origin, ": missing object \"model\"");
  const auto& model = j["model"];
  const auto model_type = io::optional_field(model, "type", std::string("BPE"), origin, "model.");
  require(model_type == "BPE", origin, ": model type \"", model_type,
          "\" is not supported (blockdiff reads BPE tokenizers)");
  auto empty_or_null = [&](const char* field) {
    if (!model.contains(field) || model[field].is_null()) return;
    require(model[field].is_string() && model[field].get<std::string>().empty(), origin, ": model.", field,
            " is not supported (got ", model[field].dump(), ")");
  };
  empty_or_null("continuing_subword_prefix");
  empty_or_null("end_of_word_suffix");
  require(!model.contains("dropout") || model["dropout"].is_null() ||
              (model["dropout"].is_number() && model["dropout"].get<double>() == 0.0),
          origin, ": BPE dropout is not supported");
  require(!io::optional_field(model, "byte_fallback", false, origin, "model."), origin, ": byte_fallback is not supported");
  require(model.contains("vocab") && model["vocab"].is_object(), origin, ": model.vocab is missing");
  int size = 0;
  for (auto& [token, id] : model["vocab"].items()) {
    require(io::holds_integer_in(id, 0, (1 << 30) - 1), origin,
            ": model.vocab[\"", token, "\"] is not a valid id");
    require(m->vocab.emplace(token, id.get<int>()).second, origin, ": token \"", token, "\" appears twice");
    size = std::max(size, id.get<int>() + 1);
  }

  // Added tokens.
  if (j.contains("added_tokens") && !j["added_tokens"].is_null()) {
    require(j["added_tokens"].is_array(), origin, ": \"added_tokens\" is not an array");
    for (auto& a : j["added_tokens"]) {
      require(a.is_object() && a.contains("id") && a["id"].is_number_integer() && a.contains("content") &&
                  a["content"].is_string(),
              origin, ": an added token lacks an integer \"id\" or a string \"content\": ", a.dump());
      const auto flag = [&](const char* key) {
        return io::optional_field(a, key, false, origin, "added token " + a["content"].get<std::string>() + "'s ");
      };
      require(io::holds_integer_in(a["id"], 0, (1 << 30) - 1) && !a["content"].get<std::string>().empty(), origin,
              ": added token ", a.dump(), " has a bad id or empty content");
      AddedToken t{a["id"].get<int>(), a["content"].get<std::string>(), flag("special"), flag("lstrip"), flag("rstrip")};
      require(!flag("single_word"), origin, ": added token \"", t.content,
              "\" sets single_word, which is not supported");
      size = std::max(size, t.id + 1);
      m->added.push_back(std::move(t));
    }
    std::stable_sort(m->added.begin(), m->added.end(),
                     [](const AddedToken& a, const AddedToken& b) { return a.content.size() > b.content.size(); });
    for (auto& a : m->added) m->added_first_byte[static_cast<unsigned char>(a.content[0])] = true;
  }

  // Normaliser: none or NFC.
  auto normalizer_step = [&](const nlohmann::json& n) {
    const auto t = type_of(n, "the normalizer");
    require(t == "NFC", origin, ": normalizer \"", t, "\" is not supported (blockdiff reads NFC or none)");
    m->nfc = true;
  };
  // A part is null, one step, or a Sequence of steps under `list`.
  auto for_each_step = [&](const char* part, const char* list, auto&& step) {
    if (!j.contains(part) || j[part].is_null()) return;
    const auto& p = j[part];
    if (type_of(p, part) != "Sequence") return step(p);
    require(p.contains(list) && p[list].is_array(), origin, ": ", part, " Sequence has no array \"", list, "\"");
    for (auto& s : p[list]) step(s);
  };
  for_each_step("normalizer", "normalizers", normalizer_step);

  // Pre-tokenizer: at most one regex split (Split in Isolated mode, or ByteLevel's own) and ByteLevel.
  std::string pattern;
  bool byte_level_pre = false;
  auto set_pattern = [&](std::string p, const char* by) {
    require(pattern.empty(), origin, ": more than one regex pre-tokenizer (", by, ") is not supported");
    pattern = std::move(p);
  };
  auto pre_step = [&](const nlohmann::json& p) {
    const auto t = type_of(p, "the pre_tokenizer");
    if (t == "ByteLevel") {
      byte_level_pre = true;
      const auto flag = [&](const char* key, bool fallback) {
        return io::optional_field(p, key, fallback, origin, "the ByteLevel pre_tokenizer's ");
      };
      m->add_prefix_space = flag("add_prefix_space", false);
      if (flag("use_regex", true)) set_pattern(gpt2_pattern, "ByteLevel use_regex");
    } else if (t == "Split") {
      const auto behavior = io::optional_field(p, "behavior", std::string(), origin, "the Split pre-tokenizer's ");
      require(behavior == "Isolated", origin, ": Split pre-tokenizer with behavior \"", behavior,
              "\" is not supported (blockdiff reads Isolated)");
      require(!io::optional_field(p, "invert", false, origin, "the Split pre-tokenizer's "), origin,
              ": an inverted Split pre-tokenizer is not supported");
      require(p.contains("pattern") && p["pattern"].is_object(), origin, ": Split pre-tokenizer has no pattern");
      const auto& pat = p["pattern"];
      if (pat.contains("Regex") && pat["Regex"].is_string()) {
        set_pattern(pat["Regex"].get<std::string>(), "Split");
      } else {
        require(pat.contains("String") && pat["String"].is_string(), origin, ": Split pattern is neither Regex nor String");
        std::string quoted;  // a literal string, quoted for PCRE2
        for (char c : pat["String"].get<std::string>()) {
          if (std::string_view("\\^$.|?*+()[]{}").find(c) != std::string_view::npos) quoted += '\\';
          quoted += c;
        }
        set_pattern(quoted, "Split");
      }
    } else {
      fail(origin, ": pre_tokenizer \"", t, "\" is not supported (blockdiff reads Split, ByteLevel and Sequence)");
    }
  };
  for_each_step("pre_tokenizer", "pretokenizers", pre_step);
  // PCRE2 with Unicode properties counts U+0085 (NEL) as \s, as Hugging Face's engine does.
  if (!pattern.empty()) m->split = std::make_unique<detail::Regex>(pattern, origin);

  // Decoder: ByteLevel maps the alphabet back to bytes; none concatenates the tokens' text.
  bool byte_level_decoder = false;
  if (j.contains("decoder") && !j["decoder"].is_null()) {
    const auto t = type_of(j["decoder"], "the decoder");
    require(t == "ByteLevel", origin, ": decoder \"", t, "\" is not supported (blockdiff reads ByteLevel or none)");
    byte_level_decoder = true;
  }
  require(byte_level_pre == byte_level_decoder, origin,
          ": the pre_tokenizer and the decoder disagree on ByteLevel (one has it, the other not)");
  m->byte_level = byte_level_pre;

  // Every id's bytes; the byte-level alphabet must be complete.
  m->bytes_of.assign(std::size_t(size), {});
  m->is_special.assign(std::size_t(size), false);
  for (auto& [token, id] : m->vocab) {
    std::string bytes;
    if (m->byte_level) {
      for (std::size_t i = 0; i < token.size();) {
        utf8proc_int32_t c = 0;
        const auto n = utf8proc_iterate(reinterpret_cast<const utf8proc_uint8_t*>(token.data() + i),
                                        utf8proc_ssize_t(token.size() - i), &c);
        const int b = n > 0 && c >= 0 && c < 512 ? detail::byte_level.byte_of[std::size_t(c)] : -1;
        require(b >= 0, origin, ": vocabulary token \"", token, "\" (id ", id,
                ") has a character outside the ByteLevel alphabet");
        bytes += static_cast<char>(b);
        i += std::size_t(n);
      }
    } else {
      bytes = token;
    }
    m->bytes_of[std::size_t(id)] = std::move(bytes);
  }
  for (auto& a : m->added) {
    m->bytes_of[std::size_t(a.id)] = a.content;
    m->is_special[std::size_t(a.id)] = a.special;
  }
  if (m->byte_level)
    for (int b = 0; b < 256; ++b) {
      auto it = m->vocab.find(detail::to_byte_level(std::string(1, static_cast<char>(b))));
      require(it != m->vocab.end(), origin, ": the ByteLevel vocabulary lacks the token of byte ", b);
      m->byte_token[std::size_t(b)] = it->second;
    }

  // Merges: "left right" strings or [left, right] pairs; rank = position.
  if (model.contains("merges") && !model["merges"].is_null()) {
    require(model["merges"].is_array(), origin, ": model.merges is not an array");
    const auto& merges = model["merges"];
    m->merges.reserve(merges.size());
    for (std::size_t rank = 0; rank < merges.size(); ++rank) {
      const auto& e = merges[rank];
      std::string left, right;
      if (e.is_string()) {
        const auto s = e.get<std::string>();
        const auto space = s.find(' ');
        require(space != std::string::npos && space > 0 && space + 1 < s.size(), origin, ": merge ", rank, " \"", s,
                "\" is not two tokens separated by a space");
        left = s.substr(0, space);
        right = s.substr(space + 1);
      } else {
        require(e.is_array() && e.size() == 2 && e[0].is_string() && e[1].is_string(), origin, ": merge ", rank,
                " is neither \"a b\" nor [\"a\", \"b\"]: ", e.dump());
        left = e[0].get<std::string>();
        right = e[1].get<std::string>();
      }
      auto l = m->vocab.find(left), r = m->vocab.find(right), lr = m->vocab.find(left + right);
      require(l != m->vocab.end(), origin, ": merge ", rank, " references unknown token \"", left, "\"");
      require(r != m->vocab.end(), origin, ": merge ", rank, " references unknown token \"", right, "\"");
      require(lr != m->vocab.end(), origin, ": merge ", rank, " makes \"", left + right,
              "\", which is not in the vocabulary");
      // A repeated merge keeps its first (lowest) rank, as Hugging Face does.
      m->merges.emplace(TokenizerModel::key(l->second, r->second), std::pair{int(rank), lr->second});
    }
  }

  Tokenizer t;
  t.m_ = std::move(m);
  t.shared_ = std::make_shared<Shared>();
  return t;
}

//! Decodes a stream of ids piece by piece: each call returns the text that is complete so far,
//! holding back a character whose bytes are split between tokens until the rest arrives.
class StreamDecoder {
 public:
  explicit StreamDecoder(const Tokenizer& t, bool skip_special = false) : t_(&t), skip_special_(skip_special) {}

  std::string push(std::span<const int> ids) {
    pending_ += t_->decode_bytes(ids, skip_special_);
    const std::size_t keep = utf8::incomplete_tail(pending_);
    std::string out = utf8::repaired(std::string_view(pending_).substr(0, pending_.size() - keep));
    pending_.erase(0, pending_.size() - keep);
    return out;
  }
  //! Whatever is held back, repaired (the stream has ended).
  std::string flush() {
    std::string out = utf8::repaired(pending_);
    pending_.clear();
    return out;
  }

 private:
  const Tokenizer* t_;
  bool skip_special_;
  std::string pending_;
};

}  // namespace blockdiff::tokenizer
