// UTF-8 helpers of the tokenizer: repairing invalid input and finding where a byte stream can be
// cut without splitting a character.
//
// Invalid input is repaired, not rejected, as Hugging Face does for bytes (`from_utf8_lossy`):
// each maximal ill-formed subpart becomes one U+FFFD, the Unicode standard's recommended practice
// (Unicode 15, §3.9, "U+FFFD Substitution of Maximal Subparts").
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace blockdiff::tokenizer::utf8 {

inline constexpr std::string_view replacement = "\xEF\xBF\xBD";  // U+FFFD

//! Length of the well-formed sequence at the start of `s`, or the negated length of its maximal
//! ill-formed subpart (at least 1 byte); 0 only for an empty `s`. A subpart that is a valid prefix
//! cut short by the end of `s` is reported as ill-formed too (callers that stream check
//! `incomplete_tail` first).
constexpr int sequence_length(std::string_view s) {
  if (s.empty()) return 0;
  const auto b0 = static_cast<unsigned char>(s[0]);
  if (b0 < 0x80) return 1;
  int need = 0;
  unsigned char lo = 0x80, hi = 0xBF;  // the range of the second byte (Table 3-7 of the standard)
  if (b0 >= 0xC2 && b0 <= 0xDF) need = 1;
  else if (b0 == 0xE0) need = 2, lo = 0xA0;
  else if (b0 >= 0xE1 && b0 <= 0xEC) need = 2;
  else if (b0 == 0xED) need = 2, hi = 0x9F;
  else if (b0 >= 0xEE && b0 <= 0xEF) need = 2;
  else if (b0 == 0xF0) need = 3, lo = 0x90;
  else if (b0 >= 0xF1 && b0 <= 0xF3) need = 3;
  else if (b0 == 0xF4) need = 3, hi = 0x8F;
  else return -1;
  for (int i = 1; i <= need; ++i) {
    if (static_cast<std::size_t>(i) >= s.size()) return -i;
    const auto b = static_cast<unsigned char>(s[static_cast<std::size_t>(i)]);
    if (b < (i == 1 ? lo : 0x80) || b > (i == 1 ? hi : 0xBF)) return -i;
  }
  return need + 1;
}

//! The code point that `s` begins with, U+FFFD where it begins with no well-formed sequence.
constexpr char32_t code_point(std::string_view s) {
  const auto byte = [&](std::size_t i) { return static_cast<char32_t>(static_cast<unsigned char>(s[i])); };
  switch (sequence_length(s)) {
    case 1: return byte(0);
    case 2: return (byte(0) & 0x1F) << 6 | (byte(1) & 0x3F);
    case 3: return (byte(0) & 0x0F) << 12 | (byte(1) & 0x3F) << 6 | (byte(2) & 0x3F);
    case 4: return (byte(0) & 0x07) << 18 | (byte(1) & 0x3F) << 12 | (byte(2) & 0x3F) << 6 | (byte(3) & 0x3F);
    default: return 0xFFFD;
  }
}

//! Unicode's White_Space property (PropList.txt), as Rust's char::is_whitespace and so Hugging
//! Face's added tokens read it.
constexpr bool white_space(char32_t c) {
  return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 || (c >= 0x2000 && c <= 0x200A) ||
         c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

//! True when `s` is well-formed UTF-8.
constexpr bool valid(std::string_view s) {
  for (std::size_t i = 0; i < s.size();) {
    const int n = sequence_length(s.substr(i));
    if (n <= 0) return false;
    i += static_cast<std::size_t>(n);
  }
  return true;
}

//! `s` with every maximal ill-formed subpart replaced by U+FFFD.
inline std::string repaired(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (std::size_t i = 0; i < s.size();) {
    const int n = sequence_length(s.substr(i));
    if (n > 0) {
      out.append(s.substr(i, static_cast<std::size_t>(n)));
      i += static_cast<std::size_t>(n);
    } else {
      out.append(replacement);
      i += static_cast<std::size_t>(-n);
    }
  }
  return out;
}

//! Bytes at the end of `s` that begin a well-formed sequence but stop before its end (0 to 3):
//! what a streaming decoder holds back until the next token completes it.
constexpr std::size_t incomplete_tail(std::string_view s) {
  for (std::size_t back = 1; back <= 3 && back <= s.size(); ++back) {
    const auto b = static_cast<unsigned char>(s[s.size() - back]);
    if ((b & 0xC0) == 0x80) continue;  // a continuation byte: look further back
    if (b < 0xC2 || b > 0xF4) return 0;  // ASCII, or a byte that never begins a sequence
    // A lead byte: the tail is incomplete when it is a valid prefix shorter than its sequence.
    const int n = sequence_length(s.substr(s.size() - back));
    return n == -static_cast<int>(back) ? back : 0;
  }
  return 0;
}

}  // namespace blockdiff::tokenizer::utf8
