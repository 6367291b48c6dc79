// The key by which a recording backend replays a forward (the CUDA backend's graphs): forwards
// whose keys are equal must make the same kernel calls with the same arguments, or a replay runs
// another forward's launches. Checked on the host, through a backend that is the host's but
// records: it logs every call a forward makes (each operation with its arguments: pointers,
// shapes, scalars, the products' weights and outputs, the mask) beside the forward's key.
#include <doctest/doctest.h>

#include <cstdint>
#include <cstring>
#include <map>
#include <random>
#include <span>
#include <sstream>
#include <string>
#include <type_traits>
#include <typeinfo>
#include <utility>
#include <vector>

#include "../support/paths.hpp"
#include "blockdiff/blockdiff.hpp"

using namespace blockdiff;

namespace {
//! The calls logged since the recording backend's last `run` began.
std::ostringstream& calls() {
  static std::ostringstream log;
  return log;
}

void put(std::ostream& o, const void* p) { o << ' ' << p; }
template <class T>
  requires std::is_arithmetic_v<T> || std::is_enum_v<T>
void put(std::ostream& o, T v) {
  o << ' ' << +static_cast<std::conditional_t<std::is_enum_v<T>, int, T>>(v);
}
// The rows live in backend memory, uploaded before the sequence runs: their address and count
// are the call's, their contents the step's.
void put(std::ostream& o, std::span<const AttentionRow> rows) { o << " rows@" << rows.data() << 'x' << rows.size(); }
// The products are read on the host when the kernels are enqueued: their contents are the call's.
template <class W>
void put(std::ostream& o, std::span<const LinearOut<W>> outs) {
  for (const auto& out : outs) o << " [" << out.w << ' ' << out.m << ' ' << out.bias << ' ' << out.y << ']';
}
void put(std::ostream& o, const AttentionShape& s) {
  o << " {" << s.heads << ' ' << s.kv_heads << ' ' << s.head_dim << ' ' << s.scale << ' ' << s.max_queries << ' '
    << s.max_keys << '}';
}
void put(std::ostream& o, const InputNorm& n) { o << " norm(" << n.weight << ' ' << n.eps << ' ' << n.scratch << ')'; }
template <class Mask>
  requires requires(const Mask& m) { m.allowed(0, 0); }
void put(std::ostream& o, const Mask& mask) {
  static_assert(std::has_unique_object_representations_v<Mask> || std::is_empty_v<Mask>);
  o << ' ' << Mask::name;
  if constexpr (!std::is_empty_v<Mask>) {
    unsigned char bytes[sizeof(Mask)];
    std::memcpy(bytes, &mask, sizeof(Mask));
    for (unsigned char b : bytes) o << '.' << int(b);
  }
}

struct Forward {
  std::vector<std::int64_t> key;
  std::string calls;
};

//! Runs each forward as it is, and keeps its key and the calls it made.
struct KeyLog {
  static constexpr bool records = true;
  std::vector<Forward> forwards;

  template <class Key, class F>
  void run(Key&& make_key, F&& enqueue) {
    const std::span<const std::int64_t> key = make_key();  // before the sequence, as a graph's is
    std::vector<std::int64_t> kept(key.begin(), key.end());
    calls().str("");
    enqueue();
    forwards.push_back({std::move(kept), calls().str()});
  }
  long launches() const { return 0; }
};

struct Recording : backend::Host {
  using Replay = KeyLog;
  template <class T>
  static void copy(T* dst, const T* src, std::size_t n) {
    calls() << "copy " << dst << ' ' << src << ' ' << n << '\n';
    backend::Host::copy(dst, src, n);
  }
};

//! The host's kernel for Op, each call logged.
template <class Op>
struct Logged {
  template <class... A>
  static decltype(auto) run(A&&... a) {
    calls() << typeid(Op).name();
    (put(calls(), a), ...);
    calls() << '\n';
    return Kernel<backend::Host, Op>::run(std::forward<A>(a)...);
  }
};
//! The host's kernel for Op, not logged (the decoders' operations between forwards).
template <class Op>
struct Plain : Kernel<backend::Host, Op> {};
}  // namespace

namespace blockdiff {
// What a forward calls, composites included: a device backend specialises those too, and
// receives their arguments as they are.
template <>
struct Kernel<Recording, op::Embedding> : Logged<op::Embedding> {};
template <>
struct Kernel<Recording, op::Linear> : Logged<op::Linear> {};
template <>
struct Kernel<Recording, op::Linears> : Logged<op::Linears> {};
template <>
struct Kernel<Recording, op::SwiGluLinear> : Logged<op::SwiGluLinear> {};
template <>
struct Kernel<Recording, op::RopeKvWrite> : Logged<op::RopeKvWrite> {};
template <class Mask>
struct Kernel<Recording, op::Attention<Mask>> : Logged<op::Attention<Mask>> {};
template <bool SecondProb, bool Entropy>
struct Kernel<Recording, op::VocabStats<SecondProb, Entropy>> : Plain<op::VocabStats<SecondProb, Entropy>> {};
template <>
struct Kernel<Recording, op::Sample> : Plain<op::Sample> {};
}  // namespace blockdiff

namespace {
using Model = model::Qwen2<Recording>;

//! How many forwards share their key with an earlier one (a recording backend's replays); fails
//! the test on any two forwards with the same key and different calls.
int replays_checked(const std::vector<Forward>& forwards) {
  std::map<std::vector<std::int64_t>, std::size_t> first;
  int replays = 0;
  for (std::size_t i = 0; i < forwards.size(); ++i) {
    const auto emplaced = first.emplace(forwards[i].key, i);
    if (emplaced.second) continue;
    ++replays;
    const std::size_t earlier = emplaced.first->second;
    const auto& recorded = forwards[earlier];
    INFO("forward ", i, " has the key of forward ", earlier);
    CHECK_MESSAGE(forwards[i].calls == recorded.calls, "recorded:\n", recorded.calls, "replayed for:\n",
                  forwards[i].calls);
  }
  return replays;
}

Model load_model(const char* name, bool tied) {
  auto dir = test::temp_dir(name);
  auto cfg = model::preset_config("tiny");
  cfg.tie_word_embeddings = tied;
  model::write_random_checkpoint(dir, cfg, tied ? 21 : 22, DType::f32);
  return Model::load(dir);
}
}  // namespace

TEST_CASE("replay key: forwards of random rows, masks and logit ranges replay only the calls they make") {
  // Few enough choices that keys repeat, with many near misses: the same tokens split otherwise
  // between rows, the same rows with other logit ranges or caches, another mask or mask length.
  // (The cache slots a row writes and attends are the step's, not the call's: they vary freely.)
  auto m = load_model("replay-random", false);
  std::vector<model::KvCache<Recording>> caches;
  for (int capacity : {12, 12, 16}) caches.push_back(m.make_cache(capacity));
  const std::vector<int> tokens{5, 9, 2, 7, 11, 3, 8, 1};
  std::mt19937 rng(7);
  auto pick = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
  constexpr int n_forwards = 3000;
  // The first forward sizes the workspaces of tokens and logit rows for good (4 of each); the
  // first quarter are single rows, so that single rows meet again after a batch of two has grown
  // the rows' attention table, a workspace of its own.
  for (int f = 0; f < n_forwards; ++f) {
    const int R = f < n_forwards / 4 ? 1 : pick(1, 2), first_cache = pick(0, 2);
    std::vector<model::ForwardRow<Recording>> rows(static_cast<std::size_t>(R));
    for (int r = 0; r < R; ++r) {
      const int n = f == 0 ? 4 : pick(1, R == 1 ? 4 : 2), first_slot = pick(0, 3);
      // Logits of all the row's tokens, the first, the last, or none.
      const std::pair<int, int> ranges[] = {{0, n}, {0, 1}, {n - 1, n}, {n, n}};
      const auto [logits_begin, logits_end] = ranges[f == 0 ? 0 : pick(0, 3)];
      const auto row_tokens = std::span<const int>(tokens).subspan(static_cast<std::size_t>(pick(0, 4)),
                                                                   static_cast<std::size_t>(n));
      auto& cache = caches[static_cast<std::size_t>((first_cache + r) % 3)];
      rows[static_cast<std::size_t>(r)] = {row_tokens, first_slot, first_slot + n + pick(0, 2), pick(0, 1) == 1,
                                           logits_begin, logits_end, {}, &cache};
    }
    switch (pick(0, 3)) {
      case 0: m.forward<mask::Causal>(rows); break;
      case 1: m.forward<mask::BlockCausal<2>>(rows); break;
      case 2: m.forward<mask::Full>(rows); break;
      default: m.forward(rows, mask::BlockDiffusionTraining<2>{pick(1, 2)}); break;
    }
  }
  const auto& forwards = m.replays().forwards;
  REQUIRE(forwards.size() == n_forwards);
  // Some 570 of them are distinct (2,433 replays): a key that told every forward apart would
  // replay none.
  CHECK(replays_checked(forwards) >= n_forwards / 2);
}

TEST_CASE("replay key: block-diffusion and AR decodes replay only the calls they make, and replay most forwards") {
  auto m = load_model("replay-decode", true);
  const std::vector<std::vector<int>> prompts{{3, 1, 4, 1, 5}, {9, 2, 6}, {5, 3, 5, 8, 9, 7, 9}};
  decode::DecodeOptions options;
  options.max_new_tokens = 40;
  options.mask_id = *m.config().mask_token_id;
  // Random weights rarely commit two tokens at once; a low threshold makes the steps differ.
  decode::BlockDiffusionDecoder<Model, BlockShape<8, 4>, unmask::Threshold, cache::Hierarchical<>> hierarchical(
      m, unmask::Threshold{0.05f});
  decode::BlockDiffusionDecoder<Model, BlockShape<8, 2>, unmask::TopK, cache::Block<>> block(m, unmask::TopK{2});
  decode::BlockDiffusionDecoder<Model, BlockShape<4, 4>, unmask::Threshold, cache::None<>> none(
      m, unmask::Threshold{0.9f});
  hierarchical.generate(prompts, options);
  block.generate(prompts, options);
  none.generate(std::span<const std::vector<int>>(prompts).first(1), options);
  decode::ar_generate(m, prompts, decode::ArOptions{16, std::nullopt});
  const auto& forwards = m.replays().forwards;
  INFO(forwards.size(), " forwards");
  REQUIRE(forwards.size() >= 50);  // some 90
  const int replays = replays_checked(forwards);
  // A decode's steps repeat a handful of shapes: most of its forwards replay (60 of 91 here).
  CHECK(replays * 2 >= static_cast<int>(forwards.size()));
}
