// Portability macros shared by host and device code.
//
// BLOCKDIFF_HOST_DEVICE lets a policy or a small helper run unchanged on the host and inside a
// CUDA kernel, so the host reference and the kernel share one definition. Without nvcc it
// collapses to nothing, and every `.hpp` stays plain C++20.
#pragma once

#if defined(__CUDACC__)
#define BLOCKDIFF_HOST_DEVICE __host__ __device__
#else
#define BLOCKDIFF_HOST_DEVICE
#endif

// A loop-unrolling hint for GCC and Clang; nothing in CUDA translation units, whose front end
// does not know it.
#define BLOCKDIFF_PRAGMA(text) _Pragma(#text)
#if defined(__CUDACC__)
#define BLOCKDIFF_UNROLL(n)
#else
#define BLOCKDIFF_UNROLL(n) BLOCKDIFF_PRAGMA(GCC unroll n)
#endif

namespace blockdiff::detail {
//! A false that depends on template arguments, for static_asserts in primary templates.
template <class...>
inline constexpr bool dependent_false = false;
}  // namespace blockdiff::detail
