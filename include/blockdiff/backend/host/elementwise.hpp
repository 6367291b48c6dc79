// The host's elementwise kernels: embedding rows, KV-cache writes, RMSNorm, RoPE and SwiGLU (its
// exponentials in the CPU's widest vectors).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <span>

#include "blockdiff/backend/host/vectors.hpp"
#include "blockdiff/backend/kernel.hpp"
#include "blockdiff/core/dtype.hpp"
#include "blockdiff/core/threads.hpp"

namespace blockdiff {

namespace detail {
//! gate[i] = silu(gate[i]) · up[i] for n values, V lanes at a time. e = e^−|g| never overflows;
//! the sigmoid is 1 / (1 + e) for g ≥ 0 and e / (1 + e) below.
template <class V>
[[gnu::always_inline]] inline void swiglu_lanes(float* gate, const float* up, std::int64_t n) {
  using I = IntLanes<V>;
  constexpr int L = lanes<V>;
  std::int64_t i = 0;
  for (; i + L <= n; i += L) {
    V g, u;
    load_lanes(g, gate + i);
    load_lanes(u, up + i);
    V e = -(V)((I)g & 0x7fffffff);  // −|g| (nvcc's front end crashes on a vector plus INT_MIN)
    exp_nonpositive(e);
    const I negative = g < 0.0f;
    const V num = (V)(((I)e & negative) | ((I)(V{} + 1.0f) & ~negative));
    const V y = g * num / (1.0f + e) * u;
    std::memcpy(gate + i, &y, sizeof y);
  }
  for (; i < n; ++i) gate[i] = gate[i] / (1.0f + std::exp(-gate[i])) * up[i];
}
#if defined(BLOCKDIFF_AVX512_CLONE)
__attribute__((target("avx512f,avx512dq,avx512vl,avx512bw,fma"))) inline void swiglu_avx512(float* gate,
                                                                                              const float* up,
                                                                                              std::int64_t n) {
  swiglu_lanes<Vec16>(gate, up, n);
}
#endif
#if defined(BLOCKDIFF_AVX2_CLONE)
__attribute__((target("avx2,fma"))) inline void swiglu_avx2(float* gate, const float* up, std::int64_t n) {
  swiglu_lanes<Vec8>(gate, up, n);
}
#endif
//! SwiGLU in the widest vectors host_isa() allows, like the few-row kernel.
inline void swiglu(float* gate, const float* up, std::int64_t n) {
  [[maybe_unused]] const Isa isa = host_isa();
#if defined(BLOCKDIFF_AVX512_CLONE)
  if (isa == Isa::avx512) return swiglu_avx512(gate, up, n);
#endif
#if defined(BLOCKDIFF_AVX2_CLONE)
  if (isa == Isa::avx2) return swiglu_avx2(gate, up, n);
#endif
  swiglu_lanes<BuildVec>(gate, up, n);
}
}  // namespace detail

template <>
struct Kernel<backend::Host, op::Embedding> {
  static void run(const float* table, const int* ids, std::int64_t n, int h, float* out) {
    for (std::int64_t t = 0; t < n; ++t) std::copy_n(table + static_cast<std::int64_t>(ids[t]) * h, h, out + t * h);
  }
  static void run(const bf16* table, const int* ids, std::int64_t n, int h, float* out) {
    for (std::int64_t t = 0; t < n; ++t) {
      const bf16* row = table + static_cast<std::int64_t>(ids[t]) * h;
      std::transform(row, row + h, out + t * h, [](bf16 v) { return to_float(v); });
    }
  }
};

template <>
struct Kernel<backend::Host, op::KvWrite> {
  //! k, v: [tokens, kv_heads, d]; row r's tokens go to its cache [kv_heads, capacity, d] at
  //! slots first_slot, first_slot + 1, ...
  static void run(const float* k, const float* v, std::span<const AttentionRow> rows, const AttentionShape& shape) {
    const int kv_heads = shape.kv_heads, d = shape.head_dim;
    for (const AttentionRow& row : rows)
      for (int t = 0; t < row.n_q; ++t)
        for (int h = 0; h < kv_heads; ++h) {
          const std::int64_t src = ((row.q_begin + t) * kv_heads + h) * d;
          const std::int64_t dst = (static_cast<std::int64_t>(h) * row.capacity + row.first_slot + t) * d;
          std::copy_n(k + src, d, row.k + dst);
          std::copy_n(v + src, d, row.v + dst);
        }
  }
};

template <>
struct Kernel<backend::Host, op::RmsNorm> {
  static void run(const float* x, std::int64_t n, int h, const float* weight, float eps, float* y) {
    parallel_for(n, n * h > 1 << 16, [&](std::int64_t i) {
      const float* xi = x + i * h;
      float* yi = y + i * h;
      float sum = 0.0f;
      for (int j = 0; j < h; ++j) sum += xi[j] * xi[j];
      const float inv = 1.0f / std::sqrt(sum / static_cast<float>(h) + eps);
      for (int j = 0; j < h; ++j) yi[j] = (xi[j] * inv) * weight[j];
    });
  }
};

template <>
struct Kernel<backend::Host, op::Rope> {
  //! x: [n, heads, d]; cos_sin: [positions, d/2] pairs (cos, sin) from model::RopeTable.
  static void run(float* x, std::int64_t n, int heads, int d, const int* positions, const float* cos_table,
                  const float* sin_table) {
    const int half = d / 2;
    parallel_for(n, n * heads * d > 1 << 16, [&](std::int64_t t) {
      const float* c = cos_table + static_cast<std::int64_t>(positions[t]) * half;
      const float* s = sin_table + static_cast<std::int64_t>(positions[t]) * half;
      for (int h = 0; h < heads; ++h) {
        float* v = x + (t * heads + h) * d;
        for (int i = 0; i < half; ++i) {
          const float a = v[i], b = v[i + half];
          v[i] = a * c[i] - b * s[i];         // x·cos + rotate_half(x)·sin, first half
          v[i + half] = b * c[i] + a * s[i];  // second half
        }
      }
    });
  }
};

template <>
struct Kernel<backend::Host, op::SwiGlu> {
  //! In chunks of 4096, in the CPU's widest vectors (detail::swiglu): a std::exp call per element
  //! was 14% of a block-diffusion decode of the embedded model on one AVX2 core.
  static void run(float* gate, const float* up, std::int64_t count) {
    constexpr std::int64_t chunk = 4096;
    parallel_for((count + chunk - 1) / chunk, count > 1 << 16, [&](std::int64_t c) {
      const std::int64_t begin = c * chunk;
      detail::swiglu(gate + begin, up + begin, std::min(chunk, count - begin));
    });
  }
};

}  // namespace blockdiff
