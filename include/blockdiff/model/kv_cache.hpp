// The KV cache of one sequence.
//
// K and V are stored after RoPE (as Hugging Face's DynamicCache does), per layer as
// [kv_heads, capacity, head_dim] so that one head's keys are contiguous. Slots [0, committed)
// hold committed blocks; slots from `committed` on are the scratch region where a denoising
// forward leaves the current block's K/V without advancing `committed` (§5 of the notes): the
// commit forward rewrites the same slots and advances it. Each sequence owns its cache, so a
// finished row of a batch frees its memory by dropping it.
#pragma once

#include <cstdint>

#include "blockdiff/core/error.hpp"
#include "blockdiff/core/tensor.hpp"
#include "blockdiff/io/config.hpp"

namespace blockdiff::model {

template <class Backend>
class KvCache {
 public:
  KvCache() = default;
  KvCache(const io::ModelConfig& config, int capacity)
      : layers_(config.num_hidden_layers),
        kv_heads_(config.num_key_value_heads),
        head_dim_(config.head_dim()),
        capacity_(capacity) {
    require(capacity > 0, "KvCache: capacity must be positive, got ", capacity);
    const Shape shape{layers_, kv_heads_, capacity_, head_dim_};
    k_.resize(shape);
    v_.resize(shape);
  }

  int capacity() const { return capacity_; }
  int committed() const { return committed_; }
  void set_committed(int n) {
    require(n >= 0 && n <= capacity_, "KvCache: committed length ", n, " outside [0, ", capacity_, "]");
    committed_ = n;
  }
  std::int64_t layer_stride() const { return static_cast<std::int64_t>(kv_heads_) * capacity_ * head_dim_; }
  float* k(int layer) { return k_.data() + layer * layer_stride(); }
  float* v(int layer) { return v_.data() + layer * layer_stride(); }
  const float* k(int layer) const { return k_.data() + layer * layer_stride(); }
  const float* v(int layer) const { return v_.data() + layer * layer_stride(); }
  std::size_t bytes() const { return k_.bytes() + v_.bytes(); }

  //! Copies slots [begin, end) of every layer and KV head from `from`, a cache of the same model
  //! shape, on the device: the K/V of a shared prefix without running it again.
  void copy_slots(const KvCache& from, int begin, int end) {
    require(from.layers_ == layers_ && from.kv_heads_ == kv_heads_ && from.head_dim_ == head_dim_,
            "KvCache: copying from a cache of ", from.layers_, " layers x ", from.kv_heads_, " heads x ",
            from.head_dim_, " into one of ", layers_, " x ", kv_heads_, " x ", head_dim_);
    require(0 <= begin && begin <= end && end <= capacity_ && end <= from.capacity_, "KvCache: slots [", begin, ", ",
            end, ") do not fit caches of capacity ", from.capacity_, " and ", capacity_);
    const auto n = static_cast<std::size_t>(end - begin) * static_cast<std::size_t>(head_dim_);
    for (int layer = 0; layer < layers_; ++layer)
      for (int head = 0; head < kv_heads_; ++head) {
        const auto to = (static_cast<std::int64_t>(head) * capacity_ + begin) * head_dim_;
        const auto at = (static_cast<std::int64_t>(head) * from.capacity_ + begin) * head_dim_;
        Backend::copy(k(layer) + to, from.k(layer) + at, n);
        Backend::copy(v(layer) + to, from.v(layer) + at, n);
      }
  }

 private:
  int layers_ = 0, kv_heads_ = 0, head_dim_ = 0, capacity_ = 0, committed_ = 0;
  typename Backend::template buffer<float> k_, v_;
};

}  // namespace blockdiff::model
