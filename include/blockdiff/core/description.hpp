// description(x): a policy, a noise schedule or a training objective as a run records it (so
// that a resume can refuse another): `x.describe()` where its type has one, naming the
// parameters it was given, else its type's name.
#pragma once

#include <concepts>
#include <string>

namespace blockdiff {

template <class T>
std::string description(const T& x) {
  if constexpr (requires { { x.describe() } -> std::convertible_to<std::string>; })
    return x.describe();
  else
    return T::name;
}

}  // namespace blockdiff
