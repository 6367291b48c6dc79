// Storage dtypes and their exact conversions.
//
// Checkpoints hold F32, BF16 or F16; blockdiff computes in f32 on the host. Conversions to the
// narrow types round to nearest, ties to even (as torch's `.to(bfloat16)` does), keep NaN a NaN
// and saturate to infinity exactly as IEEE 754 says; widening is exact. Both narrow types are
// plain 16-bit words so that they can be memory-mapped straight from a safetensors file.
#pragma once

#include <algorithm>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string_view>
#include <type_traits>

#include "blockdiff/core/error.hpp"
#include "blockdiff/core/macros.hpp"
#include "blockdiff/core/threads.hpp"

namespace blockdiff {

//! bfloat16: 1 sign, 8 exponent, 7 mantissa bits (the top half of an f32).
struct bf16 {
  std::uint16_t bits = 0;
};
//! IEEE 754 half precision: 1 sign, 5 exponent, 10 mantissa bits.
struct f16 {
  std::uint16_t bits = 0;
};

//! The identity, so that generic code can widen any floating-point storage type with to_float.
BLOCKDIFF_HOST_DEVICE inline float to_float(float x) { return x; }

BLOCKDIFF_HOST_DEVICE inline float to_float(bf16 x) {
  return std::bit_cast<float>(static_cast<std::uint32_t>(x.bits) << 16);
}

BLOCKDIFF_HOST_DEVICE inline bf16 to_bf16(float x) {
  std::uint32_t u = std::bit_cast<std::uint32_t>(x);
  if ((u & 0x7fffffffu) > 0x7f800000u) return bf16{static_cast<std::uint16_t>((u >> 16) | 0x40u)};  // quiet NaN
  const std::uint32_t lsb = (u >> 16) & 1u;
  u += 0x7fffu + lsb;  // round to nearest, ties to even; overflow carries into infinity
  return bf16{static_cast<std::uint16_t>(u >> 16)};
}

BLOCKDIFF_HOST_DEVICE inline float to_float(f16 x) {
  const std::uint32_t sign = static_cast<std::uint32_t>(x.bits & 0x8000u) << 16;
  const std::uint32_t exp = (x.bits >> 10) & 0x1fu;
  std::uint32_t mant = x.bits & 0x3ffu;
  if (exp == 0x1f) return std::bit_cast<float>(sign | 0x7f800000u | (mant << 13));  // inf, NaN
  if (exp != 0) return std::bit_cast<float>(sign | ((exp + 112u) << 23) | (mant << 13));
  if (mant == 0) return std::bit_cast<float>(sign);  // signed zero
  // Subnormal half: normalise into an f32 exponent.
  int e = -1;
  do {
    ++e;
    mant <<= 1;
  } while ((mant & 0x400u) == 0);
  return std::bit_cast<float>(sign | (static_cast<std::uint32_t>(112 - e) << 23) | ((mant & 0x3ffu) << 13));
}

BLOCKDIFF_HOST_DEVICE inline f16 to_f16(float x) {
  const std::uint32_t u = std::bit_cast<std::uint32_t>(x);
  const std::uint16_t sign = static_cast<std::uint16_t>((u >> 16) & 0x8000u);
  const std::uint32_t abs = u & 0x7fffffffu;
  if (abs > 0x7f800000u) return f16{static_cast<std::uint16_t>(sign | 0x7e00u | ((abs >> 13) & 0x3ffu))};
  if (abs >= 0x477ff000u) return f16{static_cast<std::uint16_t>(sign | 0x7c00u)};  // rounds to inf
  if (abs < 0x38800000u) {
    // Result is subnormal (or zero): shift the implicit-one mantissa into place, round to even.
    if (abs < 0x33000000u) return f16{sign};  // below half the smallest subnormal
    const std::uint32_t exp = abs >> 23;
    const std::uint32_t mant = (abs & 0x7fffffu) | 0x800000u;
    const std::uint32_t shift = 126u - exp;  // value / 2^-24 == mant * 2^(exp - 126)
    const std::uint32_t half_bits = mant >> shift;
    const std::uint32_t rest = mant & ((1u << shift) - 1u);
    const std::uint32_t halfway = 1u << (shift - 1u);
    std::uint32_t r = half_bits;
    if (rest > halfway || (rest == halfway && (half_bits & 1u))) ++r;
    return f16{static_cast<std::uint16_t>(sign | r)};
  }
  // Normal: rebias the exponent, round the 13 dropped mantissa bits to even.
  std::uint32_t v = abs - 0x38000000u;  // exponent 127 -> 15
  v += 0xfffu + ((v >> 13) & 1u);
  return f16{static_cast<std::uint16_t>(sign | (v >> 13))};
}

//! The dtypes a safetensors file may hold that blockdiff reads.
enum class DType : std::uint8_t { f32, bf16, f16, i32, i64, u8 };

constexpr std::size_t size_of(DType t) {
  switch (t) {
    case DType::f32: return 4;
    case DType::bf16: return 2;
    case DType::f16: return 2;
    case DType::i32: return 4;
    case DType::i64: return 8;
    case DType::u8: return 1;
  }
  return 0;
}

//! The safetensors spelling of a dtype ("F32", "BF16", ...).
constexpr std::string_view name_of(DType t) {
  switch (t) {
    case DType::f32: return "F32";
    case DType::bf16: return "BF16";
    case DType::f16: return "F16";
    case DType::i32: return "I32";
    case DType::i64: return "I64";
    case DType::u8: return "U8";
  }
  return "?";
}

//! Parses a safetensors dtype name; throws naming `where` for an unknown one.
inline DType parse_dtype(std::string_view name, std::string_view where) {
  for (DType t : {DType::f32, DType::bf16, DType::f16, DType::i32, DType::i64, DType::u8})
    if (name == name_of(t)) return t;
  fail(where, ": unknown or unsupported dtype \"", name, "\" (supported: F32, BF16, F16, I32, I64, U8)");
}

template <class T>
constexpr DType dtype_of();
template <> constexpr DType dtype_of<float>() { return DType::f32; }
template <> constexpr DType dtype_of<bf16>() { return DType::bf16; }
template <> constexpr DType dtype_of<f16>() { return DType::f16; }
template <> constexpr DType dtype_of<std::int32_t>() { return DType::i32; }
template <> constexpr DType dtype_of<std::int64_t>() { return DType::i64; }
template <> constexpr DType dtype_of<std::uint8_t>() { return DType::u8; }

namespace detail {
// Runs body(begin, end) over [0, n) in chunks of 2^20 values, split over the OpenMP threads.
template <class Body>
void for_chunks(std::size_t n, Body&& body) {
  constexpr std::size_t chunk = std::size_t{1} << 20;
  const auto chunks = static_cast<std::int64_t>((n + chunk - 1) / chunk);
  parallel_for(chunks, chunks > 1, [&](std::int64_t c) {
    const std::size_t begin = std::size_t(c) * chunk;
    body(begin, std::min(begin + chunk, n));
  });
}
// The i-th 16-bit little-endian word at `s` (any alignment).
inline std::uint16_t word_at(const unsigned char* s, std::size_t i) {
  return static_cast<std::uint16_t>(s[2 * i] | (s[2 * i + 1] << 8));
}
}  // namespace detail

//! Converts `n` floating-point values of dtype `from` (raw little-endian bytes, any alignment)
//! into T, f32 or BF16: the same dtype is copied, widening is exact (BF16 to f32 is a shift,
//! vectorised), and narrowing to BF16 rounds to nearest, ties to even, as to_bf16 does. Large
//! conversions are split over the OpenMP threads.
template <class T>
void convert_to(DType from, const void* src, T* dst, std::size_t n) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, bf16>, "convert_to: T is float or bf16");
  const auto* s = static_cast<const unsigned char*>(src);
  auto store = [](float v) {
    if constexpr (std::is_same_v<T, float>) return v;
    else return to_bf16(v);
  };
  if (from == dtype_of<T>()) {
    detail::for_chunks(n, [&](std::size_t b, std::size_t e) { std::memcpy(dst + b, s + sizeof(T) * b, sizeof(T) * (e - b)); });
    return;
  }
  switch (from) {
    case DType::f32:
      detail::for_chunks(n, [&](std::size_t b, std::size_t e) {
        for (std::size_t i = b; i < e; ++i) {
          float v;
          std::memcpy(&v, s + 4 * i, 4);
          dst[i] = store(v);
        }
      });
      return;
    case DType::bf16:
      detail::for_chunks(n, [&](std::size_t b, std::size_t e) {
        for (std::size_t i = b; i < e; ++i) dst[i] = store(to_float(bf16{detail::word_at(s, i)}));
      });
      return;
    case DType::f16:
      detail::for_chunks(n, [&](std::size_t b, std::size_t e) {
        for (std::size_t i = b; i < e; ++i) dst[i] = store(to_float(f16{detail::word_at(s, i)}));
      });
      return;
    default: fail("convert_to ", name_of(dtype_of<T>()), ": dtype ", name_of(from), " is not a floating-point dtype");
  }
}

//! convert_to<float>: the widening every f32 load does.
inline void convert_to_f32(DType from, const void* src, float* dst, std::size_t n) { convert_to<float>(from, src, dst, n); }

}  // namespace blockdiff
