// Packing and the two objectives against examples worked by hand from §2.1–2.4 of the notes.
#include <doctest/doctest.h>

#include <cstdlib>
#include <map>
#include <set>

#include "../support/check_error.hpp"
#include "../support/paths.hpp"
#include "blockdiff/train/data.hpp"
#include "blockdiff/train/objective.hpp"

using namespace blockdiff;
using train::Example;

TEST_CASE("train/data: block-aligned packing pads each example with [MASK], a whole block when already aligned") {
  const std::vector<Example> ex{{{1, 2}, {3}}, {{4}, {5, 6, 7}}, {{8}, {1, 2, 3, 4, 5}}};
  // Padded: [1 2 3 M] [4 5 6 7 M M M M] [8 1 2 3 4 5 M M] = 20 tokens -> two windows of 8.
  const int M = 9;
  auto w = train::pack(ex, 8, 4, M);
  REQUIRE(w.count() == 2);
  CHECK(w.ids == std::vector<int>{1, 2, 3, M, 4, 5, 6, 7, M, M, M, M, 8, 1, 2, 3});
  CHECK(w.supervised == std::vector<std::uint8_t>{0, 0, 1, 0, 0, 1, 1, 1, 0, 0, 0, 0, 0, 1, 1, 1});
  // Without padding: 13 tokens -> one window, the remainder dropped.
  auto plain = train::pack(ex, 8, 0, -1);
  REQUIRE(plain.count() == 1);
  CHECK(plain.ids == std::vector<int>{1, 2, 3, 4, 5, 6, 7, 8});
  CHECK(plain.supervised == std::vector<std::uint8_t>{0, 0, 1, 0, 1, 1, 1, 0});
  // An explicit order.
  const std::vector<std::size_t> order{1, 0, 2};
  CHECK(train::pack(ex, 8, 4, M, order).ids[0] == 4);
  // An order may leave an example out, or name one twice: [4 5 6 7 M M M M] [1 2 3 M 1 2 3 M]
  // [4 5 6 7 M M M M].
  const std::vector<std::size_t> some{1, 0, 0, 1};
  CHECK(train::pack(ex, 8, 4, M, some).ids ==
        std::vector<int>{4, 5, 6, 7, M, M, M, M, 1, 2, 3, M, 1, 2, 3, M, 4, 5, 6, 7, M, M, M, M});
  const std::vector<std::size_t> past{0, 3};
  CHECK_ERROR(train::pack(ex, 8, 4, M, past), "pack: order[1] is 3, past the last of 3 examples");

  CHECK_ERROR(train::pack(ex, 4, 0, -1), "example 2 has 6 tokens; the context is 4");
  CHECK_ERROR(train::pack(ex, 10, 4, M), "the context 10 is not a multiple of the block size 4");
  const std::vector<Example> empty_response{{{1}, {}}};
  CHECK_ERROR(train::pack(empty_response, 8, 0, -1), "example 0 has an empty response");
}

TEST_CASE("train/objective: the AR objective predicts each supervised token from its predecessor") {
  train::Windows w{4, {5, 6, 7, 8}, {1, 1, 0, 1}};
  train::ModelBatch b;
  Rng rng(0);
  train::ArObjective{}.build(w, 0, 1, rng, b);
  CHECK(b.tokens == std::vector<int>{5, 6, 7, 8});
  CHECK(b.positions == std::vector<int>{0, 1, 2, 3});
  REQUIRE(b.targets.size() == 2);  // position 0 has no predecessor
  CHECK(b.targets[0].index == 0);
  CHECK(b.targets[0].label == 6);
  CHECK(b.targets[1].index == 2);
  CHECK(b.targets[1].label == 8);
  // The trainer reuses a batch from step to step: the next build holds that step's rows alone.
  const train::Windows next{4, {5, 6, 7, 8, 1, 2, 3, 4}, {0, 0, 0, 0, 0, 0, 1, 0}};
  train::ArObjective{}.build(next, 1, 1, rng, b);
  CHECK(b.tokens == std::vector<int>{1, 2, 3, 4});
  REQUIRE(b.targets.size() == 1);
  CHECK(b.targets[0].index == 1);
  CHECK(b.targets[0].label == 3);
  // Windows the set does not hold, and flags that do not match the ids, are named.
  CHECK_ERROR(train::ArObjective{}.build(next, 1, 2, rng, b), "ar objective: windows [1, 3) asked of 2");
  CHECK_ERROR(train::ArObjective{}.build(next, -1, 1, rng, b), "ar objective: windows [-1, 0) asked of 2");
  const train::Windows ragged{4, {5, 6, 7, 8, 1}, {0, 0, 0, 0, 0}};
  CHECK_ERROR(train::ArObjective{}.build(ragged, 0, 1, rng, b),
              "ar objective: 5 ids and 5 supervised flags do not make windows of 4");
  const train::Windows unflagged{4, {5, 6, 7, 8}, {1, 1, 1}};
  CHECK_ERROR(train::ArObjective{}.build(unflagged, 0, 1, rng, b),
              "ar objective: 4 ids and 3 supervised flags do not make windows of 4");
  // A refused Fast-dLLM v2 build draws no noise: the generator is where it was.
  Rng before = rng;
  CHECK_ERROR(train::FastDllmV2Objective<4>(9).build(next, 2, 1, rng, b), "fdllm2 objective: windows [2, 3) asked of 2");
  CHECK(rng.uniform_double() == before.uniform_double());
}

TEST_CASE("train/objective: Fast-dLLM v2 views, worked by hand") {
  // L = 8, block 4, [MASK] = 9.
  train::Windows w{8, {1, 2, 3, 4, 5, 6, 7, 8}, {0, 1, 1, 1, 0, 1, 1, 1}};
  const std::vector<std::uint8_t> mask{1, 0, 1, 0, 1, 1, 0, 0};
  train::ModelBatch b;
  SUBCASE("the paper's recipe: two complementary views, token shift") {
    train::FastDllmV2Objective<4> fd(9);
    fd.build_with_masks(w, 0, 1, mask, b);
    REQUIRE(b.rows == 2);
    REQUIRE(b.length == 16);
    // View 1 masks supervised & mask = {2, 5}; view 2 supervised & !mask = {1, 3, 6, 7}; x_0 follows.
    CHECK(std::vector<int>(b.tokens.begin(), b.tokens.begin() + 16) ==
          std::vector<int>{1, 2, 9, 4, 5, 9, 7, 8, 1, 2, 3, 4, 5, 6, 7, 8});
    CHECK(std::vector<int>(b.tokens.begin() + 16, b.tokens.end()) ==
          std::vector<int>{1, 9, 3, 9, 5, 6, 9, 9, 1, 2, 3, 4, 5, 6, 7, 8});
    CHECK(std::vector<int>(b.positions.begin(), b.positions.begin() + 16) ==
          std::vector<int>{0, 1, 2, 3, 4, 5, 6, 7, 0, 1, 2, 3, 4, 5, 6, 7});
    std::vector<std::pair<std::int64_t, int>> t;
    for (auto& x : b.targets) t.push_back({x.index, x.label});
    CHECK(t == std::vector<std::pair<std::int64_t, int>>{{1, 3}, {4, 6}, {16 + 0, 2}, {16 + 2, 4}, {16 + 5, 7}, {16 + 6, 8}});
  }
  SUBCASE("no token shift: position i predicted from i") {
    train::FastDllmV2Objective<4, schedule::Linear, train::recipe::no_token_shift> fd(9);
    fd.build_with_masks(w, 0, 1, mask, b);
    std::vector<std::pair<std::int64_t, int>> t;
    for (auto& x : b.targets) t.push_back({x.index, x.label});
    CHECK(t == std::vector<std::pair<std::int64_t, int>>{{2, 3}, {5, 6}, {16 + 1, 2}, {16 + 3, 4}, {16 + 6, 7}, {16 + 7, 8}});
  }
  SUBCASE("without complementary masks: view 1 only") {
    train::FastDllmV2Objective<4, schedule::Linear, train::recipe::naive_token_shift> fd(9);
    fd.build_with_masks(w, 0, 1, mask, b);
    CHECK(b.rows == 1);
    CHECK(b.targets.size() == 2);
    CHECK(fd.pad_block() == 0);
  }
  SUBCASE("a window after the first, whose first token is supervised: with token shift it has no predecessor") {
    // Window 1 of two; [MASK] = 7. View 1 masks supervised & flag = {0, 3}, view 2 supervised &
    // !flag = {1}. Position 0 drops out of view 1's terms (no output before it in the window).
    const train::Windows two{4, {9, 9, 9, 9, 1, 2, 3, 4}, {0, 0, 0, 0, 1, 1, 0, 1}};
    train::FastDllmV2Objective<4> fd(7);
    fd.build_with_masks(two, 1, 1, std::vector<std::uint8_t>{1, 0, 0, 1}, b);
    REQUIRE(b.rows == 2);
    CHECK(b.tokens == std::vector<int>{7, 2, 3, 7, 1, 2, 3, 4, 1, 7, 3, 4, 1, 2, 3, 4});
    std::vector<std::pair<std::int64_t, int>> t;
    for (auto& x : b.targets) t.push_back({x.index, x.label});
    CHECK(t == std::vector<std::pair<std::int64_t, int>>{{2, 4}, {8 + 0, 2}});
  }
  CHECK_ERROR(train::FastDllmV2Objective<3>(9).build_with_masks(w, 0, 1, mask, b), "not a multiple of the block size 3");
  CHECK_ERROR(train::FastDllmV2Objective<4>(9).build_with_masks(w, 0, 1, std::vector<std::uint8_t>(7), b),
              "fdllm2 objective: 7 mask flags for 1 windows of 8");
  CHECK_ERROR(train::FastDllmV2Objective<4>(9).build_with_masks(w, 0, 1, std::vector<std::uint8_t>(9), b),
              "fdllm2 objective: 9 mask flags for 1 windows of 8");
  CHECK_ERROR(train::FastDllmV2Objective<4>(9).build_with_masks(w, 0, 2, std::vector<std::uint8_t>(16), b),
              "fdllm2 objective: windows [0, 2) asked of 1");
  CHECK_ERROR(train::FastDllmV2Objective<4>{}.build_with_masks(w, 0, 1, mask, b), "fdllm2 objective: the [MASK] id is not set");
}

TEST_CASE("train/objective: drawn noise is per block, and the two views mask every supervised token once") {
  const int L = 64, count = 64;
  train::Windows w;
  w.length = L;
  for (int i = 0; i < L * count; ++i) {
    w.ids.push_back(1 + i % 7);
    w.supervised.push_back(i % 5 != 0 ? 1 : 0);
  }
  train::FastDllmV2Objective<16> fd(0);
  train::ModelBatch b;
  Rng rng(1);
  fd.build(w, 0, count, rng, b);
  std::vector<int> hits(std::size_t(L) * count, 0);
  int low = 0, high = 0;
  double spread = 0;  // the masked fractions' range over a window's blocks, summed over windows
  for (int r = 0; r < count; ++r) {
    double lowest = 1, highest = 0;
    for (int blk = 0; blk < L / 16; ++blk) {
      int masked = 0, supervised = 0;
      for (int i = blk * 16; i < blk * 16 + 16; ++i) {
        const bool sup = w.supervised[std::size_t(r * L + i)] != 0;
        const bool m1 = b.tokens[std::size_t(r) * 2 * L + i] == 0;
        const bool m2 = b.tokens[std::size_t(count + r) * 2 * L + i] == 0;
        CHECK(!(m1 && m2));
        CHECK((m1 || m2) == sup);
        masked += m1;
        supervised += sup;
      }
      // Per-block rates spread over [0, 1] (a per-sequence rate would concentrate at 1/2).
      low += masked * 10 <= supervised;
      high += masked * 10 >= supervised * 9;
      lowest = std::min(lowest, double(masked) / supervised);
      highest = std::max(highest, double(masked) / supervised);
    }
    spread += highest - lowest;
  }
  CHECK(low > 10);
  CHECK(high > 10);
  // Each block draws its own rate: the range of four uniform rates is 3/5 on average, where one
  // rate a window would leave only the sampling noise of 12 or 13 tokens a block (about 0.3).
  CHECK(spread / count > 0.45);
  for (auto& t : b.targets) {
    const std::int64_t row = t.index / (2 * L), col = t.index % (2 * L) + 1;
    hits[std::size_t((row % count) * L + col)]++;
  }
  for (int r = 0; r < count; ++r)
    for (int i = 1; i < L; ++i) CHECK(hits[std::size_t(r * L + i)] == (w.supervised[std::size_t(r * L + i)] ? 1 : 0));
}

TEST_CASE("train/data: bad data files are named with their line") {
  auto dir = test::temp_dir("train-data");
  test::write_text(dir / "a.jsonl", "{\"prompt_ids\": [1], \"response_ids\": [2, 3]}\n{\"prompt_ids\": [1]\n");
  CHECK_ERROR(train::read_examples(dir / "a.jsonl", 10), "a.jsonl:2: not valid JSON");
  test::write_text(dir / "b.jsonl", "{\"prompt_ids\": [1]}\n");
  CHECK_ERROR(train::read_examples(dir / "b.jsonl", 10), "b.jsonl:1: missing array field \"response_ids\"");
  test::write_text(dir / "c.jsonl", "{\"prompt_ids\": [1], \"response_ids\": [12]}\n");
  CHECK_ERROR(train::read_examples(dir / "c.jsonl", 10), "c.jsonl:1: token id 12");
  test::write_text(dir / "d.jsonl", "{\"prompt_ids\": [10], \"response_ids\": [9]}\n");  // ids run to 9
  CHECK_ERROR(train::read_examples(dir / "d.jsonl", 10), "d.jsonl:1: token id 10 in \"prompt_ids\" is outside");
  test::write_text(dir / "good.jsonl", "{\"prompt_ids\": [1], \"response_ids\": [2, 3]}\n\n{\"prompt_ids\": [], \"response_ids\": [4]}\n");
  const auto good = train::read_examples(dir / "good.jsonl", 10);
  REQUIRE(good.size() == 2);
  CHECK(good[0].prompt == std::vector<int>{1});
  CHECK(good[0].response == std::vector<int>{2, 3});
  CHECK(good[1].prompt.empty());
  test::write_text(dir / "batch.json", "{\"input_ids\": [[1, 2]], \"supervised\": [[0, 1, 1]]}");
  CHECK_ERROR(train::read_batch_file(dir / "batch.json", 10), "\"supervised\"[0] must be an array of 2 integers");
  test::write_text(dir / "batch2.json", "{\"input_ids\": [[1, 2]], \"supervised\": [[0, 2]]}");
  CHECK_ERROR(train::read_batch_file(dir / "batch2.json", 10), "holds 2; expected 0 or 1");
  test::write_text(dir / "batch3.json", "{\"input_ids\": [[1, 2]], \"supervised\": [[0, 1], [1, 1]]}");
  CHECK_ERROR(train::read_batch_file(dir / "batch3.json", 10), "\"supervised\" has 2 rows, \"input_ids\" 1");
  test::write_text(dir / "batch4.json", "{\"input_ids\": [[1, 2], [3, 10]], \"supervised\": [[0, 1], [1, 1]]}");
  CHECK_ERROR(train::read_batch_file(dir / "batch4.json", 10), "token id 10 in \"input_ids\"[1]");

  // Every other refusal of the two readers, each naming the file (and the line, or the field).
  // `read` refuses file `name` holding `text`, with the file's path then `message`.
  const auto refused = [&](auto read, const char* name, const char* text, const std::string& message) {
    test::write_text(dir / name, text);
    CHECK_ERROR(read(dir / name, 10), (dir / name).string() + message);
  };
  const auto examples_error = [&](auto... args) { refused(&train::read_examples, args...); };
  const auto batch_error = [&](auto... args) { refused(&train::read_batch_file, args...); };
  CHECK_ERROR(train::read_examples(dir / "nowhere.jsonl", 10), "nowhere.jsonl: cannot open the data file");
  examples_error("e.jsonl", "[1, 2]\n", ":1: expected an object with \"prompt_ids\" and \"response_ids\"");
  examples_error("f.jsonl", "{\"prompt_ids\": \"12\", \"response_ids\": [2]}\n", ":1: missing array field \"prompt_ids\"");
  examples_error("g.jsonl", "{\"prompt_ids\": [1], \"response_ids\": [2]}\n{\"prompt_ids\": [1.5], \"response_ids\": [2]}\n",
                 ":2: \"prompt_ids\" holds a non-integer");
  examples_error("h.jsonl", "{\"prompt_ids\": [1], \"response_ids\": [2, \"3\"]}\n", ":1: \"response_ids\" holds a non-integer");
  examples_error("i.jsonl", "{\"prompt_ids\": [1], \"response_ids\": []}\n", ":1: \"response_ids\" is empty");
  examples_error("j.jsonl", "\n  \n", ": no examples");
  CHECK_ERROR(train::read_batch_file(dir / "nowhere.json", 10), "nowhere.json: cannot open the batch file");
  batch_error("b5.json", "[[1, 2]]", ": not a JSON object");
  batch_error("b6.json", "{\"input_ids\": [[1, 2]]}", ": missing field \"supervised\"");
  batch_error("b7.json", "{\"input_ids\": [], \"supervised\": [[0]]}", ": \"input_ids\" must be a non-empty array of rows");
  batch_error("b8.json", "{\"input_ids\": [[]], \"supervised\": [[]]}", ": \"input_ids\"[0] must be a non-empty array");
  batch_error("b9.json", "{\"input_ids\": [[1, 2.5]], \"supervised\": [[0, 1]]}", ": \"input_ids\"[0] holds a non-integer");
  batch_error("b10.json", "{\"input_ids\": [[1, 2]], \"supervised\": [[0, 1]], \"mask\": [[1]]}",
              ": \"mask\"[0] must be an array of 2 integers");
  batch_error("b11.json", "{\"input_ids\": [[1, 2]], \"supervised\": [[0, 1]], \"mask\": [[1, 3]]}",
              ": \"mask\"[0] holds 3; expected 0 or 1");
  // 2^64 - 1 is an integer that JSON holds unsigned: read as 64 signed bits it would be -1. It is
  // refused as itself, a token id and a flag alike.
  examples_error("k.jsonl", "{\"prompt_ids\": [18446744073709551615], \"response_ids\": [2]}\n",
                 ":1: token id 18446744073709551615 in \"prompt_ids\" is outside the vocabulary [0, 10)");
  batch_error("b12.json", "{\"input_ids\": [[1, 18446744073709551615]], \"supervised\": [[0, 1]]}",
              ": token id 18446744073709551615 in \"input_ids\"[0] is outside the vocabulary [0, 10)");
  batch_error("b13.json", "{\"input_ids\": [[1, 2]], \"supervised\": [[0, 18446744073709551615]]}",
              ": \"supervised\"[0] holds 18446744073709551615; expected 0 or 1");
  // A good batch, with and without the block-diffusion noise.
  test::write_text(dir / "good.json", "{\"input_ids\": [[1, 2, 3], [4, 5, 6]], \"supervised\": [[0, 1, 1], [0, 0, 1]], "
                                      "\"mask\": [[1, 0, 1], [0, 1, 1]]}");
  const auto batch = train::read_batch_file(dir / "good.json", 10);
  CHECK(batch.windows.length == 3);
  CHECK(batch.windows.ids == std::vector<int>{1, 2, 3, 4, 5, 6});
  CHECK(batch.windows.supervised == std::vector<std::uint8_t>{0, 1, 1, 0, 0, 1});
  CHECK(batch.mask == std::vector<std::uint8_t>{1, 0, 1, 0, 1, 1});
  test::write_text(dir / "ar.json", "{\"input_ids\": [[7, 8]], \"supervised\": [[1, 1]]}");
  CHECK(train::read_batch_file(dir / "ar.json", 10).mask.empty());
}

TEST_CASE("train/data: the shuffled order is a uniform permutation, so an example may keep its place") {
  // Over many seeds every ordering of three examples turns up about equally often: 1/6 each.
  // (Sattolo's variant, a swap with a strictly earlier slot, makes only the two cycles.)
  std::map<std::vector<std::size_t>, int> seen;
  const int draws = 6000;
  for (int seed = 0; seed < draws; ++seed) ++seen[train::shuffled_order(3, std::uint64_t(seed))];
  CHECK(seen.size() == 6);
  for (const auto& [order, n] : seen) CHECK(std::abs(n - draws / 6) < 150);  // about 5 standard deviations
  CHECK(train::shuffled_order(0, 1).empty());
  CHECK(train::shuffled_order(1, 1) == std::vector<std::size_t>{0});
}
