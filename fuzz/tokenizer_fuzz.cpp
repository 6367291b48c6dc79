// libFuzzer: the tokenizer. Inputs starting with '{' are read as a tokenizer.json, which must load
// or throw blockdiff::Error (and, loaded, encode and decode a fixed text); any other input is text
// for a small Qwen2-layout tokenizer, for which decode(encode(x)) must equal NFC(repaired(x)).
#include <utf8proc.h>

#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "../tests/support/tiny_tokenizer.hpp"
#include "blockdiff/tokenizer/tokenizer.hpp"

using blockdiff::tokenizer::Tokenizer;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view input(reinterpret_cast<const char*>(data), size);
  if (!input.empty() && input.front() == '{') {
    try {
      const auto tok = Tokenizer::from_json(input, "fuzz.json");
      const auto ids = tok.encode("Hello, world! 123 \xE4\xB8\xAD\xE6\x96\x87 <|im_end|>");
      (void)tok.decode(ids);
    } catch (const blockdiff::Error&) {
    }
    return 0;
  }
  static const Tokenizer tok = Tokenizer::from_json(blockdiff::test::tiny_tokenizer().json.dump(), "tiny.json");
  const auto text = blockdiff::tokenizer::utf8::repaired(input);
  utf8proc_uint8_t* nfc = nullptr;
  const auto n = utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(text.data()), utf8proc_ssize_t(text.size()), &nfc,
                              utf8proc_option_t(UTF8PROC_STABLE | UTF8PROC_COMPOSE));
  if (n < 0) std::abort();
  // NFC applies between added tokens, so compare only texts without them.
  const bool has_added = text.find("<|") != std::string::npos || text.find("|<MASK>|") != std::string::npos;
  const auto round = tok.decode(tok.encode(input));
  if (!has_added && round != std::string(reinterpret_cast<const char*>(nfc), std::size_t(n))) std::abort();
  std::free(nfc);
  return 0;
}
