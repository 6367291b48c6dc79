// backend::Cuda: device memory, transfers, and the cuBLAS handle.
//
// Every CUDA call is checked; a failure throws blockdiff::Error naming the call and the CUDA
// error string. Device buffers own cudaMalloc'd memory (plain allocations, never managed
// memory) and, like host Buffers, only reallocate when they must grow. Work runs on the default
// stream, so a host read after a kernel is ordered by the synchronous copies below.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <utility>
#include <vector>

#include "blockdiff/backend/kernel.hpp"
#include "blockdiff/core/error.hpp"
#include "blockdiff/core/tensor.hpp"

#define BLOCKDIFF_CUDA_CHECK(call)                                                                   \
  do {                                                                                               \
    const cudaError_t blockdiff_err_ = (call);                                                       \
    if (blockdiff_err_ != cudaSuccess)                                                               \
      ::blockdiff::fail(#call, " failed: ", cudaGetErrorString(blockdiff_err_), " (", __FILE__, ":", __LINE__, ")"); \
  } while (0)

#define BLOCKDIFF_CUBLAS_CHECK(call)                                                                 \
  do {                                                                                               \
    const cublasStatus_t blockdiff_st_ = (call);                                                     \
    if (blockdiff_st_ != CUBLAS_STATUS_SUCCESS)                                                      \
      ::blockdiff::fail(#call, " failed: cuBLAS status ", static_cast<int>(blockdiff_st_), " (", __FILE__, ":", __LINE__, ")"); \
  } while (0)

namespace blockdiff {

//! Owning device memory for a tensor; move-only.
template <class T>
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(Shape shape) { resize(shape); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  DeviceBuffer(DeviceBuffer&& o) noexcept { *this = std::move(o); }
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    if (this != &o) {
      release();
      data_ = std::exchange(o.data_, nullptr);
      capacity_ = std::exchange(o.capacity_, 0);
      shape_ = o.shape_;
    }
    return *this;
  }
  ~DeviceBuffer() { release(); }

  void resize(Shape shape) {
    const auto n = static_cast<std::size_t>(shape.numel());
    if (n > capacity_) {
      release();
      BLOCKDIFF_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&data_), n * sizeof(T)));
      capacity_ = n;
    }
    shape_ = shape;
  }
  T* data() { return data_; }
  const T* data() const { return data_; }
  const Shape& shape() const { return shape_; }
  std::int64_t numel() const { return shape_.numel(); }
  std::size_t bytes() const { return capacity_ * sizeof(T); }
  TensorView<T> view() { return {data_, shape_}; }
  TensorView<const T> view() const { return {data_, shape_}; }

 private:
  void release() {
    if (data_ != nullptr) cudaFree(data_);
    data_ = nullptr;
    capacity_ = 0;
  }
  T* data_ = nullptr;
  std::size_t capacity_ = 0;
  Shape shape_{};
};

namespace backend {

//! The CUDA backend: f32 activations and weights on the device, cuBLAS GEMMs, own kernels.
struct Cuda {
  template <class T>
  using buffer = DeviceBuffer<T>;
  static constexpr const char* name = "cuda";

  template <class T>
  static void upload(T* dst, const T* src, std::size_t n) {
    if (n) BLOCKDIFF_CUDA_CHECK(cudaMemcpy(dst, src, n * sizeof(T), cudaMemcpyHostToDevice));
  }
  template <class T>
  static void download(T* dst, const T* src, std::size_t n) {
    if (n) BLOCKDIFF_CUDA_CHECK(cudaMemcpy(dst, src, n * sizeof(T), cudaMemcpyDeviceToHost));
  }
  template <class T>
  static void copy(T* dst, const T* src, std::size_t n) {
    if (n) BLOCKDIFF_CUDA_CHECK(cudaMemcpyAsync(dst, src, n * sizeof(T), cudaMemcpyDeviceToDevice));
  }
  template <class T>
  static const T* to_host(const T* src, std::size_t n, std::vector<T>& staging) {
    staging.resize(n);
    download(staging.data(), src, n);
    return staging.data();
  }
  static void synchronize() { BLOCKDIFF_CUDA_CHECK(cudaDeviceSynchronize()); }

  //! The process's cuBLAS handle (created on first use, full-f32 math: no TF32).
  static cublasHandle_t blas() {
    static cublasHandle_t handle = [] {
      cublasHandle_t h = nullptr;
      BLOCKDIFF_CUBLAS_CHECK(cublasCreate(&h));
      BLOCKDIFF_CUBLAS_CHECK(cublasSetMathMode(h, CUBLAS_DEFAULT_MATH));
      return h;
    }();
    return handle;
  }

  //! Number of visible CUDA devices (0 when there is no GPU or no driver).
  static int device_count() {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
      cudaGetLastError();
      return 0;
    }
    return n;
  }
};

}  // namespace backend
}  // namespace blockdiff
