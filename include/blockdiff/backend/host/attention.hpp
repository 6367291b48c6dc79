// Kernel<Host, op::Attention<Mask>>: grouped-query attention under each mask kind, reading no key
// past the mask's bound (mask::key_bound).
#pragma once

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <span>
#include <vector>

#include "blockdiff/backend/host/row_passes.hpp"
#include "blockdiff/backend/host/vectors.hpp"
#include "blockdiff/backend/kernel.hpp"
#include "blockdiff/backend/mask.hpp"
#include "blockdiff/core/threads.hpp"

namespace blockdiff {

//! Attention on the host, one task per (row, KV head, tile of up to 64 queries): the query heads
//! that share a KV head are multiplied against its keys in one product, so that each key and
//! value is read once for the group (an AR step of a 7:1 GQA model reads its cache once, not
//! seven times). A PrefixMask bounds the keys: a tile reads none past its last query's bound
//! (half of a causal prefill's scores are never computed), and below each query's bound every key
//! is allowed; any other mask is evaluated per (query, key). The softmax's exponentials run in
//! the vocabulary pass's vectors; its normalisation is applied to the d outputs of each query,
//! not to its scores.
template <class Mask>
struct Kernel<backend::Host, op::Attention<Mask>> {
  static constexpr int query_tile = 64;

  //! q, out: [tokens, heads, head_dim]. Each row's queries attend its cache under `mask`.
  static void run(const float* q, float* out, std::span<const AttentionRow> rows, const AttentionShape& shape,
                  const Mask& mask) {
    // Tasks by row and tile, each taken by every KV head: tiles_before[r] is the tiles of rows < r.
    // The calling thread's vector, read by the workers through a reference: named inside the
    // parallel body, a thread_local would be each worker's own (empty) one.
    thread_local std::vector<std::int64_t> tiles_storage;
    std::vector<std::int64_t>& tiles_before = tiles_storage;
    tiles_before.assign(rows.size() + 1, 0);
    std::int64_t work = 0;  // query-key pairs of one head, over all rows
    for (std::size_t r = 0; r < rows.size(); ++r) {
      tiles_before[r + 1] = tiles_before[r] + (rows[r].n_q + query_tile - 1) / query_tile;
      work += static_cast<std::int64_t>(rows[r].n_q) * rows[r].kv_end;
    }
    const std::int64_t tasks = tiles_before.back() * shape.kv_heads;
    // Threads from 2^17 multiply-adds of scores on: below that (the embedded models' block
    // forward) a parallel region costs more than it saves (bench_components, at 2 threads).
    parallel_for<Schedule::dynamic>(tasks, work * shape.heads * shape.head_dim >= 1 << 17, [&](std::int64_t task) {
      const std::int64_t tile = task / shape.kv_heads;
      const auto r = static_cast<std::size_t>(std::upper_bound(tiles_before.begin(), tiles_before.end(), tile) -
                                              tiles_before.begin() - 1);
      const int begin = static_cast<int>(tile - tiles_before[r]) * query_tile;
      const AttentionRow& row = rows[r];
      tile_of_group(q, out, row, begin, std::min(row.n_q, begin + query_tile), static_cast<int>(task % shape.kv_heads),
                    shape, mask);
    });
  }

 private:
  // Queries [begin, end) of `row`, every head of KV head `kvh`.
  static void tile_of_group(const float* q, float* out, const AttentionRow& row, int begin, int end, int kvh,
                            const AttentionShape& shape, const Mask& mask) {
    using namespace detail;
    const int d = shape.head_dim, group = shape.heads / shape.kv_heads;
    const std::int64_t stride = static_cast<std::int64_t>(shape.heads) * d;
    const int n = (end - begin) * group;  // score rows, query-major: (query i, head g) is row i·group + g
    int keys = 0;                         // the keys any of the tile's queries may attend
    for (int i = begin; i < end; ++i) keys = std::max(keys, mask::key_bound(mask, row.first_slot + i, row.kv_end));

    // The group's heads of one query are adjacent in q: a tile is (end − begin) runs of group·d.
    thread_local RowMatrix queries, scores, outputs;
    queries.resize(n, d);
    for (int i = begin; i < end; ++i)
      for (int e = 0; e < group * d; ++e)
        queries.data()[static_cast<std::int64_t>(i - begin) * group * d + e] =
            q[(row.q_begin + i) * stride + static_cast<std::int64_t>(kvh) * group * d + e] * shape.scale;
    Eigen::Map<const RowMatrix> K(row.k + static_cast<std::int64_t>(kvh) * row.capacity * d, keys, d);
    Eigen::Map<const RowMatrix> V(row.v + static_cast<std::int64_t>(kvh) * row.capacity * d, keys, d);
    scores.resize(n, keys);
    scores.noalias() = queries * K.transpose();

    thread_local std::vector<float> inverse_sums;
    inverse_sums.assign(static_cast<std::size_t>(n), 0.0f);
    for (int t = 0; t < n; ++t) {
      const int slot = row.first_slot + begin + t / group;
      const int allowed = mask::key_bound(mask, slot, keys);
      float* s = scores.data() + static_cast<std::int64_t>(t) * keys;
      if constexpr (!mask::PrefixMask<Mask>)
        for (int j = 0; j < allowed; ++j)
          if (!mask.allowed(slot, j)) s[j] = -std::numeric_limits<float>::infinity();
      std::fill(s + allowed, s + keys, 0.0f);
      // A score that is not a number (from a q or k that is not) makes the query's output NaN, as
      // softmax would, where the vector passes below would skip it.
      if (std::isnan(Eigen::Map<const Eigen::ArrayXf>(s, allowed).sum())) {
        inverse_sums[static_cast<std::size_t>(t)] = std::numeric_limits<float>::quiet_NaN();
        continue;
      }
      const float mx = max_of(s, 0, allowed);
      if (mx == -std::numeric_limits<float>::infinity()) {  // no allowed key: the output is zeros
        std::fill(s, s + allowed, 0.0f);
        continue;
      }
      inverse_sums[static_cast<std::size_t>(t)] = static_cast<float>(1.0 / exp_sums<false, true>(s, allowed, mx, s).sum);
    }
    outputs.resize(n, d);
    outputs.noalias() = scores * V;
    for (int i = begin; i < end; ++i)
      for (int g = 0; g < group; ++g) {
        const int t = (i - begin) * group + g;
        float* o = out + (row.q_begin + i) * stride + static_cast<std::int64_t>(kvh * group + g) * d;
        for (int e = 0; e < d; ++e) o[e] = outputs(t, e) * inverse_sums[static_cast<std::size_t>(t)];
      }
  }
};

}  // namespace blockdiff
