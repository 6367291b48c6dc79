// Tensor views and owning buffers.
//
// A TensorView is a non-owning, row-major view with up to four dimensions; it never allocates
// and never outlives its storage. A Buffer owns 64-byte-aligned storage (so Eigen and SIMD loads
// are aligned) and hands out views. Shapes are checked on construction: a view whose extents do
// not match its storage is a programming error reported through blockdiff::Error.
#pragma once

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <initializer_list>
#include <memory>
#include <new>
#if defined(__linux__)
#include <sys/mman.h>
#endif
#include <span>
#include <string>
#include <type_traits>

#include "blockdiff/core/error.hpp"

namespace blockdiff {

//! Extents as "[2, 3, 4]", for messages.
inline std::string shape_text(std::span<const std::int64_t> dims) {
  std::string s = "[";
  for (std::size_t i = 0; i < dims.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(dims[i]);
  }
  return s + "]";
}

//! Up to four extents, row-major.
struct Shape {
  std::array<std::int64_t, 4> dims{1, 1, 1, 1};
  int rank = 0;

  Shape() = default;
  Shape(std::initializer_list<std::int64_t> extents) {
    require(extents.size() <= 4, "Shape: at most 4 dimensions, got ", extents.size());
    for (std::int64_t e : extents) {
      require(e >= 0, "Shape: negative extent ", e);
      dims[static_cast<std::size_t>(rank++)] = e;
    }
  }
  std::int64_t operator[](int i) const { return dims[static_cast<std::size_t>(i)]; }
  std::int64_t numel() const {
    std::int64_t n = 1;
    for (int i = 0; i < rank; ++i) n *= dims[static_cast<std::size_t>(i)];
    return n;
  }
  friend bool operator==(const Shape& a, const Shape& b) {
    if (a.rank != b.rank) return false;
    for (int i = 0; i < a.rank; ++i)
      if (a[i] != b[i]) return false;
    return true;
  }
  std::string str() const { return shape_text(std::span(dims.data(), static_cast<std::size_t>(rank))); }
};

//! Non-owning row-major view of `shape.numel()` elements of T.
template <class T>
class TensorView {
 public:
  TensorView() = default;
  TensorView(T* data, Shape shape) : data_(data), shape_(shape) {}

  T* data() const { return data_; }
  const Shape& shape() const { return shape_; }
  std::int64_t numel() const { return shape_.numel(); }
  std::int64_t dim(int i) const { return shape_[i]; }
  std::span<T> span() const { return {data_, static_cast<std::size_t>(numel())}; }

  //! Row `i` of a rank-2 view.
  T* row(std::int64_t i) const { return data_ + i * shape_[1]; }
  T& operator()(std::int64_t i) const { return data_[i]; }
  T& operator()(std::int64_t i, std::int64_t j) const { return data_[i * shape_[1] + j]; }
  T& operator()(std::int64_t i, std::int64_t j, std::int64_t k) const {
    return data_[(i * shape_[1] + j) * shape_[2] + k];
  }
  template <class U = T>
    requires(!std::is_const_v<U>)
  operator TensorView<const U>() const {
    return {data_, shape_};
  }

 private:
  T* data_ = nullptr;
  Shape shape_{};
};

namespace detail {
inline constexpr std::size_t huge_page = std::size_t{2} << 20;

//! Host storage: 64-byte aligned; from 2 MiB up, aligned to and backed by transparent huge pages
//! where the kernel has them (a weight matrix then costs one page fault per 2 MiB, not per 4 KiB).
inline void* allocate_host(std::size_t bytes) {
  if (bytes < huge_page) return ::operator new(bytes, std::align_val_t{64});
  const std::size_t rounded = (bytes + huge_page - 1) / huge_page * huge_page;
  void* p = ::operator new(rounded, std::align_val_t{huge_page});
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  ::madvise(p, rounded, MADV_HUGEPAGE);
#endif
  return p;
}

struct AlignedFree {
  std::size_t bytes = 0;
  bool owned = true;  // false: borrowed memory, kept alive by the buffer's owner
  void operator()(void* p) const {
    if (owned) ::operator delete(p, std::align_val_t{bytes < huge_page ? std::size_t{64} : huge_page});
  }
};
}  // namespace detail

//! Owning, 64-byte-aligned, zero-initialised storage for host tensors; or, made by `borrow`, a
//! view of memory that a shared owner keeps alive (weights used in place from a mapped file).
template <class T>
class Buffer {
 public:
  Buffer() = default;
  explicit Buffer(Shape shape) { reset(shape); }

  //! A buffer over shape.numel() elements at `data`, which it does not own: `owner` keeps them
  //! alive as long as any buffer made from it lives. Alignment is T's only. Growing it
  //! (reset/resize to more elements) allocates owned storage as usual.
  static Buffer borrow(T* data, Shape shape, std::shared_ptr<const void> owner) {
    Buffer b;
    b.data_ = {data, detail::AlignedFree{0, false}};
    b.capacity_ = static_cast<std::size_t>(shape.numel());
    b.shape_ = shape;
    b.owner_ = std::move(owner);
    return b;
  }
  //! Whether the elements are borrowed (see `borrow`) rather than owned.
  bool borrowed() const { return owner_ != nullptr; }

  //! Reallocates only when the new shape needs more elements than the current capacity.
  void reset(Shape shape) {
    const auto n = static_cast<std::size_t>(shape.numel());
    grow(n);
    shape_ = shape;
    std::fill_n(data_.get(), n, T{});
  }
  //! Like reset, but leaves the contents unspecified (for outputs that are fully overwritten).
  void resize(Shape shape) {
    const auto n = static_cast<std::size_t>(shape.numel());
    grow(n);
    shape_ = shape;
  }

  T* data() { return data_.get(); }
  const T* data() const { return data_.get(); }
  const Shape& shape() const { return shape_; }
  std::int64_t numel() const { return shape_.numel(); }
  std::size_t capacity() const { return capacity_; }
  std::size_t bytes() const { return capacity_ * sizeof(T); }
  TensorView<T> view() { return {data_.get(), shape_}; }
  TensorView<const T> view() const { return {data_.get(), shape_}; }
  std::span<T> span() { return {data_.get(), static_cast<std::size_t>(numel())}; }
  std::span<const T> span() const { return {data_.get(), static_cast<std::size_t>(numel())}; }
  T& operator[](std::int64_t i) { return data_.get()[i]; }
  const T& operator[](std::int64_t i) const { return data_.get()[i]; }

 private:
  void grow(std::size_t n) {
    if (n <= capacity_) return;
    data_ = {static_cast<T*>(detail::allocate_host(n * sizeof(T))), detail::AlignedFree{n * sizeof(T)}};
    capacity_ = n;
    owner_.reset();
  }

  std::unique_ptr<T, detail::AlignedFree> data_;
  std::size_t capacity_ = 0;
  Shape shape_{};
  std::shared_ptr<const void> owner_;  // set for borrowed elements
};

}  // namespace blockdiff
