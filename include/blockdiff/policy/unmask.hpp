// Unmasking policies: which masked positions of the active sub-block to commit after a forward.
//
// A policy sees one Candidate per masked position of the sub-block (its offset in the block and
// the statistics of its shifted logits) and marks the ones to commit. It declares which
// statistics it needs (`needs_second_prob`, `needs_entropy`): the backend picks the vocabulary
// reduction from those traits, so a policy that only needs the max probability never pays for
// an entropy. Every policy must make progress: commit at least one position when any is masked
// (the decoder checks, and reports a policy that does not).
//
// Runtime knobs (tau, k, gamma, f, steps) are data members; the type is the algorithm.
// The decoder asks for every row's decision of a forward at once, through op::Unmask<Policy>.
// The built-in policies' `select` is BLOCKDIFF_HOST_DEVICE and declares `device_select`, so a
// device backend runs that same code in a kernel; a policy without the trait (one that uses the
// standard library, say) is run on the host by every backend.
#pragma once

#include <cmath>
#include <concepts>
#include <cstdint>
#include <span>

#include "blockdiff/backend/kernel.hpp"
#include "blockdiff/core/error.hpp"
#include "blockdiff/core/macros.hpp"
#include "blockdiff/core/rng.hpp"
#include "blockdiff/policy/block_shape.hpp"
#include "blockdiff/policy/kind.hpp"
#include "blockdiff/policy/schedule.hpp"

namespace blockdiff {

//! One masked position of the active sub-block.
struct Candidate {
  int offset = 0;        //!< position within the block
  PositionStats stats;   //!< from the logits of offset - 1 (token shift)
};

//! Where decoding stands when a policy is asked.
struct StepContext {
  int step = 0;             //!< denoising steps already taken in this sub-block
  int sub_blocks = 1;       //!< sub-blocks per block
  int masked_at_start = 0;  //!< masked positions of the sub-block before its first step
  Rng* rng = nullptr;       //!< the row's generator (Random uses it)
};

template <class P>
concept UnmaskingPolicy =
    PolicyOfKind<P, kind::unmasking> && requires(const P& p, const Candidate* c, int n, StepContext& ctx, bool* out) {
      { P::needs_second_prob } -> std::convertible_to<bool>;
      { P::needs_entropy } -> std::convertible_to<bool>;
      { P::name } -> std::convertible_to<const char*>;
      p.select(c, n, ctx, out);
      p.validate();
    };

namespace detail {
//! Writes 0..n-1 into `idx` ordered by `before(a, b)`, stable (insertion sort: n <= a sub-block).
template <class Before>
BLOCKDIFF_HOST_DEVICE void order_candidates(int* idx, int n, Before before) {
  for (int i = 0; i < n; ++i) {
    int j = i;
    while (j > 0 && before(i, idx[j - 1])) {
      idx[j] = idx[j - 1];
      --j;
    }
    idx[j] = i;
  }
}
//! Index of the most confident candidate (leftmost on ties, as torch.argmax).
BLOCKDIFF_HOST_DEVICE inline int most_confident(const Candidate* c, int n) {
  int best = 0;
  for (int i = 1; i < n; ++i)
    if (c[i].stats.p1 > c[best].stats.p1) best = i;
  return best;
}
//! Marks the `count` most confident candidates.
BLOCKDIFF_HOST_DEVICE inline void choose_most_confident(const Candidate* c, int n, int count, bool* out) {
  int idx[max_block_size];
  order_candidates(idx, n, [&](int a, int b) { return c[a].stats.p1 > c[b].stats.p1; });
  for (int i = 0; i < count && i < n; ++i) out[idx[i]] = true;
}
}  // namespace detail

namespace unmask {

//! The paper's policy: every p > tau, and always the most confident (§3.3). tau = 1 commits one
//! token per forward; tau = 0 commits every position whose probability is positive.
struct Threshold {
  using policy_kind = kind::unmasking;
  static constexpr const char* name = "threshold";
  static constexpr bool needs_second_prob = false;
  static constexpr bool needs_entropy = false;
  static constexpr bool device_select = true;
  float tau = 0.9f;

  void validate() const { require(tau >= 0.0f && tau <= 1.0f, "threshold ", tau, " is outside [0, 1]"); }
  BLOCKDIFF_HOST_DEVICE void select(const Candidate* c, int n, StepContext&, bool* out) const {
    for (int i = 0; i < n; ++i) out[i] = c[i].stats.p1 > tau;
    out[detail::most_confident(c, n)] = true;
  }
};

//! The k most confident positions per forward.
struct TopK {
  using policy_kind = kind::unmasking;
  static constexpr const char* name = "topk";
  static constexpr bool needs_second_prob = false;
  static constexpr bool needs_entropy = false;
  static constexpr bool device_select = true;
  int k = 2;

  void validate() const { require(k >= 1, "k must be >= 1, got ", k); }
  BLOCKDIFF_HOST_DEVICE void select(const Candidate* c, int n, StepContext&, bool* out) const {
    detail::choose_most_confident(c, n, k, out);
  }
};

//! LLaDA / Dream-style step budget: `steps` denoising steps per block, shared evenly by its
//! sub-blocks; at step s of n the schedule says how many of the sub-block's masked positions
//! should be revealed by now (1 - mask_prob(1 - (s+1)/n), normalised), and the most confident
//! ones make up the difference. The last step reveals everything left.
//! (It runs on the device with its schedule's `mask_prob`, which is BLOCKDIFF_HOST_DEVICE in
//! every built-in schedule.)
template <NoiseSchedule Schedule = schedule::Linear>
struct Scheduled {
  using policy_kind = kind::unmasking;
  static constexpr const char* name = "scheduled";
  static constexpr bool needs_second_prob = false;
  static constexpr bool needs_entropy = false;
  static constexpr bool device_select = true;
  int steps = 8;
  Schedule schedule{};

  void validate() const { require(steps >= 1, "steps must be >= 1, got ", steps); }
  BLOCKDIFF_HOST_DEVICE int reveal_count(const StepContext& ctx, int masked_now) const {
    const int n = steps / ctx.sub_blocks > 0 ? steps / ctx.sub_blocks : 1;
    if (ctx.step + 1 >= n) return masked_now;
    const float hi = schedule.mask_prob(1.0f), lo = schedule.mask_prob(0.0f);
    const float t = 1.0f - static_cast<float>(ctx.step + 1) / static_cast<float>(n);
    const float frac = hi > lo ? (hi - schedule.mask_prob(t)) / (hi - lo) : 1.0f;
    const int target = static_cast<int>(std::ceil(static_cast<float>(ctx.masked_at_start) * frac - 1e-4f));
    const int revealed = ctx.masked_at_start - masked_now;
    const int count = target - revealed;
    return count < 1 ? 1 : (count > masked_now ? masked_now : count);
  }
  BLOCKDIFF_HOST_DEVICE void select(const Candidate* c, int n, StepContext& ctx, bool* out) const {
    detail::choose_most_confident(c, n, reveal_count(ctx, n), out);
  }
};

//! Every position whose margin p1 - p2 exceeds tau, and always the largest margin.
struct Margin {
  using policy_kind = kind::unmasking;
  static constexpr const char* name = "margin";
  static constexpr bool needs_second_prob = true;
  static constexpr bool needs_entropy = false;
  static constexpr bool device_select = true;
  float tau = 0.8f;

  void validate() const { require(tau >= 0.0f && tau <= 1.0f, "margin threshold ", tau, " is outside [0, 1]"); }
  BLOCKDIFF_HOST_DEVICE void select(const Candidate* c, int n, StepContext&, bool* out) const {
    int best = 0;
    for (int i = 0; i < n; ++i) {
      const float m = c[i].stats.p1 - c[i].stats.p2;
      out[i] = m > tau;
      if (m > c[best].stats.p1 - c[best].stats.p2) best = i;
    }
    out[best] = true;
  }
};

//! Every position whose entropy (nats) is below tau, and always the lowest entropy.
struct Entropy {
  using policy_kind = kind::unmasking;
  static constexpr const char* name = "entropy";
  static constexpr bool needs_second_prob = false;
  static constexpr bool needs_entropy = true;
  static constexpr bool device_select = true;
  float tau = 0.3f;

  void validate() const { require(tau >= 0.0f, "entropy threshold ", tau, " must be >= 0"); }
  BLOCKDIFF_HOST_DEVICE void select(const Candidate* c, int n, StepContext&, bool* out) const {
    int best = 0;
    for (int i = 0; i < n; ++i) {
      out[i] = c[i].stats.entropy < tau;
      if (c[i].stats.entropy < c[best].stats.entropy) best = i;
    }
    out[best] = true;
  }
};

//! The EB-sampler rule: reveal positions in order of increasing entropy while their summed
//! entropy stays at most gamma; the first is always revealed.
struct EntropyBounded {
  using policy_kind = kind::unmasking;
  static constexpr const char* name = "entropy-bounded";
  static constexpr bool needs_second_prob = false;
  static constexpr bool needs_entropy = true;
  static constexpr bool device_select = true;
  float gamma = 0.5f;

  void validate() const { require(gamma >= 0.0f, "entropy bound ", gamma, " must be >= 0"); }
  BLOCKDIFF_HOST_DEVICE void select(const Candidate* c, int n, StepContext&, bool* out) const {
    int idx[max_block_size];
    detail::order_candidates(idx, n, [&](int a, int b) { return c[a].stats.entropy < c[b].stats.entropy; });
    float sum = 0.0f;
    for (int i = 0; i < n; ++i) {
      sum += c[idx[i]].stats.entropy;
      if (i > 0 && sum > gamma) break;
      out[idx[i]] = true;
    }
  }
};

//! Fast-dLLM v1's factor rule: sort by confidence and accept the top n while
//! p_n >= 1 - f / (n + 1); the first is always accepted.
struct Factor {
  using policy_kind = kind::unmasking;
  static constexpr const char* name = "factor";
  static constexpr bool needs_second_prob = false;
  static constexpr bool needs_entropy = false;
  static constexpr bool device_select = true;
  float f = 1.0f;

  void validate() const { require(f > 0.0f, "factor ", f, " must be > 0"); }
  BLOCKDIFF_HOST_DEVICE void select(const Candidate* c, int n, StepContext&, bool* out) const {
    int idx[max_block_size];
    detail::order_candidates(idx, n, [&](int a, int b) { return c[a].stats.p1 > c[b].stats.p1; });
    for (int i = 0; i < n; ++i) {
      const int rank = i + 1;
      if (i > 0 && c[idx[i]].stats.p1 < 1.0f - f / static_cast<float>(rank + 1)) break;
      out[idx[i]] = true;
    }
  }
};

//! k positions chosen uniformly at random (a baseline that ignores confidence).
struct Random {
  using policy_kind = kind::unmasking;
  static constexpr const char* name = "random";
  static constexpr bool needs_second_prob = false;
  static constexpr bool needs_entropy = false;
  static constexpr bool device_select = true;
  int k = 1;

  void validate() const { require(k >= 1, "k must be >= 1, got ", k); }
  BLOCKDIFF_HOST_DEVICE void select(const Candidate*, int n, StepContext& ctx, bool* out) const {
    // Partial Fisher-Yates over the candidate indices.
    int idx[max_block_size];
    for (int i = 0; i < n; ++i) idx[i] = i;
    const int take = k < n ? k : n;
    for (int i = 0; i < take; ++i) {
      const int j = i + static_cast<int>(ctx.rng->below(static_cast<std::uint64_t>(n - i)));
      const int t = idx[i];
      idx[i] = idx[j];
      idx[j] = t;
      out[idx[i]] = true;
    }
  }
};

}  // namespace unmask

//! Whether the policy's `select` may run in a device kernel (see the top of this file).
template <class P>
concept DeviceSelectable = UnmaskingPolicy<P> && requires {
  requires P::device_select;
};

//! One row of an op::Unmask call: its candidates, where its sub-block stands, and its generator.
struct UnmaskRow {
  int first = 0;        //!< its candidates are [first, first + n) of the call's
  int n = 0;
  StepContext context;  //!< its `rng` is not read: the op points it at `rng` below
  Rng rng{0};           //!< a copy of the row's generator; a policy that draws advances it
};

namespace detail {
//! Rejects a row of an op::Unmask call that no policy can take (every policy commits one of a
//! row's candidates, and orders at most a block's), naming it.
inline void check_unmask_row(const UnmaskRow& row, std::size_t index) {
  require(row.first >= 0 && row.n >= 1 && row.n <= max_block_size, "op::Unmask: row ", index, " has ", row.n,
          " candidates from index ", row.first, "; a row has 1 to ", max_block_size, " from index 0 on");
}
//! One row's decision: clears its flags, then lets the policy mark the candidates to commit.
template <class P>
BLOCKDIFF_HOST_DEVICE void select_row(const P& policy, const Candidate* candidates, UnmaskRow& row, bool* chosen) {
  StepContext ctx = row.context;
  ctx.rng = &row.rng;
  for (int i = 0; i < row.n; ++i) chosen[row.first + i] = false;
  policy.select(candidates + row.first, row.n, ctx, chosen + row.first);
}
}  // namespace detail

//! op::Unmask on the host, for every backend unless it specialises the op: `candidates`,
//! `rows` and `chosen` (one flag a candidate) are in host memory, as the decoder keeps them.
template <class Backend, UnmaskingPolicy P>
struct Kernel<Backend, op::Unmask<P>> {
  static void run(const P& policy, const Candidate* candidates, std::span<UnmaskRow> rows, bool* chosen) {
    for (std::size_t r = 0; r < rows.size(); ++r) detail::check_unmask_row(rows[r], r);
    for (UnmaskRow& row : rows) detail::select_row(policy, candidates, row, chosen);
  }
};

static_assert(DeviceSelectable<unmask::Threshold>);
static_assert(DeviceSelectable<unmask::TopK>);
static_assert(DeviceSelectable<unmask::Scheduled<>>);
static_assert(DeviceSelectable<unmask::Margin>);
static_assert(DeviceSelectable<unmask::Entropy>);
static_assert(DeviceSelectable<unmask::EntropyBounded>);
static_assert(DeviceSelectable<unmask::Factor>);
static_assert(DeviceSelectable<unmask::Random>);

}  // namespace blockdiff
