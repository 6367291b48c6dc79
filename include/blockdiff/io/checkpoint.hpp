// A Hugging Face checkpoint folder: config.json plus one model.safetensors, or shards listed in
// model.safetensors.index.json.
//
// The folder is validated when opened (every shard the index names exists and parses, no tensor
// is stored twice, the index and the shards agree). Tensors are then visited shard by shard,
// so a loader converts one shard at a time and never holds two copies of the weights.
#pragma once

#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include "blockdiff/core/error.hpp"
#include "blockdiff/io/config.hpp"
#include "blockdiff/io/safetensors.hpp"

namespace blockdiff::io {

//! The weight_map of a model.safetensors.index.json: tensor name -> shard file name. Names a
//! missing or malformed map, and a shard that is not a plain file name inside the folder.
inline std::map<std::string, std::string> parse_weight_map(std::string_view text, const std::string& origin) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    fail(origin, ": not valid JSON (", e.what(), ")");
  }
  require(j.is_object() && j.contains("weight_map") && j["weight_map"].is_object(), origin,
          ": missing object \"weight_map\"");
  std::map<std::string, std::string> where;
  for (auto& [name, file] : j["weight_map"].items()) {
    require(file.is_string(), origin, ": weight_map[\"", name, "\"] is not a file name");
    const auto f = file.get<std::string>();
    require(!f.empty() && f.find('/') == std::string::npos && f.find('\\') == std::string::npos && f != "." && f != "..",
            origin, ": weight_map[\"", name, "\"] names \"", f, "\", which is not a file inside the folder");
    where[name] = f;
  }
  require(!where.empty(), origin, ": the weight_map is empty");
  return where;
}

class Checkpoint {
 public:
  explicit Checkpoint(std::filesystem::path dir) : dir_(std::move(dir)) {
    require(std::filesystem::is_directory(dir_), dir_.string(), ": not a checkpoint folder (no such directory)");
    const auto cfg = dir_ / "config.json";
    require(std::filesystem::exists(cfg), dir_.string(), ": missing config.json");
    config_ = ModelConfig::load(cfg);
    const auto index = dir_ / "model.safetensors.index.json";
    const auto single = dir_ / "model.safetensors";
    if (std::filesystem::exists(index)) {
      parse_index(index);
    } else {
      require(std::filesystem::exists(single), dir_.string(), ": neither model.safetensors nor model.safetensors.index.json");
      shards_.push_back(single);
      SafetensorsFile f(single);
      for (auto& e : f.entries()) where_[e.name] = single.filename().string();
    }
  }

  const std::filesystem::path& dir() const { return dir_; }
  const ModelConfig& config() const { return config_; }
  const std::vector<std::filesystem::path>& shards() const { return shards_; }
  bool contains(const std::string& name) const { return where_.count(name) != 0; }
  //! Tensor name -> shard file name.
  const std::map<std::string, std::string>& tensor_shards() const { return where_; }

  //! Calls `visit(entry, file)` for every tensor, one shard open at a time.
  void for_each_tensor(const std::function<void(const TensorEntry&, const SafetensorsFile&)>& visit) const {
    for_each_shard(false, [&](const std::shared_ptr<SafetensorsFile>& f) {
      for (auto& e : f->entries()) visit(e, *f);
    });
  }
  //! Calls `visit(file)` for every shard, each mapped and populated in turn (`writable`: see
  //! SafetensorsFile); a visitor that keeps the pointer keeps that shard mapped.
  void for_each_shard(bool writable, const std::function<void(const std::shared_ptr<SafetensorsFile>&)>& visit) const {
    for (auto& shard : shards_) {
      auto f = std::make_shared<SafetensorsFile>(shard, writable);
      f->populate();
      visit(f);
    }
  }

 private:
  void parse_index(const std::filesystem::path& index) {
    std::ifstream in(index);
    require(in.good(), index.string(), ": cannot open");
    std::stringstream ss;
    ss << in.rdbuf();
    where_ = parse_weight_map(ss.str(), index.string());
    std::set<std::string> files;
    for (auto& [name, f] : where_) files.insert(f);
    // Every shard must exist; no tensor may be stored twice; shards and index must agree.
    std::map<std::string, std::string> seen;
    for (auto& f : files) {
      const auto path = dir_ / f;
      require(std::filesystem::exists(path), index.string(), ": names shard \"", f, "\", which is missing");
      shards_.push_back(path);
      SafetensorsFile shard(path);
      for (auto& e : shard.entries()) {
        auto [it, inserted] = seen.emplace(e.name, f);
        require(inserted, index.string(), ": tensor \"", e.name, "\" is stored in two shards, \"", it->second,
                "\" and \"", f, "\"");
      }
    }
    for (auto& [name, f] : seen) {
      auto w = where_.find(name);
      require(w != where_.end(), (dir_ / f).string(), ": holds tensor \"", name, "\", which the index does not list");
      require(w->second == f, index.string(), ": lists tensor \"", name, "\" in \"", w->second, "\" but it is in \"", f, "\"");
    }
    for (auto& [name, f] : where_)
      require(seen.count(name) != 0, index.string(), ": tensor \"", name, "\" is listed in \"", f,
              "\" but that shard does not hold it");
  }

  std::filesystem::path dir_;
  ModelConfig config_;
  std::vector<std::filesystem::path> shards_;
  std::map<std::string, std::string> where_;
};

}  // namespace blockdiff::io
