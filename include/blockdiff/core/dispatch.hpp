// dispatch_value: the one bridge from a runtime value to a template argument.
//
// `dispatch_value<4, 8, 16, 32, 64>(block, [&]<int B>() { ... })` calls the lambda with B equal
// to `block` when `block` is in the list, and throws an Error that lists the supported values
// otherwise. Every set of shapes compiled into a program goes through here, so the compiled set
// is visible in one place and an unsupported value is a clear error, never a silent fallback.
#pragma once

#include <string>
#include <string_view>
#include <type_traits>
#include <utility>

#include "blockdiff/core/error.hpp"

namespace blockdiff {

//! The supported values as "4, 8, 16".
template <auto... Values>
std::string supported_values() {
  std::string s;
  ((s += s.empty() ? "" : ", ", s += std::to_string(Values)), ...);
  return s;
}

template <auto First, auto...>
inline constexpr auto first_value = First;

//! Calls `f.template operator()<V>()` for the V in Values equal to `value`; throws otherwise.
template <auto... Values, class F>
decltype(auto) dispatch_value(auto value, F&& f, std::string_view what = "value") {
  using R = decltype(f.template operator()<first_value<Values...>>());
  if constexpr (std::is_void_v<R>) {
    const bool found = ((value == Values ? (f.template operator()<Values>(), true) : false) || ...);
    if (!found) fail(what, " ", value, " is not compiled in (supported: ", supported_values<Values...>(), ")");
  } else {
    R result{};
    const bool found = ((value == Values ? (result = f.template operator()<Values>(), true) : false) || ...);
    if (!found) fail(what, " ", value, " is not compiled in (supported: ", supported_values<Values...>(), ")");
    return result;
  }
}

}  // namespace blockdiff
