// config.json and checkpoint folders: required fields, inconsistent heads, sharded folders that
// load to exactly the weights of one file, and broken folders named in the error.
#include <doctest/doctest.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <set>
#include <string>
#include <tuple>

#include "../support/check_error.hpp"
#include "../support/paths.hpp"
#include "blockdiff/io/checkpoint.hpp"
#include "blockdiff/model/init.hpp"
#include "blockdiff/model/save.hpp"

using namespace blockdiff;

namespace {
const char* kConfig = R"({"hidden_size": 64, "intermediate_size": 176, "num_hidden_layers": 2,
  "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 320, "rope_theta": 10000.0,
  "rms_norm_eps": 1e-6, "max_position_embeddings": 4096, "tie_word_embeddings": true, "bd_size": 32,
  "eos_token_id": 318, "bos_token_id": 317, "mask_token_id": 319})";

nlohmann::json base() { return nlohmann::json::parse(kConfig); }
io::ModelConfig parse(const nlohmann::json& j) { return io::ModelConfig::from_text(j.dump(), "config.json"); }
}  // namespace

TEST_CASE("config.json: fields are read, and the golden configs parse") {
  auto c = parse(base());
  CHECK(c.hidden_size == 64);
  CHECK(c.head_dim() == 16);
  CHECK(c.kv_dim() == 32);
  CHECK(c.tie_word_embeddings);
  CHECK(*c.mask_token_id == 319);
  auto g = io::ModelConfig::load(test::golden("model-bf16-untied/config.json"));
  CHECK(g.num_hidden_layers == 3);
  CHECK(!g.tie_word_embeddings);
  auto j = base();
  j["eos_token_id"] = {318, 317};  // a list of stop ids: the first is the EOS
  CHECK(*parse(j).eos_token_id == 318);
  j = base();
  j.erase("num_key_value_heads");  // defaults to the attention heads
  CHECK(parse(j).num_key_value_heads == 4);
}

TEST_CASE("config.json: missing, mistyped and inconsistent fields are named") {
  auto without = [](const char* f) {
    auto j = base();
    j.erase(f);
    return j;
  };
  auto with = [](const char* f, const nlohmann::json& value) {
    auto j = base();
    j[f] = value;
    return j;
  };
  CHECK_ERROR(parse(without("hidden_size")), "missing required field \"hidden_size\"");
  CHECK_ERROR(parse(without("vocab_size")), "\"vocab_size\"");
  CHECK_ERROR(parse(with("hidden_size", "64")), "\"hidden_size\" must be an integer");
  CHECK_ERROR(parse(with("num_attention_heads", 5)), "not divisible by num_attention_heads");
  CHECK_ERROR(parse(with("num_key_value_heads", 3)), "not divisible by num_key_value_heads");
  CHECK_ERROR(parse(with("mask_token_id", 320)), "\"mask_token_id\" 320 is outside the vocabulary");
  CHECK_ERROR(parse(with("eos_token_id", 4294967296LL + 318)),  // not 318
              "\"eos_token_id\" must be an integer id, got 4294967614");
  CHECK_ERROR(parse(with("architectures", nlohmann::json::array({"LlamaForCausalLM"}))),
              "architecture \"LlamaForCausalLM\" is not supported");
  CHECK_ERROR(parse(with("rope_scaling", nlohmann::json{{"type", "yarn"}})), "rope_scaling");
  CHECK_ERROR(io::ModelConfig::from_text("{\"hidden_size\": 6", "cfg.json"), "cfg.json: not valid JSON");
  CHECK_ERROR(parse(with("hidden_size", 60)), "head_dim 15 must be even");  // RoPE rotates pairs
  CHECK_ERROR(parse(with("hidden_size", 4294967296LL + 64)), "field \"hidden_size\" is out of range");
  // 2^64 - 1, which JSON holds unsigned, is out of range too (read as 64 signed bits it was -1,
  // which sliding_window kept and a save wrote back).
  CHECK_ERROR(parse(with("sliding_window", std::uint64_t(-1))), "field \"sliding_window\" is out of range");
  CHECK_ERROR(parse(with("hidden_size", std::uint64_t(-1))), "field \"hidden_size\" is out of range");
  CHECK_ERROR(parse(with("tie_word_embeddings", 1)), "field \"tie_word_embeddings\" must be a boolean");
  CHECK_ERROR(parse(with("bd_size", 0)), "\"bd_size\" must be positive, got 0");
  CHECK_ERROR(parse(with("rope_theta", 0)), "\"rope_theta\" must be positive");
  CHECK_ERROR(parse(with("rope_theta", -1e4)), "\"rope_theta\" must be positive");
  CHECK_ERROR(parse(with("rms_norm_eps", 0.0)), "\"rms_norm_eps\" must be positive");
  CHECK_ERROR(parse(with("rms_norm_eps", "1e-6")), "field \"rms_norm_eps\" must be a number, got \"1e-6\"");
  CHECK_ERROR(io::ModelConfig::from_text("[64]", "cfg.json"), "cfg.json: config is not a JSON object");
  CHECK(parse(with("rope_theta", 500000)).rope_theta == 500000.0);  // an integer is a number
}

TEST_CASE("config.json: the parameter count is the elements of the checkpoint's tensors") {
  // The golden models come from another implementation: one ties lm_head to the embedding.
  for (const char* name : {"model-f32-tied", "model-bf16-untied"}) {
    CAPTURE(name);
    const auto dir = test::golden(name);
    io::SafetensorsFile file(dir / "model.safetensors");
    std::int64_t elements = 0;
    for (const auto& e : file.entries()) elements += e.numel();
    CHECK(io::ModelConfig::load(dir / "config.json").parameter_count() == elements);
  }
}

TEST_CASE("config.json: a saved config reads back every field") {
  // Every field off its default, so that one a save leaves out cannot come back by default.
  auto j = base();
  j["architectures"] = {"Qwen2ForCausalLM"};
  j["bd_size"] = 16;
  j["rms_norm_eps"] = 1e-5;
  j["torch_dtype"] = "bfloat16";
  j["use_sliding_window"] = true;
  j["sliding_window"] = 1024;
  j["max_window_layers"] = 1;
  const auto c = parse(j);
  auto fields = [](const io::ModelConfig& m) {
    return std::tuple(m.architecture, m.model_type, m.hidden_size, m.intermediate_size, m.num_hidden_layers,
                      m.num_attention_heads, m.num_key_value_heads, m.vocab_size, m.rope_theta, m.rms_norm_eps,
                      m.max_position_embeddings, m.tie_word_embeddings, m.bd_size, m.eos_token_id, m.bos_token_id,
                      m.mask_token_id, m.torch_dtype, m.use_sliding_window, m.sliding_window, m.max_window_layers);
  };
  const io::ModelConfig defaults;
  CHECK(c.max_position_embeddings != defaults.max_position_embeddings);
  CHECK(c.bd_size != defaults.bd_size);
  CHECK(c.rope_theta != defaults.rope_theta);
  CHECK(c.rms_norm_eps != defaults.rms_norm_eps);
  CHECK(c.tie_word_embeddings != defaults.tie_word_embeddings);
  CHECK(c.architecture != defaults.architecture);
  CHECK(c.torch_dtype != defaults.torch_dtype);
  CHECK(fields(parse(nlohmann::json::parse(c.to_json().dump()))) == fields(c));
}

TEST_CASE("config.json: a sliding window bounds the context where some layer attends over it") {
  // transformers' Qwen2: layers from max_window_layers (default 28) on attend over the last
  // sliding_window positions when use_sliding_window is set. Over positions [0, window) that is
  // full attention, so the model runs there and is refused beyond it.
  auto c = parse(base());
  CHECK(c.context() == 4096);
  auto j = base();
  j["sliding_window"] = 64;  // without use_sliding_window, as Qwen2.5's configs give it: no window
  j["max_window_layers"] = 1;
  CHECK(parse(j).context() == 4096);
  j["use_sliding_window"] = true;  // layer 1 of 2 attends over 64 positions
  const auto w = parse(j);
  CHECK(w.context() == 64);
  CHECK(w.describe_context().find("the context of 64 positions (config.json's sliding_window") == 0);
  auto saved = parse(nlohmann::json::parse(w.to_json().dump()));  // a save keeps the window
  CHECK(saved.context() == 64);
  j["max_window_layers"] = 2;  // no layer from 2 on
  CHECK(parse(j).context() == 4096);
  j.erase("max_window_layers");  // the default, 28, is beyond 2 layers
  CHECK(parse(j).context() == 4096);
  j["max_window_layers"] = 0;
  j["sliding_window"] = 8192;  // a window wider than max_position_embeddings bounds nothing
  CHECK(parse(j).context() == 4096);
  CHECK(parse(j).describe_context() == "the context of 4096 positions (max_position_embeddings)");
  j["sliding_window"] = 0;
  CHECK_ERROR(parse(j), "\"sliding_window\" must be positive");
  j["sliding_window"] = "64";
  CHECK_ERROR(parse(j), "field \"sliding_window\" must be an integer");
  j = base();
  j["use_sliding_window"] = "yes";
  CHECK_ERROR(parse(j), "\"use_sliding_window\" must be a boolean");
}

TEST_CASE("a sharded BF16 folder loads to exactly the weights of the same model in one file") {
  const auto dir = test::temp_dir("ckpt-shards");
  auto cfg = model::preset_config("tiny");
  cfg.tie_word_embeddings = false;
  model::write_random_checkpoint(dir / "one", cfg, 5, DType::bf16);
  auto a = model::Qwen2<backend::Host>::load(dir / "one");
  model::save_checkpoint(a, dir / "sharded", DType::bf16, 3);
  CHECK(std::filesystem::exists(dir / "sharded" / "model-00003-of-00003.safetensors"));
  io::Checkpoint ck(dir / "sharded");
  CHECK(ck.shards().size() == 3);
  CHECK(ck.contains("lm_head.weight"));
  auto b = model::Qwen2<backend::Host>::load(dir / "sharded");
  auto pa = a.parameters(), pb = b.parameters();
  REQUIRE(pa.size() == pb.size());
  for (std::size_t i = 0; i < pa.size(); ++i) {
    CHECK(pa[i].name == pb[i].name);
    CHECK(std::memcmp(pa[i].f32().data(), pb[i].f32().data(), pa[i].f32().bytes()) == 0);
  }
}

TEST_CASE("a sharded save: tensors in order, empty shards only last, the index's total, metadata in every shard") {
  // A first tensor larger than a shard's share (a's 20 bytes of BF16, where 24 over 3 shards give
  // 8 each) still opens the first shard; the shards fill in order and only trailing ones may be empty.
  const auto dir = test::temp_dir("ckpt-layout");
  const std::vector<float> a(10, 1.0f), b(1, 2.0f), c(1, 3.0f);
  const std::vector<model::NamedTensor> tensors{{"a", {10}, a}, {"b", {1}, b}, {"c", {1}, c}};
  CHECK_ERROR(model::save_checkpoint(model::preset_config("tiny"), tensors, dir, DType::bf16, 0),
              "save_checkpoint: shards must be >= 1, got 0");
  CHECK_FALSE(std::filesystem::exists(dir / "config.json"));
  model::save_checkpoint(model::preset_config("tiny"), tensors, dir, DType::bf16, 3, {{"note", "kept"}});
  const auto index = nlohmann::json::parse(std::ifstream(dir / "model.safetensors.index.json"));
  std::vector<std::string> shard_of;
  for (const char* name : {"a", "b", "c"}) shard_of.push_back(index.at("weight_map").at(name).get<std::string>());
  CHECK(shard_of[0] == "model-00001-of-00003.safetensors");
  CHECK(std::is_sorted(shard_of.begin(), shard_of.end()));
  std::uint64_t bytes = 0;
  bool empty_seen = false;
  for (int k = 0; k < 3; ++k) {
    io::SafetensorsFile shard(dir / model::shard_file_name(k, 3));
    CAPTURE(k);
    CHECK(shard.metadata().at("format") == "pt");
    CHECK(shard.metadata().at("note") == "kept");
    CHECK((!empty_seen || shard.entries().empty()));  // only trailing shards are empty
    empty_seen = empty_seen || shard.entries().empty();
    for (const auto& e : shard.entries()) {
      bytes += e.bytes.size();
      CHECK(index.at("weight_map").at(e.name) == model::shard_file_name(k, 3));
    }
  }
  CHECK(bytes == 2 * (a.size() + b.size() + c.size()));
  CHECK(index.at("metadata").at("total_size") == bytes);
  CHECK(io::ModelConfig::load(dir / "config.json").torch_dtype == "bfloat16");
}

TEST_CASE("saving over a checkpoint of another layout leaves only the new one to load") {
  // The loader prefers model.safetensors.index.json to model.safetensors, so a layout's files
  // left behind by the last save would be loaded in place of the new weights.
  const auto dir = test::temp_dir("ckpt-relayout");
  const auto cfg = model::preset_config("tiny");
  model::write_random_checkpoint(dir / "a", cfg, 1, DType::f32);
  model::write_random_checkpoint(dir / "b", cfg, 2, DType::f32);
  auto a = model::Qwen2<backend::Host>::load(dir / "a");
  auto b = model::Qwen2<backend::Host>::load(dir / "b");
  const auto same_weights = [](model::Qwen2<backend::Host>& x, model::Qwen2<backend::Host>& y) {
    auto px = x.parameters(), py = y.parameters();
    for (std::size_t i = 0; i < px.size(); ++i)
      if (std::memcmp(px[i].f32().data(), py[i].f32().data(), px[i].f32().bytes()) != 0) return false;
    return px.size() == py.size();
  };
  REQUIRE_FALSE(same_weights(a, b));
  const auto out = dir / "out";
  const auto files = [&] {
    std::set<std::string> names;
    for (auto& e : std::filesystem::directory_iterator(out)) names.insert(e.path().filename().string());
    return names;
  };

  model::save_checkpoint(a, out, DType::f32, 3);  // sharded, then one file over it
  model::save_checkpoint(b, out, DType::f32, 1);
  CHECK(files() == std::set<std::string>{"config.json", "model.safetensors"});
  auto loaded = model::Qwen2<backend::Host>::load(out);
  CHECK(same_weights(loaded, b));

  model::save_checkpoint(a, out, DType::f32, 3);  // one file, then sharded over it
  CHECK(files() == std::set<std::string>{"config.json", "model.safetensors.index.json", "model-00001-of-00003.safetensors",
                                         "model-00002-of-00003.safetensors", "model-00003-of-00003.safetensors"});
  model::save_checkpoint(b, out, DType::f32, 2);  // and fewer shards over more
  CHECK(files() == std::set<std::string>{"config.json", "model.safetensors.index.json", "model-00001-of-00002.safetensors",
                                         "model-00002-of-00002.safetensors"});
  auto reloaded = model::Qwen2<backend::Host>::load(out);
  CHECK(same_weights(reloaded, b));

  model::write_random_checkpoint(out, cfg, 1, DType::f32);  // a random init over the shards: model a
  CHECK(files() == std::set<std::string>{"config.json", "model.safetensors"});
  auto initialised = model::Qwen2<backend::Host>::load(out);
  CHECK(same_weights(initialised, a));

  // Weights in a dtype config.json cannot name are refused before a file changes.
  CHECK_ERROR(model::save_checkpoint(b, out, DType::i32, 2), "weights are f32, bf16 or f16, not I32");
  CHECK_ERROR(model::write_random_checkpoint(out, cfg, 2, DType::u8), "weights are f32, bf16 or f16, not U8");
  CHECK(files() == std::set<std::string>{"config.json", "model.safetensors"});
  auto kept = model::Qwen2<backend::Host>::load(out);
  CHECK(same_weights(kept, a));
  CHECK(io::ModelConfig::load(out / "config.json").torch_dtype == "float32");
}

TEST_CASE("broken checkpoint folders are errors that name the file and the entry") {
  const auto dir = test::temp_dir("ckpt-bad");
  auto cfg = model::preset_config("tiny");
  model::write_random_checkpoint(dir / "good", cfg, 1, DType::f32);
  auto m = model::Qwen2<backend::Host>::load(dir / "good");
  model::save_checkpoint(m, dir / "sharded", DType::f32, 2);
  auto copy = [&](const char* name) {
    std::filesystem::copy(dir / "sharded", dir / name, std::filesystem::copy_options::recursive);
    return dir / name;
  };
  auto read = [](const std::filesystem::path& p) {
    std::ifstream in(p);
    return nlohmann::json::parse(in);
  };

  CHECK_ERROR(model::Qwen2<backend::Host>::load(dir / "nowhere"), "no such directory");
  {
    auto d = copy("missing-shard");
    std::filesystem::remove(d / "model-00002-of-00002.safetensors");
    CHECK_ERROR(io::Checkpoint{d}, "names shard \"model-00002-of-00002.safetensors\", which is missing");
  }
  {
    auto d = copy("two-shards");
    // Put one tensor of shard 2 into shard 1 as well.
    io::SafetensorsFile s1(d / "model-00001-of-00002.safetensors"), s2(d / "model-00002-of-00002.safetensors");
    io::SafetensorsWriter w;
    for (auto& e : s1.entries()) w.add(e.name, e.dtype, e.shape, e.bytes);
    const auto& dup = s2.entries().front();
    w.add(dup.name, dup.dtype, dup.shape, dup.bytes);
    w.write(d / "model-00001-of-00002.safetensors");
    CHECK_ERROR(io::Checkpoint{d}, "is stored in two shards");
  }
  {
    auto d = copy("unlisted");
    auto idx = read(d / "model.safetensors.index.json");
    idx["weight_map"].erase("model.norm.weight");
    std::ofstream(d / "model.safetensors.index.json") << idx.dump();
    CHECK_ERROR(io::Checkpoint{d}, "\"model.norm.weight\", which the index does not list");
  }
  {
    // The index names the other shard for a tensor, or a tensor no shard holds.
    auto d = copy("misplaced");
    auto idx = read(d / "model.safetensors.index.json");
    const std::string index_file = (d / "model.safetensors.index.json").string();
    const std::string held = idx["weight_map"]["model.norm.weight"].get<std::string>();
    const std::string other = held == "model-00001-of-00002.safetensors" ? "model-00002-of-00002.safetensors"
                                                                          : "model-00001-of-00002.safetensors";
    idx["weight_map"]["model.norm.weight"] = other;
    std::ofstream(d / "model.safetensors.index.json") << idx.dump();
    CHECK_ERROR(io::Checkpoint{d}, index_file + ": lists tensor \"model.norm.weight\" in \"" + other + "\" but it is in \"" +
                                       held + "\"");
    idx["weight_map"]["model.norm.weight"] = held;
    idx["weight_map"]["model.extra.weight"] = other;
    std::ofstream(d / "model.safetensors.index.json") << idx.dump();
    CHECK_ERROR(io::Checkpoint{d}, index_file + ": tensor \"model.extra.weight\" is listed in \"" + other +
                                       "\" but that shard does not hold it");
  }
  {
    auto d = copy("wrong-shape");
    auto j = read(d / "config.json");
    j["intermediate_size"] = 128;
    std::ofstream(d / "config.json") << j.dump();
    CHECK_ERROR(model::Qwen2<backend::Host>::load(d), "implies [128, 64]");
  }
  {
    auto d = copy("untied");
    auto j = read(d / "config.json");
    j["tie_word_embeddings"] = false;
    std::ofstream(d / "config.json") << j.dump();
    CHECK_ERROR(model::Qwen2<backend::Host>::load(d), "missing tensor \"lm_head.weight\"");
  }
  {
    auto d = copy("no-config");
    std::filesystem::remove(d / "config.json");
    CHECK_ERROR(io::Checkpoint{d}, "missing config.json");
  }
  {
    auto d = copy("bad-index");
    std::ofstream(d / "model.safetensors.index.json") << "{\"weight_map\": 3}";
    CHECK_ERROR(io::Checkpoint{d}, "weight_map");
  }
  CHECK_ERROR(io::parse_weight_map(R"({"weight_map": {"a": "../x.safetensors"}})", "idx.json"),
              "idx.json: weight_map[\"a\"] names \"../x.safetensors\", which is not a file inside the folder");
  CHECK_ERROR(io::parse_weight_map(R"({"weight_map": {"a": ".."}})", "idx.json"), "not a file inside the folder");
  CHECK_ERROR(io::parse_weight_map(R"({"weight_map": {"a": "."}})", "idx.json"), "not a file inside the folder");
  CHECK_ERROR(io::parse_weight_map(R"({"weight_map": {"a": "sub\\x.safetensors"}})", "idx.json"),
              "names \"sub\\x.safetensors\", which is not a file inside the folder");
  CHECK_ERROR(io::parse_weight_map(R"({"weight_map": {"a": ""}})", "idx.json"), "names \"\", which is not a file inside");
  CHECK_ERROR(io::parse_weight_map(R"({"weight_map": {"a": 7}})", "idx.json"), "weight_map[\"a\"] is not a file name");
  CHECK_ERROR(io::parse_weight_map(R"({"weight_map": {}})", "idx.json"), "the weight_map is empty");
  CHECK_ERROR(io::parse_weight_map("{", "idx.json"), "idx.json: not valid JSON");
  CHECK(io::parse_weight_map(R"({"weight_map": {"a": "s1", "b": "s2"}})", "idx.json") ==
        std::map<std::string, std::string>{{"a", "s1"}, {"b", "s2"}});
}
