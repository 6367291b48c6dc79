// Training objectives, as types: what the model sees and which outputs are scored.
//
// `ArObjective` pretrains base models: causal mask, position i predicts token i+1.
// `FastDllmV2Objective<Block, Schedule, Recipe>` is §2 of the notes: per block a time t ~ U(0,1)
// and a mask probability from the schedule (the paper's Linear, eps = 1e-3); view 1 replaces the
// supervised tokens drawn masked with [MASK], view 2 (with `complementary`) the others; each
// view's input is [x_t ; x_0] (2L tokens, positions 0..L-1 twice) under the 2L training mask;
// with `token_shift` the masked token at i is predicted from the x_t output at i−1 (a
// supervised token at window position 0 then has no predecessor and drops out), without it
// from the output at i itself, as LLaDA does. Loss: the plain mean over all terms of both views.
// `pad` is read by the packer (train/data.hpp): samples are padded with [MASK] to a block
// multiple. The paper's Table 2 rows are recipes: see `recipe::`.
#pragma once

#include <algorithm>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "blockdiff/core/description.hpp"
#include "blockdiff/core/error.hpp"
#include "blockdiff/core/rng.hpp"
#include "blockdiff/backend/mask.hpp"
#include "blockdiff/policy/kind.hpp"
#include "blockdiff/policy/schedule.hpp"
#include "blockdiff/train/batch.hpp"

namespace blockdiff::train {

//! Fixed-length training windows: ids and a supervised flag per token.
struct Windows {
  int length = 0;
  std::vector<int> ids;
  std::vector<std::uint8_t> supervised;
  int count() const { return length == 0 ? 0 : static_cast<int>(ids.size() / std::size_t(length)); }
  std::span<const int> ids_of(int w) const { return {ids.data() + std::size_t(w) * length, std::size_t(length)}; }
  std::span<const std::uint8_t> supervised_of(int w) const {
    return {supervised.data() + std::size_t(w) * length, std::size_t(length)};
  }
};

//! Rejects a request for windows that `w` does not hold, or windows whose flags do not match
//! their ids, naming the objective.
inline void check_windows(const Windows& w, int first, int count, const char* objective) {
  require(w.supervised.size() == w.ids.size() &&
              (w.length > 0 ? w.ids.size() % std::size_t(w.length) == 0 : w.ids.empty()),
          objective, " objective: ", w.ids.size(), " ids and ", w.supervised.size(),
          " supervised flags do not make windows of ", w.length);
  require(first >= 0 && count >= 0 && first <= w.count() - count, objective, " objective: windows [", first, ", ",
          std::int64_t{first} + count, ") asked of ", w.count());
}

//! The training-recipe switches of the paper's Table 2.
struct Recipe {
  bool pad = true;            //!< +pad: samples padded with [MASK] to a block multiple
  bool complementary = true;  //!< +CM: the second, complementary view
  bool token_shift = true;    //!< predict position i from the output at i−1
};

namespace recipe {
inline constexpr Recipe paper{true, true, true};               //!< "+pad +CM", the paper's recipe
inline constexpr Recipe naive_token_shift{false, false, true};  //!< Table 2, first row
inline constexpr Recipe pad{true, false, true};                //!< Table 2, "+pad"
inline constexpr Recipe no_token_shift{true, true, false};     //!< "+pad +CM" predicting i from i
}  // namespace recipe

template <class O>
concept Objective = PolicyOfKind<O, kind::objective> && requires(const O& o, const Windows& w, Rng& rng, ModelBatch& b) {
  { O::name } -> std::convertible_to<const char*>;
  { o.pad_block() } -> std::convertible_to<int>;
  o.build(w, 0, 1, rng, b);
  o.mask(1);
};

//! Next-token prediction under the causal mask.
struct ArObjective {
  using policy_kind = kind::objective;
  static constexpr const char* name = "ar";
  int pad_block() const { return 0; }
  mask::Causal mask(int) const { return {}; }

  //! Windows [first, first + count) as rows; `rng` is unused (AR draws no noise).
  void build(const Windows& w, int first, int count, Rng&, ModelBatch& out) const {
    check_windows(w, first, count, name);
    const int L = w.length;
    out.reset(count, L);
    for (int r = 0; r < count; ++r) {
      auto ids = w.ids_of(first + r);
      auto sup = w.supervised_of(first + r);
      for (int i = 0; i < L; ++i) {
        out.tokens[std::size_t(r) * L + i] = ids[std::size_t(i)];
        out.positions[std::size_t(r) * L + i] = i;
        if (i > 0 && sup[std::size_t(i)]) out.targets.push_back({std::int64_t(r) * L + i - 1, ids[std::size_t(i)]});
      }
    }
  }
};

template <int Block, NoiseSchedule Schedule = schedule::Linear, Recipe R = recipe::paper>
struct FastDllmV2Objective {
  static_assert(Block > 0, "FastDllmV2Objective: the block size must be positive");
  using policy_kind = kind::objective;
  static constexpr const char* name = "fdllm2";
  static constexpr int block = Block;
  static constexpr Recipe recipe = R;
  int mask_id = -1;  //!< the [MASK] token id
  Schedule schedule{};

  FastDllmV2Objective() = default;
  explicit FastDllmV2Objective(int mask, Schedule s = {}) : mask_id(mask), schedule(s) {}

  int pad_block() const { return R.pad ? Block : 0; }
  mask::BlockDiffusionTraining<Block> mask(int L) const { return {L}; }

  //! The objective with its parameters, as a checkpoint records it.
  std::string describe() const {
    return ::blockdiff::detail::concat(name, ": block ", Block, ", ", description(schedule), " noise, ", R.pad ? "+pad" : "no pad",
                                       R.complementary ? " +CM" : " one view",
                                       R.token_shift ? ", token shift" : ", no token shift", ", [MASK] ", mask_id);
  }

  //! Draws the per-block noise from `rng` and builds the views of windows [first, first + count).
  void build(const Windows& w, int first, int count, Rng& rng, ModelBatch& out) const {
    check_windows(w, first, count, name);
    masks_.resize(std::size_t(count) * w.length);
    for (int r = 0; r < count; ++r)
      for (int b0 = 0; b0 < w.length; b0 += Block) {
        const float p = schedule.mask_prob(rng.uniform());
        for (int i = b0; i < std::min(b0 + Block, w.length); ++i)
          masks_[std::size_t(r) * w.length + i] = rng.uniform() < p ? 1 : 0;
      }
    build_with_masks(w, first, count, masks_, out);
  }

  //! The views for explicit masks (one flag per token of each window): view 1 masks the
  //! supervised tokens whose flag is 1, view 2 (with `complementary`) those whose flag is 0.
  void build_with_masks(const Windows& w, int first, int count, std::span<const std::uint8_t> masks,
                        ModelBatch& out) const {
    check_windows(w, first, count, name);
    const int L = w.length;
    require(L % Block == 0, "fdllm2 objective: the context ", L, " is not a multiple of the block size ", Block);
    require(mask_id >= 0, "fdllm2 objective: the [MASK] id is not set");
    require(masks.size() == std::size_t(count) * L, "fdllm2 objective: ", masks.size(), " mask flags for ", count,
            " windows of ", L);
    const int views = R.complementary ? 2 : 1;
    out.reset(views * count, 2 * L);
    for (int view = 0; view < views; ++view)
      for (int r = 0; r < count; ++r) {
        const int row = view * count + r;
        auto ids = w.ids_of(first + r);
        auto sup = w.supervised_of(first + r);
        int* tok = out.tokens.data() + std::size_t(row) * 2 * L;
        int* pos = out.positions.data() + std::size_t(row) * 2 * L;
        for (int i = 0; i < L; ++i) {
          const bool flag = masks[std::size_t(r) * L + i] != 0;
          const bool noised = sup[std::size_t(i)] && (view == 0 ? flag : !flag);
          tok[i] = noised ? mask_id : ids[std::size_t(i)];
          tok[L + i] = ids[std::size_t(i)];
          pos[i] = pos[L + i] = i;
          if (!noised) continue;
          if (R.token_shift) {
            if (i > 0) out.targets.push_back({std::int64_t(row) * 2 * L + i - 1, ids[std::size_t(i)]});
          } else {
            out.targets.push_back({std::int64_t(row) * 2 * L + i, ids[std::size_t(i)]});
          }
        }
      }
  }

 private:
  mutable std::vector<std::uint8_t> masks_;  // reused between steps
};

static_assert(Objective<ArObjective>);
static_assert(Objective<FastDllmV2Objective<32>>);

}  // namespace blockdiff::train
