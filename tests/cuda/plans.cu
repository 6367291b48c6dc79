// What the CUDA backend decides on the host before it launches anything, checked where there is
// no GPU (so it runs in every build with nvcc): how attention divides a call among blocks and
// launches, within what a grid and a block's shared memory hold, and the bad calls refused by
// name before any device memory is touched.
#include <doctest/doctest.h>

#include <string>
#include <vector>

#include "blockdiff/cuda.cuh"

using namespace blockdiff;
namespace dc = blockdiff::detail::cuda;

namespace {
//! The message of the blockdiff::Error that f throws ("" if it throws none).
template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}
}  // namespace

TEST_CASE("CUDA attention: rows per launch keep each launch's grid within 65,535 blocks along y") {
  for (const std::int64_t per_row : {1, 2, 7, 32, 255, 256, 4096, 65534, 65535}) {
    const std::int64_t rows = dc::rows_per_launch(per_row, "test");
    CAPTURE(per_row);
    CHECK(rows * per_row <= 65535);        // a launch fits
    CHECK((rows + 1) * per_row > 65535);   // and takes as many whole rows as fit
  }
  // One row that alone needs more blocks than a grid holds is refused, naming what needs them.
  CHECK(error_of([] { dc::rows_per_launch(65536, "a row's queries"); }) ==
        "a row's queries need 65536 blocks along a grid's y, which holds 65535");
}

TEST_CASE("CUDA attention: the grouped kernel's plan fits shared memory and covers every (query, head) pair once") {
  // Over head_dims the grouped kernel takes, GQA groups of 1 to 16 (and the 1.5B and 7B models'
  // 6 and 7), query counts from a decode step to a prefill, and caches short and long.
  for (int d = 4; d <= 128; d += 4) {
    REQUIRE(dc::grouped_attention_fits(d));
    for (const int group : {1, 2, 3, 4, 6, 7, 8, 16})
      for (const int max_queries : {1, 2, 8, 9, 32, 33, 100, 2048})
        for (const int max_keys : {1, 31, 32, 33, 288, 4096})
          for (const std::int64_t rows : {1, 4, 64}) {
            const int kv_heads = 2;
            const dc::GroupPlan p = dc::group_plan(rows, max_queries, group, kv_heads, max_keys, d);
            CAPTURE(d);
            CAPTURE(group);
            CAPTURE(max_queries);
            CAPTURE(max_keys);
            CAPTURE(rows);
            // Q of the block's pairs, K rows padded by 4 floats and V, within the 48 KB a block
            // has without asking, less what the kernel declares itself.
            CHECK(p.shared_bytes == sizeof(float) * (p.pairs * d + dc::group_tile_keys * (2 * d + 4)));
            CHECK(p.shared_bytes + 256 <= 48 * 1024);
            // 1 to 32 pairs a block (8 a warp), and tiles that hold every pair of a row, none empty.
            const int pairs = max_queries * group;
            CHECK(p.pairs >= 1);
            CHECK(p.pairs <= dc::group_max_pairs);
            CHECK(p.pair_tiles * p.pairs >= pairs);
            CHECK((p.pair_tiles - 1) * p.pairs < pairs);
            // At least one split, no more than the cache has tiles of keys, and never past the cap.
            CHECK(p.splits >= 1);
            CHECK(p.splits <= dc::group_max_splits);
            CHECK(p.splits <= (max_keys + dc::group_tile_keys - 1) / dc::group_tile_keys);
          }
  }
  CHECK_FALSE(dc::grouped_attention_fits(66));   // not 16-byte rows
  CHECK_FALSE(dc::grouped_attention_fits(132));  // past the kernel's registers
}

TEST_CASE("CUDA attention: the per-head kernel splits few queries' keys, and a prefill's not at all") {
  for (const std::int64_t queries : {1, 8, 127, 128, 4096})
    for (const int max_keys : {1, 127, 128, 129, 1000, 4096, 100000}) {
      const dc::AttentionSplit s = dc::attention_split(queries, max_keys);
      CAPTURE(queries);
      CAPTURE(max_keys);
      CHECK(s.splits >= 1);
      CHECK(s.splits <= dc::attention_max_splits);
      CHECK(static_cast<std::int64_t>(s.splits) * s.keys_per_split >= max_keys);  // every key has a block
      CHECK((s.splits - 1) * s.keys_per_split < max_keys);                         // and every block a key
      if (queries >= 128) CHECK(s.splits == 1);
      // Few queries: a split for each 128 keys (one pass of a block), up to 16.
      if (queries < 128) CHECK(s.splits == std::min(16, (max_keys + 127) / 128));
    }
}

TEST_CASE("CUDA unmask selection: one upload of [candidates | rows | flags], and one download of [rows | flags]") {
  for (const std::size_t candidates : {1, 3, 8, 33, 256, 1000})
    for (const std::size_t rows : {1, 2, 7, 64}) {
      const dc::UnmaskLayout at(candidates, rows);
      CAPTURE(candidates);
      CAPTURE(rows);
      CHECK(at.rows % alignof(UnmaskRow) == 0);                     // rows read in place on the device
      CHECK(at.rows >= candidates * sizeof(Candidate));             // after the candidates
      CHECK(at.rows < candidates * sizeof(Candidate) + alignof(UnmaskRow));  // with no more than padding
      CHECK(at.flags == at.rows + rows * sizeof(UnmaskRow));         // the flags follow the rows
      CHECK(at.end == at.flags + candidates * sizeof(bool));
    }
}

TEST_CASE("CUDA kernels refuse bad calls by name before they touch the device") {
  // Rows that the kernels would read on the device are never read on the host: a call is refused
  // from its shape alone. So none of these needs a GPU (and none could corrupt device memory).
  const AttentionRow row{};
  const std::span<const AttentionRow> rows(&row, 1);
  float q = 0, out = 0;
  const auto attention = [&](AttentionShape shape) {
    return error_of([&] { Kernel<backend::Cuda, op::Attention<mask::Causal>>::run(&q, &out, rows, shape, {}); });
  };
  CHECK(attention({4, 2, 260, 1.0f, 1, 64}) == "CUDA attention: head_dim 260 exceeds 256");
  CHECK(attention({4, 2, 64, 1.0f, 1, 0}) ==
        "CUDA attention: shape.max_keys (the rows' largest cache capacity) is not set");
  CHECK(attention({6, 4, 64, 1.0f, 1, 64}) == "CUDA attention: 6 heads are not a multiple of 4 key heads");
  // A row of more queries than either kernel can lay out along a grid's y.
  CHECK(attention({7, 1, 128, 1.0f, 1 << 20, 64}) ==
        "CUDA attention (grouped): a row's pair tiles need 244668 blocks along a grid's y, which holds 65535");
  CHECK(attention({4, 2, 66, 1.0f, 70000, 64}) ==
        "CUDA attention (per head): a row's queries need 70000 blocks along a grid's y, which holds 65535");
  // An empty call does nothing, whatever its shape says.
  const AttentionShape bad{4, 2, 260, 1.0f, 1, 0};
  CHECK(error_of([&] { Kernel<backend::Cuda, op::Attention<mask::Causal>>::run(&q, &out, {}, bad, {}); }) == "");

  // The training attention keeps a query's (or key's) scores for the whole sequence in shared
  // memory: a longer sequence or a wider head than fits is refused, forward and backward.
  using TrainOps = train::ops::Ops<backend::Cuda>;
  const auto train_attention = [&](train::ops::AttentionDims dims) {
    const std::string forward = error_of([&] {
      TrainOps::attention_forward(&q, &q, &q, dims, nullptr, 1.0f, &out, &out, nullptr);
    });
    const std::string backward = error_of([&] {
      TrainOps::attention_backward(&q, &q, &q, &q, &q, &q, dims, nullptr, 1.0f, &out, &out, &out, &out);
    });
    CHECK(forward == backward);
    return forward;
  };
  CHECK(train_attention({1, 5121, 2, 1, 64}) ==
        "CUDA training attention: sequences of 5121 tokens are longer than the kernels take (5120)");
  CHECK(train_attention({1, 64, 2, 1, 264}) ==
        "CUDA training attention: head_dim 264 is wider than the kernels take (256)");
  CHECK(train_attention({1, 64, 6, 4, 64}) == "CUDA training attention: 6 heads do not divide into 4 K/V heads");

  // Unmask rows are checked on the host before the one upload.
  std::vector<UnmaskRow> unmask_rows(2);
  unmask_rows[0].n = 4;
  unmask_rows[1].first = 4, unmask_rows[1].n = 0;
  std::vector<Candidate> candidates(8);
  bool chosen[8] = {};
  CHECK(error_of([&] {
          Kernel<backend::Cuda, op::Unmask<unmask::Threshold>>::run(unmask::Threshold{0.9f}, candidates.data(),
                                                                   unmask_rows, chosen);
        }) == "op::Unmask: row 1 has 0 candidates from index 4; a row has 1 to 256 from index 0 on");

  float x = 0, w = 0, bias = 0, y = 0;
  CHECK(error_of([&] { Kernel<backend::Cuda, op::Linear>::run(&x, 1, 1, &w, 1, &bias, &y, true); }) ==
        "Linear on CUDA: bias with accumulate is not supported");
}
