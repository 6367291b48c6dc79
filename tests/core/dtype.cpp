// dtype conversions against independent references: exhaustive round trips of every 16-bit
// pattern, and f32 -> narrow rounding checked against "nearest representable value, ties to
// even" found by search over the narrow type's values in double precision.
#include <doctest/doctest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "../support/check_error.hpp"
#include "blockdiff/core/dtype.hpp"
#include "blockdiff/core/rng.hpp"

using namespace blockdiff;

namespace {
// Every finite non-negative value of a 16-bit type, ascending, with its bits.
template <class T>
std::vector<std::pair<double, std::uint16_t>> finite_values() {
  std::vector<std::pair<double, std::uint16_t>> v;
  for (std::uint32_t b = 0; b < 0x8000u; ++b) {
    const float f = to_float(T{static_cast<std::uint16_t>(b)});
    if (std::isfinite(f)) v.emplace_back(static_cast<double>(f), static_cast<std::uint16_t>(b));
  }
  std::sort(v.begin(), v.end());
  return v;
}

// The reference rounding: nearest finite value, ties to the even bit pattern, overflow to inf
// when |x| >= max + half an ulp of max.
template <class T>
std::uint16_t reference_round(float x, const std::vector<std::pair<double, std::uint16_t>>& table,
                              std::uint16_t inf_bits) {
  const double a = std::fabs(static_cast<double>(x));
  const std::uint16_t sign = std::signbit(x) ? 0x8000u : 0u;
  const double max = table.back().first;
  const double ulp = max - table[table.size() - 2].first;
  if (a >= max + ulp / 2) return sign | inf_bits;
  auto it = std::lower_bound(table.begin(), table.end(), std::make_pair(a, std::uint16_t{0}));
  if (it == table.end()) return sign | table.back().second;
  if (it->first == a || it == table.begin()) return sign | it->second;
  auto lo = std::prev(it);
  const double dl = a - lo->first, dh = it->first - a;
  if (dl < dh) return sign | lo->second;
  if (dh < dl) return sign | it->second;
  return sign | ((lo->second & 1u) == 0 ? lo->second : it->second);
}
}  // namespace

TEST_CASE("bf16: every bit pattern widens exactly and narrows back to itself") {
  for (std::uint32_t b = 0; b < 0x10000u; ++b) {
    const bf16 h{static_cast<std::uint16_t>(b)};
    const float f = to_float(h);
    CHECK(std::bit_cast<std::uint32_t>(f) == (b << 16));
    if (std::isnan(f))
      CHECK(std::isnan(to_float(to_bf16(f))));
    else
      CHECK(to_bf16(f).bits == b);
  }
}

TEST_CASE("f16: every bit pattern round-trips through f32") {
  for (std::uint32_t b = 0; b < 0x10000u; ++b) {
    const f16 h{static_cast<std::uint16_t>(b)};
    const float f = to_float(h);
    if (std::isnan(f)) {
      CHECK(std::isnan(to_float(to_f16(f))));
      continue;
    }
    REQUIRE(to_f16(f).bits == b);
  }
  CHECK(to_float(f16{0x3c00}) == 1.0f);
  CHECK(to_float(f16{0x0001}) == std::ldexp(1.0f, -24));  // smallest subnormal
  CHECK(to_float(f16{0x7bff}) == 65504.0f);
  CHECK(std::isinf(to_float(f16{0x7c00})));
}

TEST_CASE("f32 -> bf16 and f16 round to nearest, ties to even, against a search reference") {
  const auto bf_table = finite_values<bf16>();
  const auto h_table = finite_values<f16>();
  Rng rng(7);
  std::vector<float> xs{0.0f, -0.0f, 1.0f, 1.00390625f /* 1 + 2^-8: a bf16 tie */, 1.01171875f,
                        65504.0f, 65519.9f, 65520.0f, std::ldexp(1.0f, -25), std::ldexp(1.5f, -25),
                        std::ldexp(1.0f, -24), 3.4e38f, std::numeric_limits<float>::max(),
                        std::numeric_limits<float>::denorm_min(), 1.0f + std::ldexp(1.0f, -11) /* f16 tie */};
  for (int i = 0; i < 200000; ++i) {
    const auto bits = static_cast<std::uint32_t>(rng.next());
    const float f = std::bit_cast<float>(bits);
    if (std::isfinite(f)) xs.push_back(f);
    xs.push_back(static_cast<float>((rng.uniform_double() - 0.5) * std::ldexp(1.0, static_cast<int>(rng.below(60)) - 30)));
  }
  for (float x : xs) {
    INFO("x = ", x);
    CHECK(to_bf16(x).bits == reference_round<bf16>(x, bf_table, 0x7f80u));
    CHECK(to_f16(x).bits == reference_round<f16>(x, h_table, 0x7c00u));
  }
  CHECK(std::isinf(to_float(to_bf16(std::numeric_limits<float>::infinity()))));
  CHECK(std::isnan(to_float(to_bf16(std::numeric_limits<float>::quiet_NaN()))));
  // A NaN whose payload lies only in the bits a narrow type drops stays a NaN, of either sign.
  for (std::uint32_t bits : {0x7f800001u, 0xff800001u, 0x7f80ffffu, 0x7f808000u}) {
    CHECK(std::isnan(to_float(to_bf16(std::bit_cast<float>(bits)))));
    CHECK(std::isnan(to_float(to_f16(std::bit_cast<float>(bits)))));
  }
  CHECK(std::isnan(to_float(to_f16(std::numeric_limits<float>::quiet_NaN()))));
}

TEST_CASE("convert_to: raw F32, BF16 and F16 bytes into f32 and BF16, as the scalar conversions do, over several chunks") {
  const std::size_t n = (std::size_t{5} << 19) + 3;  // two and a half chunks of 2^20
  std::vector<float> f32(n);
  std::vector<bf16> b16(n);
  std::vector<f16> h16(n);
  std::uint32_t state = 12345;
  for (std::size_t i = 0; i < n; ++i) {
    state = state * 1664525u + 1013904223u;
    f32[i] = static_cast<float>(static_cast<std::int32_t>(state)) * 1e-7f;
    b16[i] = to_bf16(f32[i] * 0.75f);
    h16[i] = to_f16(f32[i] * 0.001f);
  }
  std::vector<bf16> out(n);
  std::vector<float> wide(n);
  auto mismatches = [&](auto expect) {
    std::size_t bad = 0;
    for (std::size_t i = 0; i < n; ++i) bad += out[i].bits != expect(i).bits;
    return bad;
  };
  convert_to(DType::f32, f32.data(), out.data(), n);
  CHECK(mismatches([&](std::size_t i) { return to_bf16(f32[i]); }) == 0);
  convert_to(DType::bf16, b16.data(), out.data(), n);
  CHECK(mismatches([&](std::size_t i) { return b16[i]; }) == 0);
  convert_to(DType::f16, h16.data(), out.data(), n);
  CHECK(mismatches([&](std::size_t i) { return to_bf16(to_float(h16[i])); }) == 0);
  convert_to(DType::bf16, b16.data(), wide.data(), n);
  std::size_t bad = 0;
  for (std::size_t i = 0; i < n; ++i) bad += wide[i] != to_float(b16[i]);
  CHECK(bad == 0);
  CHECK_ERROR(convert_to(DType::i32, f32.data(), out.data(), 4), "convert_to BF16: dtype I32 is not a floating-point dtype");
}

TEST_CASE("dtype names parse, and an unknown one is named in the error") {
  CHECK(parse_dtype("BF16", "t") == DType::bf16);
  CHECK(size_of(DType::i64) == 8);
  CHECK_THROWS_AS(parse_dtype("F8_E4M3", "w.safetensors: tensor \"x\""), Error);
}
