// backend::Cuda: device memory, transfers, and the cuBLAS handle.
//
// Every CUDA call is checked; a failure throws blockdiff::Error naming the call and the CUDA
// error string. Device buffers own cudaMalloc'd memory (plain allocations, never managed
// memory) and, like host Buffers, only reallocate when they must grow. All work runs in order on
// one stream of the backend's (`Cuda::stream()`, which also orders itself with the legacy default
// stream); a download waits for that stream, so a host read after a kernel sees its result.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstddef>
#include <cstdlib>
#include <map>
#include <set>
#include <span>
#include <string_view>
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

namespace detail::cuda {

// Programmatic dependent launch (sm_90 and up; no-ops below, and where a kernel was launched
// without it). A kernel that Cuda::launch starts may begin while the kernel before it in the
// stream is still running, once every block of that one has called release_dependents(). So
// every kernel of the backend calls wait_for_upstream() before it reads anything that earlier
// work wrote or writes anything that earlier work reads; what comes before the wait may only
// touch what no kernel writes (the weights: the products prefetch theirs into L2 there).

//! Waits until the work before this kernel in the stream has finished and its writes are seen.
__device__ __forceinline__ void wait_for_upstream() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
//! Lets the next kernel in the stream start its blocks (they wait in wait_for_upstream()).
__device__ __forceinline__ void release_dependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" :::);
#endif
}
//! Both, first thing in a kernel that has nothing to do before its inputs are ready.
__device__ __forceinline__ void after_upstream() {
  wait_for_upstream();
  release_dependents();
}
//! Asks L2 for the 128-byte line at p (memory no kernel writes: the weights).
__device__ __forceinline__ void prefetch_l2(const void* p) {
  asm volatile("prefetch.global.L2 [%0];" ::"l"(p));
}

}  // namespace detail::cuda

namespace backend {

class GraphReplay;

//! The CUDA backend: f32 activations, f32 or BF16 weights on the device, cuBLAS GEMMs for
//! many rows and our own kernels for the rest.
struct Cuda {
  template <class T>
  using buffer = DeviceBuffer<T>;
  using Replay = GraphReplay;
  static constexpr const char* name = "cuda";

  //! Whether forwards are recorded as CUDA graphs and replayed (default on; the environment
  //! variable BLOCKDIFF_CUDA_GRAPHS=0 turns it off, and so does use_graphs(false)).
  static bool graphs() { return graphs_flag(); }
  static void use_graphs(bool on) { graphs_flag() = on; }

  //! Whether products of 9 to 32 rows with BF16 weights (a block forward) run on blockdiff's
  //! tensor-core kernel (the default) or on cuBLAS, for comparing the two. Switching drops the
  //! recorded graphs (graph_generation()).
  static bool mma_rows() { return mma_flag(); }
  static void use_mma_rows(bool on) { switch_path(mma_flag(), on); }

  //! Whether products of up to 32 rows fold the RMSNorm of their input into the product kernel
  //! (the default: op::Linears and op::SwiGluLinear with an InputNorm, see linear.cuh) or run it
  //! as its own launch first, for comparing the two. Switching drops the recorded graphs.
  static bool folded_norms() { return fold_flag(); }
  static void use_folded_norms(bool on) { switch_path(fold_flag(), on); }

  //! Whether attention runs the grouped kernel (the default where head_dim is a multiple of 4 up
  //! to 128: a block serves every query head of a key head, reading each K and V tile once for
  //! all of them) or the per-head kernel (a block per query head), for comparing the two.
  //! Switching drops the recorded graphs.
  static bool grouped_attention() { return group_flag(); }
  static void use_grouped_attention(bool on) { switch_path(group_flag(), on); }

  //! Whether kernels start with programmatic dependent launch (compute capability 9.0 and up):
  //! a kernel's blocks may be scheduled while the kernel before it finishes, run what does not
  //! depend on it (the products prefetch their weights into L2), then wait for it (see
  //! wait_for_upstream), which takes the launch latency and the tail of each kernel out of a
  //! decode step's critical path. Off by default; on where the environment variable
  //! BLOCKDIFF_CUDA_PDL=1, or use_dependent_launches(true). Switching drops the recorded graphs
  //! (which hold the dependencies).
  static bool dependent_launches() { return pdl_flag() && compute_capability() >= 90; }
  static void use_dependent_launches(bool on) { switch_path(pdl_flag(), on); }

  //! Launches kernel<<<grid, block, shared, stream>>>(args...), as a programmatic dependent
  //! launch when dependent_launches(); checks the launch.
  template <class... Params, class... Args>
  static void launch(void (*kernel)(Params...), dim3 grid, dim3 block, std::size_t shared, cudaStream_t stream,
                     Args&&... args) {
    cudaLaunchAttribute attribute{};
    attribute.id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attribute.val.programmaticStreamSerializationAllowed = 1;
    cudaLaunchConfig_t config{};
    config.gridDim = grid;
    config.blockDim = block;
    config.dynamicSmemBytes = shared;
    config.stream = stream;
    if (dependent_launches()) config.attrs = &attribute, config.numAttrs = 1;
    BLOCKDIFF_CUDA_CHECK(cudaLaunchKernelEx(&config, kernel, std::forward<Args>(args)...));
  }

  //! The stream every kernel, copy and cuBLAS call of the backend runs on.
  static cudaStream_t stream() {
    static cudaStream_t s = [] {
      cudaStream_t created = nullptr;
      BLOCKDIFF_CUDA_CHECK(cudaStreamCreate(&created));  // blocking: ordered with the legacy default stream
      return created;
    }();
    return s;
  }

  //! Host to device, after all work queued before it; the source may be freed as soon as this
  //! returns. (A copy from pageable memory waits for the stream anyway, so waiting for the copy
  //! itself costs only the copy; it also keeps tools that model the copy as asynchronous honest.)
  template <class T>
  static void upload(T* dst, const T* src, std::size_t n) {
    if (!n) return;
    BLOCKDIFF_CUDA_CHECK(cudaMemcpyAsync(dst, src, n * sizeof(T), cudaMemcpyHostToDevice, stream()));
    BLOCKDIFF_CUDA_CHECK(cudaStreamSynchronize(stream()));
  }
  //! Device to host, after all work queued before it.
  template <class T>
  static void download(T* dst, const T* src, std::size_t n) {
    if (!n) return;
    BLOCKDIFF_CUDA_CHECK(cudaMemcpyAsync(dst, src, n * sizeof(T), cudaMemcpyDeviceToHost, stream()));
    BLOCKDIFF_CUDA_CHECK(cudaStreamSynchronize(stream()));
  }
  template <class T>
  static void copy(T* dst, const T* src, std::size_t n) {
    if (n) BLOCKDIFF_CUDA_CHECK(cudaMemcpyAsync(dst, src, n * sizeof(T), cudaMemcpyDeviceToDevice, stream()));
  }
  static void synchronize() { BLOCKDIFF_CUDA_CHECK(cudaDeviceSynchronize()); }

  //! The process's cuBLAS handle (created on first use): full-f32 math (no TF32), on `stream()`,
  //! with a workspace of its own so that cuBLAS allocates nothing while a graph is captured.
  static cublasHandle_t blas() {
    static DeviceBuffer<char> space(Shape{32 << 20});
    static cublasHandle_t handle = [] {
      cublasHandle_t h = nullptr;
      BLOCKDIFF_CUBLAS_CHECK(cublasCreate(&h));
      BLOCKDIFF_CUBLAS_CHECK(cublasSetMathMode(h, CUBLAS_DEFAULT_MATH));
      BLOCKDIFF_CUBLAS_CHECK(cublasSetStream(h, stream()));
      BLOCKDIFF_CUBLAS_CHECK(cublasSetWorkspace(h, space.data(), space.bytes()));
      return h;
    }();
    return handle;
  }

  //! Scratch memory for at least n values of T, for kernels that stage an operand or keep
  //! partial results (one buffer per type for the process, like the stream that orders its
  //! users; it only grows). A recorded graph holds the pointer, so growing it counts in
  //! graph_generation() and GraphReplay drops its graphs.
  //! With `zeroed`, the buffer is all zeros when it is made or grown (its users keep it so).
  template <class T>
  static T* scratch(std::size_t n, bool zeroed = false) {
    static DeviceBuffer<T> buffer;
    if (n > buffer.bytes() / sizeof(T)) {
      buffer.resize(Shape{static_cast<std::int64_t>(n)});
      if (zeroed) BLOCKDIFF_CUDA_CHECK(cudaMemsetAsync(buffer.data(), 0, buffer.bytes(), stream()));
      ++graph_generation_ref();
    }
    return buffer.data();
  }
  //! Counts what makes a recorded graph stale: scratch memory that moved, a product path switched.
  static long graph_generation() { return graph_generation_ref(); }

  static long& graph_generation_ref() {
    static long generation = 0;
    return generation;
  }
  //! Sets a kernel-path switch; a change drops the recorded graphs, whose kernels it changes.
  static void switch_path(bool& flag, bool on) {
    if (on != flag) ++graph_generation_ref();
    flag = on;
  }
  static bool& mma_flag() {
    static bool on = true;
    return on;
  }
  static bool& fold_flag() {
    static bool on = true;
    return on;
  }
  static bool& group_flag() {
    static bool on = true;
    return on;
  }
  static bool& pdl_flag() {
    static bool on = [] {
      const char* e = std::getenv("BLOCKDIFF_CUDA_PDL");
      return e != nullptr && std::string_view(e) == "1";
    }();
    return on;
  }
  static bool& graphs_flag() {
    static bool on = [] {
      const char* e = std::getenv("BLOCKDIFF_CUDA_GRAPHS");
      return e == nullptr || std::string_view(e) != "0";
    }();
    return on;
  }

  //! Multiprocessors of the current device (read once).
  static int multiprocessors() {
    static const int n = device_attribute(cudaDevAttrMultiProcessorCount);
    return n;
  }

  //! Compute capability of the current device as 10 major + minor (read once).
  static int compute_capability() {
    static const int cc = 10 * device_attribute(cudaDevAttrComputeCapabilityMajor) +
                          device_attribute(cudaDevAttrComputeCapabilityMinor);
    return cc;
  }
  //! An attribute of the current device.
  static int device_attribute(cudaDeviceAttr attribute) {
    int device = 0, value = 0;
    BLOCKDIFF_CUDA_CHECK(cudaGetDevice(&device));
    BLOCKDIFF_CUDA_CHECK(cudaDeviceGetAttribute(&value, attribute, device));
    return value;
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

//! A model's recorded forwards. The first time a key is seen the kernel sequence runs as it is
//! (it may size workspaces); the second time it is captured from the stream into a CUDA graph,
//! which is launched from then on. The key holds every shape and pointer the kernels are given;
//! what changes from one decoding step to the next (token ids, positions, the rows' cache
//! slots) lives in device memory that the caller uploads before `run`. A decode step of L layers
//! is then one launch instead of about 15 L.
class GraphReplay {
 public:
  static constexpr bool records = true;  //!< a forward whose key repeats replays its recording
  GraphReplay() = default;
  GraphReplay(const GraphReplay&) = delete;
  GraphReplay& operator=(const GraphReplay&) = delete;
  GraphReplay(GraphReplay&& o) noexcept
      : graphs_(std::move(o.graphs_)), seen_(std::move(o.seen_)), launches_(o.launches_), generation_(o.generation_) {
    o.graphs_.clear();
  }
  GraphReplay& operator=(GraphReplay&& o) noexcept {
    if (this != &o) {
      clear();
      graphs_ = std::move(o.graphs_);
      seen_ = std::move(o.seen_);
      launches_ = o.launches_;
      generation_ = o.generation_;
      o.graphs_.clear();
    }
    return *this;
  }
  ~GraphReplay() { clear(); }

  //! `make_key()` returns the key as a span of int64.
  template <class Key, class F>
  void run(Key&& make_key, F&& enqueue) {
    if (!Cuda::graphs()) return enqueue();
    if (generation_ != Cuda::graph_generation()) {  // scratch has moved, or a product path changed
      clear();
      generation_ = Cuda::graph_generation();
    }
    const std::span<const std::int64_t> key = make_key();
    if (auto it = graphs_.find(key); it != graphs_.end()) {
      BLOCKDIFF_CUDA_CHECK(cudaGraphLaunch(it->second, Cuda::stream()));
      ++launches_;
      return;
    }
    if (seen_.size() >= max_seen) seen_.clear();
    std::vector<std::int64_t> k(key.begin(), key.end());
    if (seen_.insert(k).second) return enqueue();
    if (graphs_.size() >= max_graphs) clear();
    const cudaStream_t stream = Cuda::stream();
    BLOCKDIFF_CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
    cudaGraph_t graph = nullptr;
    try {
      enqueue();
    } catch (...) {
      cudaStreamEndCapture(stream, &graph);
      if (graph != nullptr) cudaGraphDestroy(graph);
      throw;
    }
    BLOCKDIFF_CUDA_CHECK(cudaStreamEndCapture(stream, &graph));
    cudaGraphExec_t exec = nullptr;
    const cudaError_t made = cudaGraphInstantiate(&exec, graph, 0);
    cudaGraphDestroy(graph);
    BLOCKDIFF_CUDA_CHECK(made);
    graphs_.emplace(std::move(k), exec);
    BLOCKDIFF_CUDA_CHECK(cudaGraphLaunch(exec, stream));
    ++launches_;
  }

  //! Graphs held, and forwards that ran as a graph launch so far.
  std::size_t size() const { return graphs_.size(); }
  long launches() const { return launches_; }

  void clear() {
    for (auto& [key, exec] : graphs_) cudaGraphExecDestroy(exec);
    graphs_.clear();
    seen_.clear();
  }

 private:
  //! Orders keys held as vectors and looked up as spans alike (no copy to look one up).
  struct KeyLess {
    using is_transparent = void;
    template <class A, class B>
    bool operator()(const A& a, const B& b) const {
      return std::lexicographical_compare(a.begin(), a.end(), b.begin(), b.end());
    }
  };
  static constexpr std::size_t max_graphs = 256, max_seen = 4096;
  std::map<std::vector<std::int64_t>, cudaGraphExec_t, KeyLess> graphs_;
  std::set<std::vector<std::int64_t>, KeyLess> seen_;
  long launches_ = 0, generation_ = 0;
};

}  // namespace backend
}  // namespace blockdiff
