// Each unmasking policy on hand-made statistics whose right answer is worked out by hand, and
// the noise schedules against their formulas.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "../support/check_error.hpp"
#include "blockdiff/policy/cache.hpp"
#include "blockdiff/policy/schedule.hpp"
#include "blockdiff/policy/unmask.hpp"

using namespace blockdiff;

namespace {
std::vector<Candidate> cands(std::vector<float> p1, std::vector<float> p2 = {}, std::vector<float> ent = {}) {
  std::vector<Candidate> c(p1.size());
  for (std::size_t i = 0; i < p1.size(); ++i) {
    c[i].offset = static_cast<int>(i) + 1;
    c[i].stats.p1 = p1[i];
    c[i].stats.token = 100 + static_cast<int>(i);
    c[i].stats.p2 = p2.empty() ? 0 : p2[i];
    c[i].stats.entropy = ent.empty() ? 0 : ent[i];
  }
  return c;
}
template <class P>
std::vector<int> pick(const P& p, const std::vector<Candidate>& c, StepContext ctx = {}) {
  bool out[max_block_size] = {};
  Rng rng(1);
  if (!ctx.rng) ctx.rng = &rng;
  p.select(c.data(), static_cast<int>(c.size()), ctx, out);
  std::vector<int> chosen;
  for (std::size_t i = 0; i < c.size(); ++i)
    if (out[i]) chosen.push_back(static_cast<int>(i));
  return chosen;
}
}  // namespace

TEST_CASE("Threshold: every p > tau plus the most confident; tau 1 takes exactly one, tau 0 all") {
  auto c = cands({0.5f, 0.95f, 0.91f, 0.9f, 0.2f});
  CHECK(pick(unmask::Threshold{0.9f}, c) == std::vector<int>{1, 2});  // 0.9 is not > 0.9
  CHECK(pick(unmask::Threshold{0.99f}, c) == std::vector<int>{1});   // the fallback
  CHECK(pick(unmask::Threshold{1.0f}, cands({1.0f, 1.0f})) == std::vector<int>{0});  // leftmost of a tie
  CHECK(pick(unmask::Threshold{0.0f}, c).size() == 5);
  CHECK_ERROR(unmask::Threshold{1.5f}.validate(), "threshold 1.5 is outside [0, 1]");
  CHECK_ERROR(unmask::Threshold{-0.1f}.validate(), "outside [0, 1]");
  CHECK_NOTHROW(unmask::Threshold{1.0f}.validate());  // both ends are thresholds the study sweeps
  CHECK_NOTHROW(unmask::Threshold{0.0f}.validate());
}

TEST_CASE("TopK: min(k, masked) most confident") {
  auto c = cands({0.5f, 0.95f, 0.91f, 0.2f});
  CHECK(pick(unmask::TopK{2}, c) == std::vector<int>{1, 2});
  CHECK(pick(unmask::TopK{9}, c).size() == 4);
  CHECK_ERROR(unmask::TopK{0}.validate(), "k must be >= 1");
}

TEST_CASE("Margin and Entropy thresholds, each with its fallback") {
  auto c = cands({0.6f, 0.9f, 0.5f}, {0.39f, 0.05f, 0.45f}, {1.0f, 0.2f, 0.9f});
  CHECK(pick(unmask::Margin{0.5f}, c) == std::vector<int>{1});        // margins .21 .85 .05
  CHECK(pick(unmask::Margin{0.9f}, c) == std::vector<int>{1});        // fallback: largest margin
  CHECK(pick(unmask::Margin{0.1f}, c) == std::vector<int>{0, 1});
  CHECK(pick(unmask::Entropy{0.95f}, c) == std::vector<int>{1, 2});
  CHECK(pick(unmask::Entropy{0.1f}, c) == std::vector<int>{1});       // fallback: lowest entropy
  // "Exceeds" is strict, and the fallback takes the leftmost of equal bests, as Threshold does.
  CHECK(pick(unmask::Margin{0.5f}, cands({0.75f, 0.625f}, {0.25f, 0.125f})) == std::vector<int>{0});  // margins .5 .5
  CHECK(pick(unmask::Margin{0.25f}, cands({0.75f, 0.625f}, {0.25f, 0.125f})) == std::vector<int>{0, 1});
  CHECK(pick(unmask::Entropy{0.5f}, cands({0.5f, 0.5f, 0.5f}, {}, {0.75f, 0.5f, 0.5f})) == std::vector<int>{1});
  static_assert(unmask::Margin::needs_second_prob && !unmask::Margin::needs_entropy);
  static_assert(unmask::Entropy::needs_entropy && !unmask::Threshold::needs_entropy);
}

TEST_CASE("EntropyBounded: lowest entropies while their sum stays <= gamma") {
  auto c = cands({0.5f, 0.5f, 0.5f, 0.5f}, {}, {0.3f, 0.1f, 0.25f, 2.0f});
  CHECK(pick(unmask::EntropyBounded{0.4f}, c) == std::vector<int>{1, 2});   // 0.1 + 0.25 <= 0.4 < + 0.3
  CHECK(pick(unmask::EntropyBounded{0.7f}, c) == std::vector<int>{0, 1, 2});
  CHECK(pick(unmask::EntropyBounded{0.01f}, c) == std::vector<int>{1});     // the first always
  // A sum equal to gamma stays; equal entropies go in index order.
  auto even = cands({0.5f, 0.5f, 0.5f}, {}, {0.25f, 0.25f, 0.25f});
  CHECK(pick(unmask::EntropyBounded{0.5f}, even) == std::vector<int>{0, 1});
  CHECK(pick(unmask::EntropyBounded{0.3f}, even) == std::vector<int>{0});
}

TEST_CASE("Factor: accept the top n while p_n >= 1 - f / (n + 1)") {
  // Sorted: 0.9 (n=1 always), 0.8 (n=2: needs >= 1 - 1/3 = .667, ok), 0.7 (n=3: needs >= .75, stop).
  auto c = cands({0.7f, 0.9f, 0.8f, 0.1f});
  CHECK(pick(unmask::Factor{1.0f}, c) == std::vector<int>{1, 2});
  CHECK(pick(unmask::Factor{0.1f}, c) == std::vector<int>{1});
  CHECK(pick(unmask::Factor{5.0f}, c).size() == 4);  // n=4 needs >= 1 - 5/5 = 0
  // f = 2: n=3 needs >= 1 - 2/4 = 0.5 exactly, which 0.5 meets; n=4 needs 0.6.
  CHECK(pick(unmask::Factor{2.0f}, cands({0.7f, 0.5f, 0.9f, 0.45f})) == std::vector<int>{0, 1, 2});
}

TEST_CASE("order-based policies rank equal statistics by position, the leftmost first") {
  auto tied = cands({0.5f, 0.9f, 0.5f, 0.5f});
  CHECK(pick(unmask::TopK{2}, tied) == std::vector<int>{0, 1});
  CHECK(pick(unmask::TopK{3}, tied) == std::vector<int>{0, 1, 2});
  CHECK(pick(unmask::Factor{1.5f}, tied) == std::vector<int>{0, 1});  // n=2 needs >= 0.5; n=3 needs 0.625
  unmask::Scheduled<schedule::Linear> two{4};
  CHECK(pick(two, cands({0.5f, 0.5f, 0.5f, 0.5f, 0.5f, 0.5f, 0.5f, 0.5f}), StepContext{0, 1, 8, nullptr}) ==
        std::vector<int>{0, 1});
}

TEST_CASE("Scheduled: reveal counts follow the schedule and the last step reveals everything") {
  unmask::Scheduled<schedule::Linear> lin{4};
  lin.schedule.eps = 0.0f;
  // One sub-block per block, 8 masked, 4 steps: 2 per step.
  StepContext ctx{0, 1, 8, nullptr};
  CHECK(lin.reveal_count(ctx, 8) == 2);
  ctx.step = 1;
  CHECK(lin.reveal_count(ctx, 6) == 2);
  ctx.step = 3;
  CHECK(lin.reveal_count(ctx, 3) == 3);  // the last step takes what is left
  // Four sub-blocks share 8 steps: 2 steps each, so 4 of 8 per step.
  StepContext sub{0, 4, 8, nullptr};
  CHECK(unmask::Scheduled<schedule::Linear>{8}.reveal_count(sub, 8) == 4);
  // Cosine reveals few first: 1 - cos(pi/2 * 3/4) of 8 masked are still masked after step 1.
  unmask::Scheduled<schedule::Cosine> cosine{4};
  StepContext c0{0, 1, 8, nullptr};
  const double frac = 1.0 - (1.0 - std::cos(1.5707963267948966 * 0.75));
  CHECK(cosine.reveal_count(c0, 8) == static_cast<int>(std::ceil(8 * frac - 1e-4)));
  auto c = cands({0.3f, 0.9f, 0.8f, 0.1f, 0.5f, 0.6f, 0.7f, 0.2f});
  CHECK(pick(lin, c, StepContext{0, 1, 8, nullptr}) == std::vector<int>{1, 2});
  CHECK_ERROR(unmask::Scheduled<>{0}.validate(), "steps must be >= 1");
}

TEST_CASE("Scheduled<Linear>: after step s of n, ceil(masked · (s + 1) / n) revealed, in integers, whatever the rounding") {
  // The linear schedule's fraction is (s + 1) / n exactly in real numbers; in floats it can land
  // a hair above an integer count (3 · 1/3), which must not reveal one more.
  int wrong = 0;
  doctest::String first;
  for (const float eps : {1e-3f, 0.0f})
    for (int n = 1; n <= 32; ++n) {
      unmask::Scheduled<schedule::Linear> p{n, schedule::Linear{eps}};
      for (int masked = 1; masked <= max_block_size; ++masked) {
        int revealed = 0;
        for (int s = 0; s < n && revealed < masked; ++s) {
          const int target = s + 1 == n ? masked : (masked * (s + 1) + n - 1) / n;
          const int expected = std::clamp(target - revealed, 1, masked - revealed);
          const int got = p.reveal_count(StepContext{s, 1, masked, nullptr}, masked - revealed);
          if (got != expected && wrong++ == 0)
            first = doctest::toString(n) + " steps, " + doctest::toString(masked) + " masked, step " +
                    doctest::toString(s) + ", eps " + doctest::toString(eps) + ": " + doctest::toString(got) +
                    " revealed, not " + doctest::toString(expected);
          revealed += got;
        }
      }
    }
  CHECK_MESSAGE(wrong == 0, first);
}

TEST_CASE("Random: k distinct positions, reproducible from the seed") {
  auto c = cands({0.1f, 0.2f, 0.3f, 0.4f, 0.5f, 0.6f});
  Rng a(9), b(9);
  auto x = pick(unmask::Random{3}, c, StepContext{0, 1, 6, &a});
  auto y = pick(unmask::Random{3}, c, StepContext{0, 1, 6, &b});
  CHECK(x.size() == 3);
  CHECK(x == y);
}

TEST_CASE("noise schedules against their formulas") {
  CHECK(schedule::Linear{}.mask_prob(0.0f) == doctest::Approx(1e-3));
  CHECK(schedule::Linear{}.mask_prob(1.0f) == doctest::Approx(1.0));
  CHECK(schedule::Linear{}.mask_prob(0.5f) == doctest::Approx(0.9990 * 0.5 + 0.001));
  CHECK(schedule::LogLinear{}.mask_prob(0.5f) == doctest::Approx(0.999 * 0.5).epsilon(1e-5));
  CHECK(schedule::Cosine{}.mask_prob(1.0f) == doctest::Approx(1.0));
  CHECK(schedule::Cosine{}.mask_prob(0.5f) == doctest::Approx(1 - std::cos(3.14159265358979 / 4)));
  CHECK(schedule::Square{}.mask_prob(0.5f) == doctest::Approx(0.25));
  CHECK(schedule::SquareRoot{}.mask_prob(0.25f) == doctest::Approx(0.5));
  schedule::Clipped<schedule::Square> clip{0.2f, 0.6f};
  CHECK(clip.mask_prob(0.0f) == doctest::Approx(0.04));
  CHECK(clip.mask_prob(1.0f) == doctest::Approx(0.36));
}

TEST_CASE("noise schedules describe themselves with the parameters that differ from their defaults") {
  CHECK(description(schedule::Linear{}) == "linear");
  CHECK(description(schedule::Linear{0.01f}) == "linear (eps 0.01)");
  CHECK(description(schedule::LogLinear{}) == "loglinear");
  CHECK(description(schedule::LogLinear{0.05f}) == "loglinear (eps 0.05)");
  CHECK(description(schedule::Cosine{}) == "cosine");
  CHECK(description(schedule::Clipped<schedule::Square>{0.2f, 0.6f}) == "clipped [0.2, 0.6] of square");
  CHECK(description(schedule::Clipped<schedule::Linear>{0.3f, 0.8f, {0.05f}}) ==
        "clipped [0.3, 0.8] of linear (eps 0.05)");
}

// Policies in the wrong slot: the concepts reject them.
static_assert(!UnmaskingPolicy<schedule::Linear>);
static_assert(!NoiseSchedule<unmask::Threshold>);
static_assert(!CacheStrategy<unmask::TopK>);
static_assert(!UnmaskingPolicy<int>);

TEST_CASE("op::Unmask: a batch of rows, each decided as its policy decides it alone") {
  // Three rows over one candidate array, with a gap (index 3) that no row owns.
  auto c = cands({0.5f, 0.95f, 0.91f, 0.99f, 0.3f, 0.2f, 0.97f, 0.6f, 0.4f});
  std::vector<UnmaskRow> rows(3);
  rows[0].first = 0, rows[0].n = 3;
  rows[1].first = 4, rows[1].n = 4;
  rows[2].first = 8, rows[2].n = 1;
  for (std::size_t r = 0; r < rows.size(); ++r) {
    rows[r].context = StepContext{0, 1, rows[r].n, nullptr};
    rows[r].rng = Rng(40 + r);
  }
  bool chosen[9];
  std::fill_n(chosen, 9, true);  // stale flags: the op clears a row's before the policy marks them

  SUBCASE("Threshold") {
    Kernel<backend::Host, op::Unmask<unmask::Threshold>>::run(unmask::Threshold{0.9f}, c.data(), rows, chosen);
    const bool expected[9] = {false, true, true, true, false, false, true, false, true};
    for (int i = 0; i < 9; ++i) CHECK_MESSAGE(chosen[i] == expected[i], "candidate ", i);
  }
  SUBCASE("Random: each row draws from its own generator, which comes back advanced") {
    const auto before = rows;
    Kernel<backend::Host, op::Unmask<unmask::Random>>::run(unmask::Random{2}, c.data(), rows, chosen);
    for (std::size_t r = 0; r < rows.size(); ++r) {
      INFO("row ", r);
      Rng alone = before[r].rng;
      const auto own = std::vector<Candidate>(c.begin() + rows[r].first, c.begin() + rows[r].first + rows[r].n);
      std::vector<int> batched;
      for (int i = 0; i < rows[r].n; ++i)
        if (chosen[rows[r].first + i]) batched.push_back(i);
      CHECK(batched == pick(unmask::Random{2}, own, StepContext{0, 1, rows[r].n, &alone}));
      Rng unmoved = before[r].rng, back = rows[r].rng;
      CHECK(back.next() != unmoved.next());       // it was advanced,
      CHECK(rows[r].rng.next() == alone.next());  // by the draws the row takes alone
    }
    CHECK(chosen[3]);  // the gap is no row's: left as it was
  }
  SUBCASE("a row no policy can take is refused, and no flag is touched") {
    rows[1].n = 0;
    CHECK_ERROR((Kernel<backend::Host, op::Unmask<unmask::Threshold>>::run(unmask::Threshold{0.9f}, c.data(), rows, chosen)),
                "op::Unmask: row 1 has 0 candidates from index 4");
    rows[1].n = max_block_size + 1;
    CHECK_ERROR((Kernel<backend::Host, op::Unmask<unmask::Threshold>>::run(unmask::Threshold{0.9f}, c.data(), rows, chosen)),
                "a row has 1 to");
    rows[1].n = 2;
    rows[1].first = -1;
    CHECK_ERROR((Kernel<backend::Host, op::Unmask<unmask::Threshold>>::run(unmask::Threshold{0.9f}, c.data(), rows, chosen)),
                "op::Unmask: row 1 has 2 candidates from index -1");
    CHECK(std::all_of(chosen, chosen + 9, [](bool b) { return b; }));
  }
}
