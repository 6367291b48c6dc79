// The byte-level BPE tokenizer: BPE against a naive reference, the Qwen2 pre-tokenizer on
// hand-worked splits, NFC, added tokens, UTF-8 repair (the standard's own example), streaming
// decode, the embedded models' character vocabulary, and bad tokenizer.json files.
// (Ids against an independent implementation on the real Qwen vocabulary: tests/cli/check_tokenizer.py.)
#include <doctest/doctest.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <set>

#include "../support/check_error.hpp"
#include "../support/paths.hpp"
#include "../support/tiny_tokenizer.hpp"
#include "blockdiff/core/rng.hpp"
#include "blockdiff/tokenizer/char_vocab.hpp"
#include "blockdiff/tokenizer/tokenizer.hpp"
#include "blockdiff/train/tasks.hpp"

using namespace blockdiff;
using tokenizer::Tokenizer;
using Pieces = std::vector<std::string>;

namespace {
Tokenizer tiny(const test::TinyTokenizer& t) { return Tokenizer::from_json(t.json.dump(), "tiny.json"); }
}  // namespace

TEST_CASE("the ByteLevel alphabet is a bijection: printable bytes are themselves, the rest from U+0100") {
  std::set<char32_t> seen;
  for (int b = 0; b < 256; ++b) {
    const char32_t c = tokenizer::detail::byte_level.code_of[std::size_t(b)];
    CHECK(seen.insert(c).second);
    CHECK(tokenizer::detail::byte_level.byte_of[c] == b);
    if (b >= '!' && b <= '~') CHECK(c == char32_t(b));
  }
  CHECK(tokenizer::detail::byte_level.code_of[' '] == U'\u0120');  // the familiar "Ġ"
  CHECK(tokenizer::detail::byte_level.code_of['\n'] == U'\u010A');  // "Ċ"
}

TEST_CASE("BPE merges equal a naive lowest-rank-first merge loop, on random and adversarial words") {
  for (bool pairs : {false, true}) {  // merges written as "a b" and as ["a", "b"]
    const auto t = test::tiny_tokenizer(60, pairs);
    auto tok = tiny(t);
    tokenizer::Encoder enc(tok);
    Rng rng(7);
    const std::string alphabet = "abnt hel";
    for (int trial = 0; trial < 400; ++trial) {
      std::string word = trial % 2 ? " " : "";
      const int n = 1 + int(rng.below(trial < 300 ? 12 : 80));
      for (int i = 0; i < n; ++i) word += alphabet[rng.below(alphabet.size() - 1)];  // no spaces inside
      for (auto& piece : enc.pieces(word)) {
        INFO("piece \"", piece, "\"");
        CHECK(enc.encode(piece) == test::naive_bpe(t, piece));
      }
    }
    for (const char* w : {"aaaaaaaaaaaaaaaaaaaaaaa", "abababababababab", "baaab", "banana", " the", "thinking"})
      CHECK(enc.encode(w) == test::naive_bpe(t, w));
    // The cache gives what a fresh encoder gives.
    tokenizer::Encoder fresh(tok, 0);
    CHECK(enc.encode("banana banana bandana") == fresh.encode("banana banana bandana"));
  }
}

TEST_CASE("the Qwen2 pre-tokenizer splits as its regex says") {
  auto tok = tiny(test::tiny_tokenizer());
  tokenizer::Encoder enc(tok);
  CHECK(enc.pieces("Hello world") == Pieces{"Hello", " world"});
  CHECK(enc.pieces("It's I'M YOU'RE they'Ll") == Pieces{"It", "'s", " I", "'M", " YOU", "'RE", " they", "'Ll"});
  CHECK(enc.pieces("12345") == Pieces{"1", "2", "3", "4", "5"});
  // Whitespace runs leave their last space to the next word; newlines go with the run before.
  CHECK(enc.pieces("a   b") == Pieces{"a", "  ", " b"});
  CHECK(enc.pieces("x\n\ny") == Pieces{"x", "\n\n", "y"});
  CHECK(enc.pieces("  \tfoo") == Pieces{"  ", "\tfoo"});
  CHECK(enc.pieces("hello!!! ok...\n") == Pieces{"hello", "!!!", " ok", "...\n"});
  CHECK(enc.pieces("end   ") == Pieces{"end", "   "});
  CHECK(enc.pieces("日本語 text") == Pieces{"日本語", " text"});
  // U+0085 (NEL) is whitespace, as in Hugging Face's engine (Unicode's White_Space): it splits
  // as spaces do; were it not, "\u0085\u0085" would be one punctuation piece and "b" another.
  CHECK(enc.pieces("a  b") == Pieces{"a", " ", " b"});
  CHECK(enc.pieces("a\u0085\u0085b") == Pieces{"a", "\u0085", "\u0085b"});
}

TEST_CASE("NFC: decomposed and composed text encode alike; added tokens are matched first and never split") {
  auto tok = tiny(test::tiny_tokenizer());
  CHECK(tok.encode("caf\u0065\u0301") == tok.encode("caf\u00e9"));
  CHECK(tok.encode("\u1100\u1161") == tok.encode("\uac00"));  // Hangul jamo compose
  CHECK(tok.decode(tok.encode("e\u0301")) == "\u00e9");
  const int im_start = *tok.token_id("<|im_start|>"), im_end = *tok.token_id("<|im_end|>"),
            mask = *tok.token_id("|<MASK>|");
  auto ids = tok.encode("<|im_start|>user\nhi<|im_end|>");
  CHECK(ids.front() == im_start);
  CHECK(ids.back() == im_end);
  CHECK(tok.encode("a|<MASK>|b") == std::vector<int>{tok.encode("a")[0], mask, tok.encode("b")[0]});
  // Leftmost wins; a broken special token is plain text.
  CHECK(std::count(ids.begin(), ids.end(), im_end) == 1);
  const auto broken = tok.encode("<|im_end|");
  CHECK(std::find(broken.begin(), broken.end(), im_end) == broken.end());
  CHECK(tok.is_special(mask));
  CHECK(tok.decode(ids) == "<|im_start|>user\nhi<|im_end|>");
  CHECK(tok.decode(ids, /*skip_special=*/true) == "user\nhi");
}

TEST_CASE("added tokens: lstrip and rstrip swallow the whitespace on their side, and the longest at a position wins") {
  auto t = test::tiny_tokenizer();
  auto& added = t.json["added_tokens"];  // <|endoftext|>, <|im_start|>, <|im_end|>, |<MASK>|
  added[1]["rstrip"] = true;
  added[3]["lstrip"] = true;
  const int user = added.back()["id"].get<int>() + 1;
  added.push_back({{"id", user}, {"content", "<|im_start|>user"}, {"special", false}});
  const auto the = tokenizer::detail::to_byte_level(" the");  // "Ġthe", a merged token of the vocabulary
  REQUIRE(t.vocab.count(the) == 1);
  added.push_back({{"id", user + 1}, {"content", the}});
  auto tok = tiny(t);
  CHECK(*tok.token_id(the) == user + 1);  // an added token's text names it, not the vocabulary's token
  tokenizer::Encoder enc(tok);
  // Without the flags, "  b" would be the pieces "  " and " b" (the Qwen2 regex's whitespace rule).
  CHECK(enc.pieces("a  |<MASK>| b") == Pieces{"a", "|<MASK>|", " b"});
  CHECK(enc.pieces("a |<MASK>|  b") == Pieces{"a", "|<MASK>|", " ", " b"});
  CHECK(enc.pieces("<|im_start|>  \tx") == Pieces{"<|im_start|>", "x"});
  CHECK(enc.pieces("x <|im_end|>  y") == Pieces{"x", " ", "<|im_end|>", " ", " y"});
  // Whitespace is Unicode's (U+3000 and U+00A0 before, U+2028 after), as Hugging Face reads it.
  CHECK(enc.pieces("a\u3000\u00a0|<MASK>|b") == Pieces{"a", "|<MASK>|", "b"});
  CHECK(enc.pieces("<|im_start|>\u2028\u00e9") == Pieces{"<|im_start|>", "\u00e9"});
  CHECK(enc.pieces("\u00e9|<MASK>|") == Pieces{"\u00e9", "|<MASK>|"});
  // Whitespace the first token's rstrip took is not the second's to take again.
  CHECK(enc.pieces("a<|im_start|>  |<MASK>|b") == Pieces{"a", "<|im_start|>", "|<MASK>|", "b"});
  // "<|im_start|>" is a prefix of "<|im_start|>user": the longer is matched where both are.
  CHECK(enc.pieces("<|im_start|>user\nhi") == Pieces{"<|im_start|>user", "\n", "hi"});
  CHECK(enc.pieces("<|im_start|>system") == Pieces{"<|im_start|>", "system"});
  CHECK(tok.encode("<|im_start|>user").size() == 1);
  // A token not marked special is kept by decode(skip_special).
  CHECK_FALSE(tok.is_special(user));
  CHECK(tok.decode(tok.encode("<|im_start|>user hi|<MASK>|<|im_end|>"), /*skip_special=*/true) == "<|im_start|>user hi");
}

TEST_CASE("ids that no token has (gaps in the numbering) are not in the vocabulary") {
  auto t = test::tiny_tokenizer();
  const int mask = t.json["added_tokens"][3]["id"].get<int>();
  t.json["added_tokens"][3]["id"] = mask + 5;
  auto tok = tiny(t);
  CHECK(tok.size() == mask + 6);
  CHECK(tok.contains(mask + 5));
  for (int id = mask; id < mask + 5; ++id) {
    CHECK_FALSE(tok.contains(id));
    CHECK_ERROR(tok.decode(std::vector<int>{id}), "is not in the vocabulary");
  }
}

TEST_CASE("a ByteLevel pre-tokenizer of GPT-2's kind: its own regex, and a space before each stretch of text") {
  auto t = test::tiny_tokenizer();
  t.json["normalizer"] = nullptr;
  t.json["pre_tokenizer"] = {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", true}, {"use_regex", true}};
  auto tok = tiny(t);
  tokenizer::Encoder enc(tok);
  // GPT-2's regex keeps a run of digits whole and a space with the word after it.
  CHECK(enc.pieces("it's 2024 now") == Pieces{" it", "'s", " 2024", " now"});
  CHECK(enc.pieces(" hi") == Pieces{" hi"});  // already begins with a space: none added
  CHECK(enc.pieces("a<|im_end|>b") == Pieces{" a", "<|im_end|>", " b"});
  CHECK(tok.decode(tok.encode("a<|im_end|>b")) == " a<|im_end|> b");
  t.json["pre_tokenizer"]["use_regex"] = false;
  t.json["pre_tokenizer"]["add_prefix_space"] = false;
  tokenizer::Encoder whole(tiny(t));
  CHECK(whole.pieces("it's 2024 now") == Pieces{"it's 2024 now"});
}

TEST_CASE("a Split pre-tokenizer in Isolated mode: a literal String, the text between matches, empty matches") {
  auto with_pattern = [](nlohmann::ordered_json pattern) {
    auto t = test::tiny_tokenizer();
    t.json["pre_tokenizer"]["pretokenizers"][0]["pattern"] = std::move(pattern);
    return tiny(t);
  };
  // "+-" is a literal (as a regex it would not compile); what lies between matches is a piece too.
  auto literal = with_pattern({{"String", "+-"}});
  tokenizer::Encoder enc(literal);
  CHECK(enc.pieces("1+-2+-+-34") == Pieces{"1", "+-", "2", "+-", "+-", "34"});
  CHECK(enc.pieces("+-x") == Pieces{"+-", "x"});
  CHECK(literal.decode(literal.encode("1+-2+-+-34")) == "1+-2+-+-34");
  // A regex that can match nothing steps over one whole character where it does.
  auto star = with_pattern({{"Regex", "x*"}});
  tokenizer::Encoder stars(star);
  CHECK(stars.pieces("\u00e9xx\u4e2d") == Pieces{"\u00e9", "xx", "\u4e2d"});
}

TEST_CASE("a merge listed twice keeps its first rank") {
  auto t = test::tiny_tokenizer();
  t.json["model"]["merges"].push_back(t.json["model"]["merges"][0]);
  t.merges.push_back(t.merges[0]);  // the naive reference ranks a pair by its first place too
  auto tok = tiny(t);
  tokenizer::Encoder enc(tok);
  for (auto& piece : enc.pieces(test::tiny_training_text)) {
    INFO("piece \"", piece, "\"");
    CHECK(enc.encode(piece) == test::naive_bpe(t, piece));
  }
}

TEST_CASE("decode(encode(x)) == x for NFC text: every byte, every script") {
  auto tok = tiny(test::tiny_tokenizer());
  std::string all_bytes;
  for (int b = 1; b < 128; ++b) all_bytes += char(b);
  for (std::string s : {all_bytes, std::string("tabs\t\tand   runs\n\n\r\n"), std::string("中文 العربية 👩‍👩‍👧 👍🏽 ﷽"),
                        std::string("x<|endoftext|>y |<MASK>| <|im_end|>"), std::string("q\u0323\u0307 \u0915\u093f")})
    CHECK(tok.decode(tok.encode(s)) == s);
}

TEST_CASE("invalid UTF-8 is repaired, each maximal ill-formed subpart to one U+FFFD (Unicode §3.9)") {
  // The standard's example: 61 F1 80 80 E1 80 C2 62 80 63 80 BF 64.
  const std::string bad = "\x61\xF1\x80\x80\xE1\x80\xC2\x62\x80\x63\x80\xBF\x64";
  const std::string r = "\xEF\xBF\xBD";
  CHECK(tokenizer::utf8::repaired(bad) == "a" + r + r + r + "b" + r + "c" + r + r + "d");
  CHECK(tokenizer::utf8::repaired("\xED\xA0\x80") == r + r + r);  // a surrogate is three subparts
  CHECK(tokenizer::utf8::repaired("\xC0\xAF") == r + r);          // overlong
  CHECK(tokenizer::utf8::valid("a\u00e9\u4e2d\U0001F600"));
  auto tok = tiny(test::tiny_tokenizer());
  CHECK(tok.encode("a\xffz") == tok.encode("a\uFFFDz"));
  CHECK(tok.decode(tok.encode("x\xE2\x82")) == "x\uFFFD");
}

TEST_CASE("UTF-8 validity at every bound of the standard's table of well-formed sequences (Table 3-7)") {
  const std::string r = "\xEF\xBF\xBD";
  struct Case {
    std::string bytes, repaired;
  };
  // The lowest and highest second byte of each lead byte with a narrowed range, one past each,
  // the lowest two-byte lead, and a bad third or fourth byte.
  for (const auto& [bytes, repaired] : std::vector<Case>{
           {"\xC2\x80", "\xC2\x80"},                         {"\xC1\xBF", r + r},
           {"\xE0\xA0\x80", "\xE0\xA0\x80"},                 {"\xE0\x9F\xBF", r + r + r},
           {"\xED\x9F\xBF", "\xED\x9F\xBF"},                 {"\xED\xA0\x80", r + r + r},
           {"\xF0\x90\x80\x80", "\xF0\x90\x80\x80"},         {"\xF0\x8F\xBF\xBF", r + r + r + r},
           {"\xF4\x8F\xBF\xBF", "\xF4\x8F\xBF\xBF"},         {"\xF4\x90\x80\x80", r + r + r + r},
           {"\xE1\x80\x41", r + "A"},                        {"\xF1\x80\x80\x41", r + "A"},
           {"\xF1\x80\xC2\x80", r + "\xC2\x80"}}) {
    INFO("bytes ", tokenizer::detail::to_byte_level(bytes));
    CHECK(tokenizer::utf8::repaired(bytes) == repaired);
    CHECK(tokenizer::utf8::valid(bytes) == (bytes == repaired));
  }
  // What a stream holds back: the start of a character that can still complete, and nothing else.
  CHECK(tokenizer::utf8::incomplete_tail("a\xF0\x9F\x98") == 3);
  CHECK(tokenizer::utf8::incomplete_tail("a\xF0\x9F") == 2);
  CHECK(tokenizer::utf8::incomplete_tail("a\xE4") == 1);
  CHECK(tokenizer::utf8::incomplete_tail("a\xE0\x80") == 0);  // E0 80 never completes
  CHECK(tokenizer::utf8::incomplete_tail("a\xF4\x90") == 0);  // past U+10FFFF
  CHECK(tokenizer::utf8::incomplete_tail("\xF0\x9F\x98\x80") == 0);
}

TEST_CASE("code points of every length, and Unicode's White_Space against PCRE2 over every scalar value") {
  // Code points of each length; Unicode's White_Space against PCRE2's \s in Unicode mode
  // (the Z categories, tab to carriage return, and NEL) over every scalar value, but U+180E, a
  // space separator until Unicode 6.3 that PCRE2 keeps in \s for Perl's sake.
  CHECK(tokenizer::utf8::code_point("A") == U'A');
  CHECK(tokenizer::utf8::code_point("\u00e9x") == U'\u00e9');
  CHECK(tokenizer::utf8::code_point("\u4e2d") == U'\u4e2d');
  CHECK(tokenizer::utf8::code_point("\U0001F600") == U'\U0001F600');
  CHECK(tokenizer::utf8::code_point("\xE0\x80") == U'\uFFFD');
  const auto hex = [](char32_t c) {
    char name[16];
    std::snprintf(name, sizeof name, "U+%04X", static_cast<unsigned>(c));
    return std::string(name);
  };
  const tokenizer::detail::Regex space("^\\s$", "test");
  auto* md = space.make_match_data();
  int spaces = 0;
  for (char32_t c = 0; c <= 0x10FFFF; ++c) {
    if (c >= 0xD800 && c <= 0xDFFF) continue;
    std::string s;
    tokenizer::detail::append_utf8(s, c);
    if (tokenizer::utf8::code_point(s) != c) FAIL_CHECK("code_point misreads ", hex(c));
    const bool pcre2 = c != 0x180E && space.find(s, 0, md).has_value();
    if (pcre2 != tokenizer::utf8::white_space(c)) FAIL_CHECK("white_space disagrees with PCRE2 on ", hex(c));
    spaces += pcre2;
  }
  pcre2_match_data_free(md);
  CHECK(spaces == 25);  // PropList.txt's count
}

TEST_CASE("streaming decode holds back a character cut between tokens") {
  auto tok = tiny(test::tiny_tokenizer());
  const auto ids = tok.encode("é中");  // no merges across these bytes: one token per byte
  REQUIRE(ids.size() == 5);
  tokenizer::StreamDecoder s(tok);
  std::string out;
  std::vector<std::string> got;
  for (int id : ids) got.push_back(s.push(std::span<const int>(&id, 1)));
  CHECK(got == std::vector<std::string>{"", "é", "", "", "中"});
  CHECK(s.flush().empty());
  const int first = ids[2];  // a lone lead byte at the end of the stream
  CHECK(s.push(std::span<const int>(&first, 1)).empty());
  CHECK(s.flush() == "\uFFFD");
  CHECK(tokenizer::utf8::incomplete_tail("a\xC0") == 0);  // never valid: not held
}

TEST_CASE("the embedded models' character vocabulary reads as a tokenizer.json with the same ids") {
  const auto path = std::filesystem::path(BLOCKDIFF_TEST_DATA).parent_path().parent_path() / "models" / "tasks-fdllm2";
  auto tok = Tokenizer::load(path);
  const auto vocab = tokenizer::CharVocab::load(path / "tokenizer.json");
  for (auto& e : train::tasks::make("mix", train::tasks::Split::held_out, 20, 3)) {
    CHECK(tok.encode(e.prompt) == vocab.encode(e.prompt));
    CHECK(tok.decode(vocab.encode(e.response)) == e.response);
  }
  CHECK(*tok.token_id("<|im_end|>") == vocab.eos_id());
  CHECK(*tok.token_id("|<MASK>|") == vocab.mask_id());
  CHECK_ERROR(tok.encode("~"), "the character \"~\" is not in the vocabulary");
}

TEST_CASE("bad tokenizer.json files are errors that name the file and the entry") {
  auto with = [](auto edit) {
    auto t = test::tiny_tokenizer();
    edit(t.json);
    return t.json.dump();
  };
  auto load = [](const std::string& text) { return Tokenizer::from_json(text, "bad/tokenizer.json"); };
  CHECK_ERROR(load("{\"model\": "), "bad/tokenizer.json: not valid JSON");
  CHECK_ERROR(load(with([](auto& j) { j["model"]["type"] = "Unigram"; })), "model type \"Unigram\" is not supported");
  CHECK_ERROR(load(with([](auto& j) { j["model"]["merges"].push_back("zz qq"); })),
              "references unknown token \"zz\"");
  CHECK_ERROR(load(with([](auto& j) { j["model"]["merges"].push_back("a q"); })),
              "makes \"aq\", which is not in the vocabulary");
  CHECK_ERROR(load(with([](auto& j) { j["model"]["merges"].push_back("abc"); })), "is not two tokens separated by a space");
  CHECK_ERROR(load(with([](auto& j) { j["normalizer"] = {{"type", "NFKC"}}; })), "normalizer \"NFKC\" is not supported");
  CHECK_ERROR(load(with([](auto& j) { j["pre_tokenizer"]["pretokenizers"][0]["behavior"] = "Removed"; })),
              "behavior \"Removed\" is not supported");
  CHECK_ERROR(load(with([](auto& j) { j["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = "(unclosed"; })),
              "regex does not compile");
  CHECK_ERROR(load(with([](auto& j) { j["decoder"] = nullptr; })), "disagree on ByteLevel");
  CHECK_ERROR(load(with([](auto& j) { j["model"]["vocab"].erase(tokenizer::detail::to_byte_level("\x01")); })),
              "lacks the token of byte 1");
  CHECK_ERROR(load(with([](auto& j) { j["added_tokens"][0]["single_word"] = true; })), "single_word");
  CHECK_ERROR(load(with([](auto& j) { j["pre_tokenizer"]["pretokenizers"][0]["invert"] = true; })),
              "an inverted Split pre-tokenizer is not supported");
  CHECK_ERROR(load(with([](auto& j) { j["pre_tokenizer"]["pretokenizers"][1]["use_regex"] = true; })),
              "more than one regex pre-tokenizer (ByteLevel use_regex)");
  CHECK_ERROR(load(with([](auto& j) { j["model"]["dropout"] = 0.1; })), "BPE dropout is not supported");
  CHECK_NOTHROW(load(with([](auto& j) { j["model"]["dropout"] = 0.0; })));
  CHECK_ERROR(load(with([](auto& j) { j["model"]["continuing_subword_prefix"] = "##"; })),
              "model.continuing_subword_prefix is not supported (got \"##\")");
  CHECK_ERROR(load(with([](auto& j) { j["model"]["vocab"]["\u4e2d"] = 1000; })),
              "vocabulary token \"\u4e2d\" (id 1000) has a character outside the ByteLevel alphabet");
  for (const char* merge : {" a", "a "})
    CHECK_ERROR(load(with([&](auto& j) { j["model"]["merges"].push_back(merge); })),
                "is not two tokens separated by a space");
  // Fields of the wrong type are errors naming the field, never a JSON library's exception.
  CHECK_ERROR(load(with([](auto& j) { j["pre_tokenizer"]["pretokenizers"][0]["behavior"] = false; })),
              "bad/tokenizer.json: the Split pre-tokenizer's \"behavior\" must be a string, not false");
  CHECK_ERROR(load(with([](auto& j) { j["pre_tokenizer"]["pretokenizers"][0]["invert"] = "no"; })),
              "the Split pre-tokenizer's \"invert\" must be a boolean, not \"no\"");
  CHECK_ERROR(load(with([](auto& j) { j["pre_tokenizer"]["pretokenizers"][1]["use_regex"] = 0; })),
              "the ByteLevel pre_tokenizer's \"use_regex\" must be a boolean, not 0");
  CHECK_ERROR(load(with([](auto& j) { j["added_tokens"][0]["special"] = "yes"; })),
              "added token <|endoftext|>'s \"special\" must be a boolean, not \"yes\"");
  CHECK_ERROR(load(with([](auto& j) { j["model"]["type"] = 3; })), "model.\"type\" must be a string, not 3");
  CHECK_ERROR(load(with([](auto& j) { j["model"]["byte_fallback"] = "false"; })),
              "model.\"byte_fallback\" must be a boolean");
  CHECK_ERROR(load(with([](auto& j) { j["added_tokens"][0]["id"] = (1LL << 32) + 300; })), "has a bad id");
  // The file's structure: each part where it belongs, of the kind it must be.
  CHECK_ERROR(load("[1, 2]"), "bad/tokenizer.json: not a JSON object");
  CHECK_ERROR(load(with([](auto& j) { j.erase("model"); })), "bad/tokenizer.json: missing object \"model\"");
  CHECK_ERROR(load(with([](auto& j) { j["model"].erase("vocab"); })), "bad/tokenizer.json: model.vocab is missing");
  CHECK_ERROR(load(with([](auto& j) { j["model"]["vocab"]["a"] = -1; })), "model.vocab[\"a\"] is not a valid id");
  CHECK_ERROR(load(with([](auto& j) { j["model"]["vocab"]["a"] = "97"; })), "model.vocab[\"a\"] is not a valid id");
  CHECK_ERROR(load(with([](auto& j) { j["added_tokens"] = 5; })), "\"added_tokens\" is not an array");
  CHECK_ERROR(load(with([](auto& j) { j["added_tokens"][0].erase("id"); })),
              "an added token lacks an integer \"id\" or a string \"content\"");
  CHECK_ERROR(load(with([](auto& j) { j["added_tokens"][0]["content"] = 7; })),
              "an added token lacks an integer \"id\" or a string \"content\"");
  CHECK_ERROR(load(with([](auto& j) { j["pre_tokenizer"].erase("pretokenizers"); })),
              "pre_tokenizer Sequence has no array \"pretokenizers\"");
  CHECK_ERROR(load(with([](auto& j) { j["pre_tokenizer"]["pretokenizers"][0].erase("type"); })),
              "the pre_tokenizer has no \"type\"");
  CHECK_ERROR(load(with([](auto& j) { j["pre_tokenizer"]["pretokenizers"][0]["type"] = "Whitespace"; })),
              "pre_tokenizer \"Whitespace\" is not supported");
  CHECK_ERROR(load(with([](auto& j) { j["pre_tokenizer"]["pretokenizers"][0].erase("pattern"); })),
              "Split pre-tokenizer has no pattern");
  CHECK_ERROR(load(with([](auto& j) { j["pre_tokenizer"]["pretokenizers"][0]["pattern"] = {{"Glob", "*"}}; })),
              "Split pattern is neither Regex nor String");
  CHECK_ERROR(load(with([](auto& j) { j["model"]["merges"] = "a b"; })), "model.merges is not an array");
  CHECK_ERROR(load(with([](auto& j) { j["model"]["merges"].emplace_back(std::vector<std::string>{"a"}); })),
              "is neither \"a b\" nor [\"a\", \"b\"]: [\"a\"]");
  CHECK_ERROR(load(with([](auto& j) { j["model"]["merges"].push_back("a zz"); })), "references unknown token \"zz\"");
  // Null means absent, as in files Hugging Face writes.
  CHECK_NOTHROW(load(with([](auto& j) { j["added_tokens"][0]["lstrip"] = nullptr; })));
  auto tok = tiny(test::tiny_tokenizer());
  CHECK_ERROR(tok.decode(std::vector<int>{100000}), "token id 100000 is not in the vocabulary of tiny.json");
  CHECK_ERROR(Tokenizer::load("/nonexistent/folder"), "cannot open");
}
