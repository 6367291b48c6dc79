// Writes a model as a Hugging Face checkpoint folder: config.json and one model.safetensors, or
// `shards` files model-0000k-of-0000n.safetensors with model.safetensors.index.json, in F32,
// BF16 or F16. Tensors are split across shards in checkpoint order, as transformers does. Saving
// over a folder replaces the checkpoint there, whatever its layout.
#pragma once

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <span>
#include <string>
#include <vector>

#include "blockdiff/io/file.hpp"
#include "blockdiff/io/safetensors.hpp"
#include "blockdiff/model/qwen2.hpp"

namespace blockdiff::model {

//! One tensor to save: its checkpoint name, shape and f32 values (on the host).
struct NamedTensor {
  std::string name;
  std::vector<std::int64_t> shape;
  std::span<const float> values;
};

//! The file of shard `i` (from 0) of a checkpoint in `shards` files: model.safetensors when
//! there is one, else model-0000k-of-0000n.safetensors as transformers names them.
inline std::string shard_file_name(int i, int shards) {
  if (shards == 1) return "model.safetensors";
  char buf[64];
  std::snprintf(buf, sizeof buf, "model-%05d-of-%05d.safetensors", i + 1, shards);
  return buf;
}

//! config.json's "torch_dtype" for weights stored in `dtype` (f32, bf16 or f16).
inline std::string torch_dtype_name(DType dtype) {
  switch (dtype) {
    case DType::f32: return "float32";
    case DType::bf16: return "bfloat16";
    case DType::f16: return "float16";
    default: fail("a checkpoint's weights are f32, bf16 or f16, not ", name_of(dtype));
  }
}

//! Removes from `dir` the weight files of a checkpoint laid out in other than `shards` files:
//! the loader prefers model.safetensors.index.json to model.safetensors, so a stale index would
//! shadow new weights, and stale shards would sit beside them. Call it once the new files are whole.
inline void remove_other_layouts(const std::filesystem::path& dir, int shards) {
  const std::string of_n = shard_file_name(0, shards).substr(11);  // "-of-0000n.safetensors" where shards > 1
  std::vector<std::filesystem::path> stale_files;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    const std::string name = entry.path().filename().string();
    const bool shard_file = name.size() == 32 && name.starts_with("model-") && name.compare(11, 4, "-of-") == 0 &&
                            name.ends_with(".safetensors");  // model-0000k-of-0000n.safetensors
    const bool stale = (shard_file && (shards == 1 || !name.ends_with(of_n))) ||
                       name == (shards == 1 ? "model.safetensors.index.json" : "model.safetensors");
    if (stale) stale_files.push_back(entry.path());
  }
  for (const auto& path : stale_files) std::filesystem::remove(path);
}

//! Writes `tensors` and `config` as a checkpoint folder in `dtype`, split into `shards` files,
//! each carrying `metadata` beside {"format": "pt"} in its header.
inline void save_checkpoint(const io::ModelConfig& config_in, std::span<const NamedTensor> tensors,
                            const std::filesystem::path& dir, DType dtype = DType::f32, int shards = 1,
                            const std::map<std::string, std::string>& metadata = {}) {
  require(shards >= 1, "save_checkpoint: shards must be >= 1, got ", shards);
  auto config = config_in;
  config.torch_dtype = torch_dtype_name(dtype);  // before any file is written: refuses a dtype weights cannot have
  std::filesystem::create_directories(dir);
  std::size_t total = 0;
  for (auto& p : tensors) total += p.values.size() * size_of(dtype);
  const std::size_t per_shard = (total + static_cast<std::size_t>(shards) - 1) / static_cast<std::size_t>(shards);
  nlohmann::ordered_json weight_map = nlohmann::ordered_json::object();
  std::size_t written = 0;
  int shard = 0;
  const auto fresh_writer = [&] {
    io::SafetensorsWriter w;
    w.set_metadata("format", "pt");
    for (const auto& [key, value] : metadata) w.set_metadata(key, value);
    return w;
  };
  io::SafetensorsWriter writer = fresh_writer();
  for (auto& p : tensors) {
    const std::size_t bytes = p.values.size() * size_of(dtype);
    if (shard + 1 < shards && writer.size() > 0 && written + bytes > per_shard * static_cast<std::size_t>(shard + 1)) {
      writer.write(dir / shard_file_name(shard, shards));
      writer = fresh_writer();
      ++shard;
    }
    writer.add_converted(p.name, dtype, p.shape, p.values);
    weight_map[p.name] = shard_file_name(shard, shards);
    written += bytes;
  }
  // Write every remaining shard, empty ones included, so the file names stay -of-N.
  for (; shard < shards; ++shard) {
    writer.write(dir / shard_file_name(shard, shards));
    writer = fresh_writer();
  }
  if (shards > 1) {
    nlohmann::ordered_json index{{"metadata", {{"total_size", total}}}, {"weight_map", weight_map}};
    io::replace_file(dir / "model.safetensors.index.json", [&](std::ofstream& out) { out << index.dump(2) << "\n"; });
  }
  config.save(dir / "config.json");
  // The weight files of an earlier save in another layout go, after the new ones are whole.
  remove_other_layouts(dir, shards);
}

//! Writes a host model. BF16-held matrices are widened (exactly) to f32 copies first, and then
//! stored in `dtype` like any other tensor.
inline void save_checkpoint(Qwen2<backend::Host>& model, const std::filesystem::path& dir, DType dtype = DType::f32,
                            int shards = 1) {
  std::vector<NamedTensor> tensors;
  std::vector<std::vector<float>> widened;
  for (auto& p : model.parameters()) {
    if (p.dtype() == DType::f32) {
      tensors.push_back({p.name, p.shape, p.f32().span()});
      continue;
    }
    auto& w = widened.emplace_back(static_cast<std::size_t>(p.numel()));
    convert_to_f32(DType::bf16, std::get<1>(p.storage)->data(), w.data(), w.size());
    tensors.push_back({p.name, p.shape, std::span<const float>(w)});
  }
  save_checkpoint(model.config(), tensors, dir, dtype, shards);
}

}  // namespace blockdiff::model
