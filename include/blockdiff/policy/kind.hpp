// Policy kinds: each policy says what it is, so a policy in the wrong slot fails with one line.
//
// A policy declares `using policy_kind = kind::unmasking;` (or noise_schedule, cache,
// block_shape, objective). The concepts check that tag first; the decoder's static_asserts then say which
// slot wanted which kind, instead of a page of substitution failures.
#pragma once

#include <concepts>

namespace blockdiff::kind {
struct unmasking {};
struct noise_schedule {};
struct cache {};
struct block_shape {};
struct objective {};
}  // namespace blockdiff::kind

namespace blockdiff {

//! True when P declares a policy_kind.
template <class P>
concept Policy = requires { typename P::policy_kind; };

//! True when P declares `policy_kind` equal to Kind.
template <class P, class Kind>
concept PolicyOfKind = Policy<P> && std::same_as<typename P::policy_kind, Kind>;

}  // namespace blockdiff
