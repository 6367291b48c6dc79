// blockdiff::Error: the one exception type thrown at input boundaries.
//
// Messages name the file, tensor, field or flag at fault and what was expected, so that a user
// who passes a bad checkpoint or a bad prompt can fix it without reading the source.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace blockdiff {

//! Thrown for every invalid input: files, configs, prompts, flags.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

namespace detail {
template <class... Parts>
std::string concat(Parts&&... parts) {
  std::ostringstream out;
  (out << ... << std::forward<Parts>(parts));
  return out.str();
}
}  // namespace detail

//! Throws blockdiff::Error with the message formed by streaming every part.
template <class... Parts>
[[noreturn]] void fail(Parts&&... parts) {
  throw Error(detail::concat(std::forward<Parts>(parts)...));
}

//! Throws blockdiff::Error unless `condition` holds.
template <class... Parts>
void require(bool condition, Parts&&... parts) {
  if (!condition) fail(std::forward<Parts>(parts)...);
}

}  // namespace blockdiff
