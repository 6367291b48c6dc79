// Typed reads of optional JSON fields, for the files blockdiff reads (tokenizer.json,
// trainer_state.json, ...). nlohmann's own `value(key, fallback)` throws its type_error when the
// field is present with another type; `io::optional_field` throws blockdiff::Error instead, naming
// the file, the field and what it holds.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <type_traits>

#include "blockdiff/core/error.hpp"

namespace blockdiff::io {

namespace detail {
template <class T>
constexpr const char* json_kind() {
  if constexpr (std::is_same_v<T, bool>) {
    return "a boolean";
  } else if constexpr (std::is_same_v<T, std::string>) {
    return "a string";
  } else if constexpr (std::is_integral_v<T>) {
    return "an integer";
  } else {
    static_assert(std::is_floating_point_v<T>, "optional_field reads booleans, strings, integers and numbers");
    return "a number";
  }
}

template <class T>
bool json_holds(const nlohmann::json& v) {
  if constexpr (std::is_same_v<T, bool>) {
    return v.is_boolean();
  } else if constexpr (std::is_same_v<T, std::string>) {
    return v.is_string();
  } else if constexpr (std::is_integral_v<T>) {
    return v.is_number_integer();
  } else {
    return v.is_number();
  }
}
}  // namespace detail

//! `object[key]` as T, or `fallback` where `object` has no such field or it is null. A field of
//! another type is an error: "<where>: <what>"<key>" must be a boolean, not "yes"".
//! `what` prefixes the key in the message (e.g. "model." or "the pre_tokenizer's ").
template <class T>
T optional_field(const nlohmann::json& object, std::string_view key, T fallback, std::string_view where,
                 std::string_view what = {}) {
  const auto it = object.find(key);
  if (it == object.end() || it->is_null()) return fallback;
  require(detail::json_holds<T>(*it), where, ": ", what, "\"", key, "\" must be ", detail::json_kind<T>(), ", not ",
          it->dump());
  return it->template get<T>();
}

//! Whether `v` is an integer in [lo, hi], read as 64 bits so that a larger one cannot wrap into
//! range (a non-negative integer is held unsigned, up to 2^64 − 1: it is compared as such).
inline bool holds_integer_in(const nlohmann::json& v, std::int64_t lo, std::int64_t hi) {
  if (v.is_number_unsigned()) {
    const auto u = v.get<std::uint64_t>();
    return hi >= 0 && u <= static_cast<std::uint64_t>(hi) && (lo <= 0 || u >= static_cast<std::uint64_t>(lo));
  }
  return v.is_number_integer() && v.get<std::int64_t>() >= lo && v.get<std::int64_t>() <= hi;
}

}  // namespace blockdiff::io
