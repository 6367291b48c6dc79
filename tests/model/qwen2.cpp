// The Qwen2 forward against the naive double-precision model, against the golden logits of an
// independent implementation, and every KV-cache path against recomputing the whole sequence.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#if defined(_OPENMP)
#include <omp.h>
#endif

#include "../support/check_error.hpp"
#include "../support/largest.hpp"
#include "../support/naive_model.hpp"
#include "../support/paths.hpp"
#include "blockdiff/blockdiff.hpp"

using namespace blockdiff;
using Host = backend::Host;
using Qwen = model::Qwen2<Host>;

namespace {
std::vector<int> some_tokens(int n, int vocab, int seed) {
  std::vector<int> t(static_cast<std::size_t>(n));
  for (int i = 0; i < n; ++i) t[static_cast<std::size_t>(i)] = (seed * 31 + i * 17 + i * i * 7) % (vocab - 2);
  return t;
}

// Max |a - b| over max |b| for logits rows a (view rows [r0, r0 + n)) against reference rows.
double rel_err(TensorView<const float> a, std::int64_t r0, const std::vector<std::vector<double>>& ref, int ref0, int n) {
  double num = 0, den = 0;
  for (int i = 0; i < n; ++i)
    for (std::size_t j = 0; j < ref[static_cast<std::size_t>(ref0 + i)].size(); ++j) {
      test::take_largest(num, std::fabs(a(r0 + i, static_cast<std::int64_t>(j)) - ref[static_cast<std::size_t>(ref0 + i)][j]));
      den = std::max(den, std::fabs(ref[static_cast<std::size_t>(ref0 + i)][j]));
    }
  return num / den;
}

//! values drawn from N(0, std²): their mean and mean square within five standard errors.
void check_normal(std::span<const float> values, double std) {
  const double n = static_cast<double>(values.size()), var = std * std;
  double mean = 0, sq = 0;
  for (const float x : values) mean += x, sq += double(x) * x;
  mean /= n, sq /= n;
  CHECK(std::fabs(mean) < 5 * std::sqrt(var / n));
  CHECK(std::fabs(sq / var - 1) < 5 * std::sqrt(2 / n));
}

Qwen random_model(bool tied, const char* name) {
  auto dir = test::temp_dir(name);
  auto cfg = model::preset_config("tiny");
  cfg.tie_word_embeddings = tied;
  model::write_random_checkpoint(dir, cfg, tied ? 11 : 12, DType::f32);
  return Qwen::load(dir);
}

template <class Mask>
TensorView<const float> run(Qwen& m, std::vector<model::ForwardRow<Host>>& rows) {
  return m.forward<Mask>(rows);
}
}  // namespace

TEST_CASE("random weights: norms one, every other tensor N(0, 0.02²), drawn alike on one thread and on two") {
  // Each tensor's mean and variance against the initialiser's distribution, within five
  // standard errors of its own size; over chunks of a long tensor, the same values whatever the
  // thread count, no chunk a copy of another, and another seed or tensor gives other values.
  auto m = model::random_model(model::preset_config("tiny"), 3, /*peaked=*/false);
  int checked = 0;
  for (auto& p : m.parameters()) {
    const auto v = p.f32().span();
    CAPTURE(p.name);
    if (p.name.find("norm") != std::string::npos) {
      CHECK(std::all_of(v.begin(), v.end(), [](float x) { return x == 1.0f; }));
      continue;
    }
    check_normal(v, 0.02);
    ++checked;
  }
  CHECK(checked > 10);

  const std::size_t chunk = std::size_t{1} << 16, size = 3 * chunk + 5;
  std::vector<float> one(size), two(size), other_seed(size), other_tensor(size);
  const auto fill = [&](std::vector<float>& out, std::uint64_t seed, std::uint64_t tensor, int threads) {
#if defined(_OPENMP)
    const int was = omp_get_max_threads();
    omp_set_num_threads(threads);
#endif
    (void)threads;
    model::detail::fill_normal(out, seed, tensor, 1.0);
#if defined(_OPENMP)
    omp_set_num_threads(was);
#endif
  };
  fill(one, 5, 2, 1);
  fill(two, 5, 2, 2);
  fill(other_seed, 6, 2, 2);
  fill(other_tensor, 5, 3, 2);
  CHECK(one == two);
  const auto agree = [&](const float* a, const float* b, std::size_t n) {
    std::size_t same = 0;
    for (std::size_t i = 0; i < n; ++i) same += a[i] == b[i];
    return same;
  };
  for (std::size_t c = 1; c < 4; ++c)
    CHECK(agree(one.data(), one.data() + c * chunk, std::min(chunk, size - c * chunk)) == 0);
  CHECK(agree(one.data(), other_seed.data(), size) == 0);
  CHECK(agree(one.data(), other_tensor.data(), size) == 0);
}

TEST_CASE("random weights, peaked: embeddings N(0, 1) with a [MASK] row a hundredth of that, matrices N(0, 0.08²)") {
  // The peaked model's logits are far from uniform, so that decoding it commits several tokens a
  // step; its [MASK] row is small, so that [MASK] is never the likeliest token.
  auto cfg = model::preset_config("tiny");
  cfg.tie_word_embeddings = false;
  cfg.mask_token_id = 100;  // rows on both sides of it
  auto m = model::random_model(cfg, 4, /*peaked=*/true);
  const std::int64_t mask = *cfg.mask_token_id, h = cfg.hidden_size;
  int checked = 0;
  for (auto& p : m.parameters()) {
    const auto v = p.f32().span();
    CAPTURE(p.name);
    if (p.name.find("norm") != std::string::npos) continue;
    if (p.name == "model.embed_tokens.weight" || p.name == "lm_head.weight") {
      check_normal(v.first(static_cast<std::size_t>(mask * h)), 1.0);
      check_normal(v.subspan(static_cast<std::size_t>(mask * h), static_cast<std::size_t>(h)), 0.01);
      check_normal(v.subspan(static_cast<std::size_t>((mask + 1) * h)), 1.0);
    } else {
      check_normal(v, p.name.find("bias") != std::string::npos ? 0.02 : 0.08);
    }
    ++checked;
  }
  CHECK(checked > 10);
}

TEST_CASE("the forward matches the naive model under the causal and block-causal masks") {
  for (bool tied : {true, false}) {
    auto m = random_model(tied, tied ? "fw-tied" : "fw-untied");
    test::NaiveQwen2 naive(m);
    const auto toks = some_tokens(21, m.vocab_size(), 1);
    auto cache = m.make_cache(21);
    std::vector<model::ForwardRow<Host>> rows(1);
    rows[0].tokens = toks;
    rows[0].cache = &cache;
    auto ref = naive.forward(toks, [](int q, int k) { return k <= q; });
    CHECK(rel_err(run<mask::Causal>(m, rows), 0, ref, 0, 21) < 1e-5);
    rows[0].kv_end = -1;
    auto ref_bc = naive.forward(toks, [](int q, int k) { return k / 8 <= q / 8; });
    CHECK(rel_err(run<mask::BlockCausal<8>>(m, rows), 0, ref_bc, 0, 21) < 1e-5);
  }
}

TEST_CASE("golden logits of an independent implementation, for both golden models and masks") {
  // The BF16 checkpoint also loads into BF16-held weights: the same values, so the same logits.
  for (auto [name, weights] : {std::pair{"f32-tied", DType::f32}, {"bf16-untied", DType::f32}, {"bf16-untied", DType::bf16}})
    for (const char* mk : {"causal", "block-causal"}) {
      INFO(name, " ", mk, " weights ", name_of(weights));
      io::SafetensorsFile f(test::golden(std::string("logits-") + name + "-" + mk + ".safetensors"));
      const auto ids = nlohmann::json::parse(f.metadata().at("ids")).get<std::vector<int>>();
      auto m = Qwen::load(test::golden(std::string("model-") + name), weights);
      CHECK(m.weight_dtype() == weights);
      auto cache = m.make_cache(static_cast<int>(ids.size()));
      std::vector<model::ForwardRow<Host>> rows(1);
      rows[0].tokens = ids;
      rows[0].cache = &cache;
      auto logits = std::string(mk) == "causal" ? run<mask::Causal>(m, rows) : run<mask::BlockCausal<8>>(m, rows);
      const auto& e = f.at("logits");
      REQUIRE(e.numel() == logits.numel());
      std::vector<float> ref(static_cast<std::size_t>(e.numel()));
      std::memcpy(ref.data(), e.bytes.data(), e.bytes.size());
      double num = 0, den = 0;
      for (std::size_t i = 0; i < ref.size(); ++i) {
        test::take_largest(num, static_cast<double>(std::fabs(logits.data()[i] - ref[i])));
        den = std::max(den, static_cast<double>(std::fabs(ref[i])));
      }
      CHECK(num / den < 2e-5);
    }
}

TEST_CASE("BF16 weights: an f32 checkpoint rounds to nearest even, and the forward is the naive model's on the stored values") {
  for (bool tied : {true, false}) {
    INFO("tied ", tied);
    auto dir = test::temp_dir(tied ? "bf16-tied" : "bf16-untied");
    auto cfg = model::preset_config("tiny");
    cfg.tie_word_embeddings = tied;
    model::write_random_checkpoint(dir, cfg, 21, DType::f32);
    auto wide = Qwen::load(dir);
    auto m = Qwen::load(dir, DType::bf16);
    auto pw = wide.parameters(), pn = m.parameters();
    REQUIRE(pw.size() == pn.size());
    std::size_t matrices = 0;
    for (std::size_t i = 0; i < pw.size(); ++i) {
      INFO(pw[i].name);
      const auto& f = pw[i].f32();
      if (pw[i].shape.size() == 1) {  // norms and biases stay f32, exactly
        CHECK(std::memcmp(pn[i].f32().data(), f.data(), f.bytes()) == 0);
        continue;
      }
      REQUIRE(pn[i].dtype() == DType::bf16);
      const auto& b = *std::get<1>(pn[i].storage);
      std::int64_t wrong = 0;
      for (std::int64_t j = 0; j < f.numel(); ++j) wrong += b[j].bits != to_bf16(f[j]).bits;
      CHECK(wrong == 0);
      ++matrices;
    }
    CHECK(matrices == 1 + 7 * static_cast<std::size_t>(cfg.num_hidden_layers) + (tied ? 0 : 1));
    CHECK(m.weight_bytes() < wide.weight_bytes() * 6 / 10);
    // One row (the AR step), a sub-block, and enough rows for several passes of the few-row kernel.
    test::NaiveQwen2 naive(m);
    for (int n : {1, 8, 21}) {
      const auto toks = some_tokens(n, m.vocab_size(), 3);
      auto cache = m.make_cache(n);
      std::vector<model::ForwardRow<Host>> rows(1);
      rows[0].tokens = toks;
      rows[0].cache = &cache;
      CHECK(rel_err(run<mask::Causal>(m, rows), 0, naive.forward(toks, [](int q, int k) { return k <= q; }), 0, n) < 1e-5);
    }
  }
  CHECK_ERROR(Qwen(model::preset_config("tiny"), DType::f16), "weights are held in F32 or BF16, not F16");
}

TEST_CASE("BF16 matrices of a BF16 checkpoint are used in place; writing one never changes the file") {
  auto dir = test::temp_dir("bf16-in-place");
  auto cfg = model::preset_config("tiny");
  cfg.tie_word_embeddings = false;
  model::write_random_checkpoint(dir, cfg, 23, DType::bf16);
  auto widened = Qwen::load(dir);
  Qwen m = [&] {
    auto loaded = Qwen::load(dir, DType::bf16);
    return loaded;  // the model outlives the load's Checkpoint, and survives a move
  }();
  auto pm = m.parameters(), pw = widened.parameters();
  int in_place = 0;
  for (std::size_t i = 0; i < pm.size(); ++i) {
    INFO(pm[i].name);
    if (pm[i].dtype() == DType::f32) {
      CHECK(!pm[i].f32().borrowed());
      continue;
    }
    const auto& b = *std::get<1>(pm[i].storage);
    in_place += b.borrowed();
    std::int64_t wrong = 0;
    for (std::int64_t j = 0; j < b.numel(); ++j) wrong += to_float(b[j]) != pw[i].f32()[j];
    CHECK(wrong == 0);
  }
  CHECK(in_place == 2 + 7 * cfg.num_hidden_layers);
  // The same values as the widened model, so the same logits.
  const auto toks = some_tokens(9, m.vocab_size(), 4);
  auto c1 = m.make_cache(9), c2 = widened.make_cache(9);
  std::vector<model::ForwardRow<Host>> r1(1), r2(1);
  r1[0].tokens = r2[0].tokens = toks;
  r1[0].cache = &c1;
  r2[0].cache = &c2;
  auto a = run<mask::Causal>(m, r1);
  auto b = run<mask::Causal>(widened, r2);
  double err = 0;
  for (std::int64_t i = 0; i < a.numel(); ++i) test::take_largest(err, static_cast<double>(std::fabs(a.data()[i] - b.data()[i])));
  CHECK(err < 1e-5);
  // A write lands in the process's own copy of the page: the model sees it, the file does not.
  auto q_of = [](Qwen& q) -> Buffer<bf16>& {
    for (auto& p : q.parameters())
      if (p.name == "model.layers.0.self_attn.q_proj.weight") return *std::get<1>(p.storage);
    FAIL("no q_proj");
    throw;
  };
  const std::uint16_t before = q_of(m)[5].bits;
  q_of(m)[5] = to_bf16(123.0f);
  CHECK(to_float(q_of(m)[5]) == 123.0f);
  auto again = Qwen::load(dir, DType::bf16);
  CHECK(q_of(again)[5].bits == before);
}

TEST_CASE("KV cache: append in chunks, a read-only block forward and a sub-block overwrite equal recomputation") {
  auto m = random_model(true, "kv-paths");
  test::NaiveQwen2 naive(m);
  constexpr int B = 8;
  const auto toks = some_tokens(3 * B, m.vocab_size(), 2);
  const auto full_bc = naive.forward(toks, [](int q, int k) { return k / B <= q / B; });

  // Append: prefill two blocks, then the third block, advancing the committed length.
  auto cache = m.make_cache(3 * B);
  std::vector<model::ForwardRow<Host>> rows(1);
  rows[0] = {std::span<const int>(toks).first(2 * B), 0, -1, true, 0, -1, {}, &cache};
  CHECK(rel_err(run<mask::BlockCausal<B>>(m, rows), 0, full_bc, 0, 2 * B) < 1e-5);
  CHECK(cache.committed() == 2 * B);

  // Read-only block forward: writes scratch slots [2B, 3B), attends [0, 3B), does not advance.
  rows[0] = {std::span<const int>(toks).subspan(2 * B), 2 * B, 3 * B, false, 0, -1, {}, &cache};
  auto block_logits = run<mask::BlockCausal<B>>(m, rows);
  CHECK(rel_err(block_logits, 0, full_bc, 2 * B, B) < 1e-5);
  CHECK(cache.committed() == 2 * B);
  std::vector<float> saved(block_logits.data(), block_logits.data() + block_logits.numel());

  // Sub-block forward over unchanged tokens [2B+4, 3B): the same rows as the block forward.
  rows[0] = {std::span<const int>(toks).subspan(2 * B + 4), 2 * B + 4, 3 * B, false, 0, -1, {}, &cache};
  auto sub = run<mask::Full>(m, rows);
  double err = 0;
  for (int i = 0; i < 4; ++i)
    for (int j = 0; j < m.vocab_size(); ++j) test::take_largest(err, double(std::fabs(sub(i, j) - saved[(4 + i) * m.vocab_size() + j])));
  CHECK(err < 1e-4);

  // Sub-block forward over changed tokens: compare with the naive model doing the same steps
  // (commit two blocks, save the block's K/V, overwrite rows [4, 8) with the new tokens').
  auto changed = toks;
  for (int i = 2 * B + 4; i < 3 * B; ++i) changed[static_cast<std::size_t>(i)] = (changed[static_cast<std::size_t>(i)] + 5) % 300;
  rows[0] = {std::span<const int>(changed).subspan(2 * B + 4), 2 * B + 4, 3 * B, false, 0, -1, {}, &cache};
  auto sub2 = run<mask::Full>(m, rows);
  auto store = naive.make_store();
  naive.forward(std::vector<int>(toks.begin(), toks.begin() + 3 * B), 0, store, 3 * B, [](int q, int k) { return k / B <= q / B; });
  auto ref_sub = naive.forward(std::vector<int>(changed.begin() + 2 * B + 4, changed.end()), 2 * B + 4, store, 3 * B,
                               [](int, int) { return true; });
  CHECK(rel_err(sub2, 0, ref_sub, 0, 4) < 1e-5);
}

TEST_CASE("KV cache: slots copied into a cache of another capacity continue the forward as the original") {
  auto m = random_model(true, "kv-copy");
  test::NaiveQwen2 naive(m);
  constexpr int B = 8;
  const auto toks = some_tokens(3 * B, m.vocab_size(), 3);
  const auto full_bc = naive.forward(toks, [](int q, int k) { return k / B <= q / B; });
  auto from = m.make_cache(3 * B);
  std::vector<model::ForwardRow<Host>> rows(1);
  rows[0] = {std::span<const int>(toks).first(2 * B), 0, -1, true, 0, 0, {}, &from};
  run<mask::BlockCausal<B>>(m, rows);
  // Into a larger cache in two pieces (the second from a slot inside a head's run), then the third
  // block against it.
  auto to = m.make_cache(5 * B);
  to.copy_slots(from, 0, 5);
  to.copy_slots(from, 5, 2 * B);
  const auto& c = m.config();
  for (int layer : {0, c.num_hidden_layers - 1})
    for (int head = 0; head < c.num_key_value_heads; ++head)
      for (int slot : {0, 4, 5, 2 * B - 1})
        for (int d : {0, c.head_dim() - 1}) {
          CHECK(to.k(layer)[(head * 5 * B + slot) * c.head_dim() + d] == from.k(layer)[(head * 3 * B + slot) * c.head_dim() + d]);
          CHECK(to.v(layer)[(head * 5 * B + slot) * c.head_dim() + d] == from.v(layer)[(head * 3 * B + slot) * c.head_dim() + d]);
        }
  rows[0] = {std::span<const int>(toks).subspan(2 * B), 2 * B, -1, false, 0, -1, {}, &to};
  CHECK(rel_err(run<mask::BlockCausal<B>>(m, rows), 0, full_bc, 2 * B, B) < 1e-5);
  // Slots that do not fit, and a cache of another shape, are refused.
  CHECK_ERROR(from.copy_slots(to, 0, 4 * B), "KvCache: slots [0, 32) do not fit caches of capacity 40 and 24");
  CHECK_ERROR(to.copy_slots(from, 6, 5), "KvCache: slots [6, 5) do not fit");
  CHECK_ERROR(to.copy_slots(from, 0, 4 * B), "KvCache: slots [0, 32) do not fit caches of capacity 24 and 40");
  to.set_committed(5 * B);
  CHECK(to.committed() == 5 * B);
  CHECK_ERROR(to.set_committed(5 * B + 1), "KvCache: committed length 41 outside [0, 40]");
  CHECK_ERROR(to.set_committed(-1), "KvCache: committed length -1 outside [0, 40]");
  auto other_config = c;
  other_config.num_hidden_layers += 1;
  model::KvCache<Host> other(other_config, 3 * B);
  CHECK_ERROR(to.copy_slots(other, 0, B), "KvCache: copying from a cache of " + std::to_string(c.num_hidden_layers + 1) + " layers");
}

TEST_CASE("a batch of rows of different lengths gives each row's own logits") {
  auto m = random_model(false, "batch-rows");
  const auto a = some_tokens(5, m.vocab_size(), 3), b = some_tokens(13, m.vocab_size(), 4);
  auto ca = m.make_cache(16), cb = m.make_cache(16);
  std::vector<model::ForwardRow<Host>> one(1), both(2);
  one[0] = {a, 0, -1, true, 4, 5, {}, &ca};
  std::vector<float> alone_a(run<mask::Causal>(m, one).row(0), run<mask::Causal>(m, one).row(0) + m.vocab_size());
  one[0] = {b, 0, -1, true, 0, -1, {}, &cb};
  auto lb = run<mask::Causal>(m, one);
  std::vector<float> alone_b(lb.data(), lb.data() + lb.numel());
  both[0] = {b, 0, -1, true, 0, -1, {}, &cb};
  both[1] = {a, 0, -1, true, 4, 5, {}, &ca};
  auto l = run<mask::Causal>(m, both);
  CHECK(m.logit_offset(1) == 13);
  double err = 0;
  for (int j = 0; j < m.vocab_size(); ++j) test::take_largest(err, double(std::fabs(l(13, j) - alone_a[j])));
  for (std::int64_t i = 0; i < 13 * m.vocab_size(); ++i) test::take_largest(err, double(std::fabs(l.data()[i] - alone_b[i])));
  CHECK(err < 1e-4);
}

TEST_CASE("asking for some rows' logits gives those rows of the full forward, and every token's K/V") {
  // The last layer runs attention and the MLP only on the asked-for rows; the K/V of every
  // token must still reach the cache, which a second forward continuing each row checks.
  auto m = random_model(true, "logit-rows");
  test::NaiveQwen2 naive(m);
  // Causal, so that a forward over a prefix is exact (a block-causal one over part of a block is not).
  const auto causal = [](int q, int k) { return k <= q; };
  const std::vector<std::vector<int>> seqs{some_tokens(21, m.vocab_size(), 5), some_tokens(16, m.vocab_size(), 6),
                                           some_tokens(13, m.vocab_size(), 7)};
  std::vector<std::vector<std::vector<double>>> ref;
  for (const auto& t : seqs) ref.push_back(naive.forward(t, causal));
  std::vector<model::KvCache<Host>> caches;
  for (int i = 0; i < 3; ++i) caches.push_back(m.make_cache(24));
  // First forward over each sequence's first tokens: logits [4, 9), none, the last row only.
  const int first_len[] = {13, 8, 5}, lb[] = {4, 8, 4}, le[] = {9, 8, 5};
  std::vector<model::ForwardRow<Host>> rows(3);
  for (int i = 0; i < 3; ++i)
    rows[static_cast<std::size_t>(i)] = {std::span<const int>(seqs[static_cast<std::size_t>(i)]).first(static_cast<std::size_t>(first_len[i])),
                                         0, -1, true, lb[i], le[i], {}, &caches[static_cast<std::size_t>(i)]};
  auto l = run<mask::Causal>(m, rows);
  REQUIRE(l.dim(0) == 5 + 0 + 1);
  CHECK(rel_err(l, m.logit_offset(0), ref[0], 4, 5) < 1e-5);
  CHECK(rel_err(l, m.logit_offset(2), ref[2], 4, 1) < 1e-5);
  // Second forward: the rest of each sequence, every row's logits.
  for (int i = 0; i < 3; ++i) {
    const auto& t = seqs[static_cast<std::size_t>(i)];
    rows[static_cast<std::size_t>(i)] = {std::span<const int>(t).subspan(static_cast<std::size_t>(first_len[i])), first_len[i], -1,
                                         true, 0, -1, {}, &caches[static_cast<std::size_t>(i)]};
  }
  auto l2 = run<mask::Causal>(m, rows);
  for (int i = 0; i < 3; ++i) {
    CAPTURE(i);
    const int n = static_cast<int>(seqs[static_cast<std::size_t>(i)].size()) - first_len[i];
    CHECK(rel_err(l2, m.logit_offset(static_cast<std::size_t>(i)), ref[static_cast<std::size_t>(i)], first_len[i], n) < 1e-5);
  }
  // A forward that asks for no logits at all, then its continuation.
  auto cache = m.make_cache(24);
  std::vector<model::ForwardRow<Host>> one(1);
  one[0] = {std::span<const int>(seqs[0]).first(8), 0, -1, true, 0, 0, {}, &cache};
  CHECK(run<mask::Causal>(m, one).dim(0) == 0);
  one[0] = {std::span<const int>(seqs[0]).subspan(8), 8, -1, true, 0, -1, {}, &cache};
  CHECK(rel_err(run<mask::Causal>(m, one), 0, ref[0], 8, 13) < 1e-5);
}

TEST_CASE("AR decoding reproduces the golden AR decodes") {
  int bf16_held = 0;
  for (auto& g : test::read_jsonl(test::golden("ar.jsonl")))
    for (DType weights : {DType::f32, DType::bf16}) {  // a BF16 checkpoint also with BF16-held weights
      const auto name = g["model"].get<std::string>();
      if (weights == DType::bf16 && name.find("bf16") == std::string::npos) continue;
      INFO(name, " weights ", name_of(weights));
      auto m = Qwen::load(test::golden(name), weights);
      bf16_held += weights == DType::bf16;
      decode::ArOptions o;
      o.max_new_tokens = g["max_new_tokens"];
      o.eos_id = m.config().eos_token_id;
      auto r = decode::ar_generate(m, g["prompt_ids"].get<std::vector<int>>(), o);
      CHECK(r.tokens == g["tokens"].get<std::vector<int>>());
      CHECK(r.prefill_forwards == g["nfe"]["prefill"].get<int>());
      CHECK(r.decode_forwards == g["nfe"]["decode"].get<int>());
    }
  CHECK(bf16_held > 0);
}

TEST_CASE("AR decoding: a batch gives every row what it gives alone, and stops at EOS") {
  auto m = random_model(true, "ar-batch");
  std::vector<std::vector<int>> prompts{some_tokens(3, 300, 5), some_tokens(17, 300, 6), some_tokens(1, 300, 7)};
  decode::ArOptions o;
  o.max_new_tokens = 12;
  auto batch = decode::ar_generate(m, prompts, o);
  for (std::size_t r = 0; r < prompts.size(); ++r) CHECK(decode::ar_generate(m, prompts[r], o).tokens == batch[r].tokens);
  // Make the third token of row 0 the EOS: decoding stops there and keeps it.
  o.eos_id = batch[0].tokens[2];
  auto stopped = decode::ar_generate(m, prompts[0], o);
  const auto first = std::find(batch[0].tokens.begin(), batch[0].tokens.end(), *o.eos_id) - batch[0].tokens.begin();
  CHECK(stopped.tokens.size() == static_cast<std::size_t>(first + 1));
  CHECK(stopped.tokens.back() == *o.eos_id);
}

TEST_CASE("forward refuses a row that does not fit its cache or asks for what it does not have, naming the row") {
  auto m = random_model(true, "fw-bad-rows");
  auto good = m.make_cache(8), other = m.make_cache(8);
  const std::vector<int> tokens{1, 2, 3, 4}, three{0, 1, 2}, negative{-1, 0, 1, 2};
  auto refused = [&](auto edit, const std::string& message) {
    std::vector<model::ForwardRow<Host>> rows(2);
    rows[0] = {tokens, 0, -1, true, 0, -1, {}, &good};
    rows[1] = {tokens, 0, -1, true, 0, -1, {}, &other};
    edit(rows[1]);
    CHECK_ERROR(run<mask::Causal>(m, rows), message);
    CHECK(good.committed() == 0);  // nothing ran
  };
  using Row = model::ForwardRow<Host>;
  refused([](Row& r) { r.cache = nullptr; }, "forward: row 1 has no cache");
  refused([](Row& r) { r.first_slot = 6; },
          "forward: row 1 writes slots [6, 10) and attends [0, 10) of a cache with capacity 8");
  refused([](Row& r) { r.first_slot = -1; }, "forward: row 1 writes slots [-1, 3)");
  refused([](Row& r) { r.kv_end = 3; }, "forward: row 1 writes slots [0, 4) and attends [0, 3)");
  refused([](Row& r) { r.kv_end = 9; }, "attends [0, 9) of a cache with capacity 8");
  refused([](Row& r) { r.logits_begin = 3, r.logits_end = 2; }, "forward: row 1 asks for logits [3, 2) of 4 tokens");
  refused([](Row& r) { r.logits_end = 5; }, "forward: row 1 asks for logits [0, 5) of 4 tokens");
  refused([](Row& r) { r.logits_begin = -1; }, "forward: row 1 asks for logits [-1, 4) of 4 tokens");
  refused([&](Row& r) { r.positions = three; }, "forward: row 1 has 3 positions for 4 tokens");
  refused([&](Row& r) { r.positions = negative; }, "position -1 is beyond the context");
  // The same rows, fixed, run.
  std::vector<model::ForwardRow<Host>> rows(2);
  rows[0] = {tokens, 0, -1, true, 0, -1, {}, &good};
  rows[1] = {tokens, 4, 8, true, 3, 4, {}, &other};
  CHECK(run<mask::Causal>(m, rows).dim(0) == 4 + 1);
  CHECK(good.committed() == 4);
  CHECK(other.committed() == 8);
}

TEST_CASE("AR decoding asked for no new tokens runs no forward") {
  auto m = random_model(true, "ar-none");
  decode::ArOptions o;
  o.max_new_tokens = 0;
  const std::vector<std::vector<int>> prompts{{1, 2}, {3}};
  for (const auto& r : decode::ar_generate(m, prompts, o)) {
    CHECK(r.tokens.empty());
    CHECK(r.prefill_forwards + r.decode_forwards == 0);
  }
}

TEST_CASE("bad prompts are clear errors") {
  auto m = random_model(true, "ar-bad");
  decode::ArOptions o;
  o.max_new_tokens = 4;
  CHECK_ERROR(decode::ar_generate(m, std::vector<int>{}, o), "prompt is empty");
  CHECK_ERROR(decode::ar_generate(m, std::vector<int>{1, 320}, o), "token id 320 at index 1 is outside the vocabulary");
  CHECK_ERROR(decode::ar_generate(m, std::vector<int>{-1}, o), "prompt: token id -1 at index 0 is outside the vocabulary [0, 320)");
  const std::vector<std::vector<int>> batch{{1, 2}, {3}, {}};  // a batch names the prompt at fault
  CHECK_ERROR(decode::ar_generate(m, batch, o), "prompt 2 is empty");
  o.max_new_tokens = 5000;
  CHECK_ERROR(decode::ar_generate(m, std::vector<int>{1, 2}, o), "beyond the context of 4096");
  o.max_new_tokens = -1;
  CHECK_ERROR(decode::ar_generate(m, std::vector<int>{1, 2}, o), "max_new_tokens must be >= 0, got -1");
  CHECK_ERROR(m.make_cache(0), "KvCache: capacity must be positive, got 0");
  o.max_new_tokens = 2;
  {  // Where a layer attends over a sliding window, the model runs only inside it.
    auto dir = test::temp_dir("ar-window");
    auto cfg = model::preset_config("tiny");
    cfg.use_sliding_window = true, cfg.sliding_window = 16, cfg.max_window_layers = 1;
    model::write_random_checkpoint(dir, cfg, 11, DType::f32);
    auto w = Qwen::load(dir);
    CHECK(decode::ar_generate(w, std::vector<int>(14, 1), o).tokens.size() == 2);
    CHECK_ERROR(decode::ar_generate(w, std::vector<int>(15, 1), o),
                "needs 17 positions, beyond the context of 16 positions (config.json's sliding_window");
    CHECK_ERROR(w.make_cache(17), "cache capacity 17 exceeds the context of 16 positions");
    auto cache = w.make_cache(16);
    const std::vector<int> toks{1, 2}, positions{15, 16};
    std::vector<model::ForwardRow<Host>> rows(1);
    rows[0].tokens = toks, rows[0].positions = positions, rows[0].cache = &cache;
    CHECK_ERROR(run<mask::Causal>(w, rows), "position 16 is beyond the context of 16");
  }
  o.eos_id = 999;
  CHECK_ERROR(decode::ar_generate(m, std::vector<int>{1}, o), "EOS id 999");
}
