// Replaces the global operator new / delete with versions that count allocations, so a test or a
// benchmark can say that a step allocates nothing. Include it in exactly one file of a program.
#pragma once

#include <atomic>
#include <cstdlib>
#include <new>

namespace blockdiff::test {
inline std::atomic<long> allocations{0};
}

void* operator new(std::size_t n) {
  ++blockdiff::test::allocations;
  if (void* p = std::malloc(n == 0 ? 1 : n)) return p;
  throw std::bad_alloc();
}
void* operator new(std::size_t n, std::align_val_t a) {
  ++blockdiff::test::allocations;
  const auto align = static_cast<std::size_t>(a);
  if (void* p = std::aligned_alloc(align, (n + align - 1) / align * align)) return p;
  throw std::bad_alloc();
}
// The nothrow forms (std::stable_sort's temporary buffer) allocate as the others do, so that the
// deletes below free what they made.
void* operator new(std::size_t n, const std::nothrow_t&) noexcept {
  try {
    return ::operator new(n);
  } catch (const std::bad_alloc&) {
    return nullptr;
  }
}
void* operator new(std::size_t n, std::align_val_t a, const std::nothrow_t&) noexcept {
  try {
    return ::operator new(n, a);
  } catch (const std::bad_alloc&) {
    return nullptr;
  }
}
// The deletes free what the news above took from malloc and aligned_alloc. GCC, inlining them,
// sees free() called on what `new` returned and warns of a mismatch that this replacement rules out.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
#endif
void operator delete(void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete(void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete(void* p, std::size_t, std::align_val_t) noexcept { std::free(p); }
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
