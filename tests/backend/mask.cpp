// Each mask kind's allowed(q, k) against its definition in §2.4 and §3.2, written out here as
// sets over a small grid.
#include <doctest/doctest.h>

#include <initializer_list>

#include "blockdiff/backend/mask.hpp"

using namespace blockdiff;

TEST_CASE("Causal and Full") {
  for (int q = 0; q < 20; ++q)
    for (int k = 0; k < 20; ++k) {
      CHECK(mask::Causal{}.allowed(q, k) == (k <= q));
      CHECK(mask::Full{}.allowed(q, k));
    }
}

TEST_CASE("BlockCausal<B>: absolute alignment; a query sees every key of its own and earlier blocks") {
  constexpr int B = 4;
  for (int q = 0; q < 24; ++q)
    for (int k = 0; k < 24; ++k) {
      const int q_block_start = q - q % B, q_block_end = q_block_start + B;
      CHECK(mask::BlockCausal<B>{}.allowed(q, k) == (k < q_block_end));
    }
  static_assert(mask::BlockCausal<32>{}.allowed(0, 31) && !mask::BlockCausal<32>{}.allowed(31, 32));
}

TEST_CASE("BlockDiffusionTraining<B>: the 2L mask of §2.4, term by term") {
  constexpr int B = 4, L = 16;
  const mask::BlockDiffusionTraining<B> m{L};
  for (int q = 0; q < 2 * L; ++q)
    for (int k = 0; k < 2 * L; ++k) {
      const bool qx0 = q >= L, kx0 = k >= L;
      const int bq = (q % L) / B, bk = (k % L) / B;
      const bool bd = bq == bk && qx0 == kx0;
      const bool obc = !qx0 && kx0 && bq > bk;
      const bool bc = qx0 && kx0 && bq >= bk;
      INFO("q=", q, " k=", k);
      CHECK(m.allowed(q, k) == (bd || obc || bc));
    }
  // A noisy token sees its own noisy block, earlier clean blocks, never its own clean block.
  CHECK(m.allowed(5, 4));
  CHECK(m.allowed(5, L + 0));
  CHECK(!m.allowed(5, L + 5));
  CHECK(!m.allowed(L + 5, 5));
}

// The attentions read no key past key_bound and skip a PrefixMask's predicate below it, so the
// bound must be exactly the mask's allowed set for the prefix masks, and never cut an allowed
// key for the others.
template <class Mask>
void check_key_bound(const Mask& m, int queries, int kv_end) {
  for (int q = 0; q < queries; ++q) {
    const int bound = mask::key_bound(m, q, kv_end);
    INFO(Mask::name, " q=", q, " kv_end=", kv_end, " bound=", bound);
    CHECK(bound <= kv_end);
    for (int k = 0; k < kv_end; ++k) {
      if (k >= bound) CHECK(!m.allowed(q, k));
      if constexpr (mask::PrefixMask<Mask>)
        if (k < bound) CHECK(m.allowed(q, k));
    }
  }
}

TEST_CASE("key_bound: exactly the allowed keys of Causal, Full and BlockCausal, a bound for the training mask") {
  for (const int kv_end : {0, 1, 7, 24, 40}) {
    check_key_bound(mask::Causal{}, 40, kv_end);
    check_key_bound(mask::Full{}, 40, kv_end);
    check_key_bound(mask::BlockCausal<4>{}, 40, kv_end);
    check_key_bound(mask::BlockCausal<32>{}, 40, kv_end);
    check_key_bound(mask::BlockDiffusionTraining<4>{20}, 40, kv_end);
  }
  CHECK(mask::key_bound(mask::Causal{}, 9, 100) == 10);
  CHECK(mask::key_bound(mask::BlockCausal<4>{}, 9, 100) == 12);
  CHECK(mask::key_bound(mask::Full{}, 9, 100) == 100);
  CHECK(mask::key_bound(mask::BlockDiffusionTraining<4>{20}, 9, 30) == 30);
}
