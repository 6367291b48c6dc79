// Helpers of the blockdiff program: flag checks, parsing id lists, reading prompt files, the --weights flag.
#pragma once

#include <CLI/CLI.hpp>
#include <algorithm>
#include <charconv>
#include <cstdio>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <vector>

#include "blockdiff/backend/kernel.hpp"
#include "blockdiff/core/dtype.hpp"
#include "blockdiff/core/error.hpp"
#include "blockdiff/io/config.hpp"
#include "blockdiff/io/json.hpp"

namespace blockdiff::cli {

//! A check that an integer option's text is a whole `T` of at least `lowest`, whose error says so
//! plainly. CLI11 alone reads "-1" into an unsigned option as 2^64 - 1, and a number past an
//! unsigned type's range as its largest value.
template <class T>
CLI::Validator whole_number(T lowest, std::string want, std::string name) {
  return CLI::Validator(
      [=](std::string& text) -> std::string {
        T value{};
        const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
        if (ec == std::errc() && end == text.data() + text.size() && value >= lowest) return {};
        return "must be " + want + ", got " + text;
      },
      std::move(name));
}
inline CLI::Validator positive() { return whole_number<long>(1, "a positive integer", "POSITIVE"); }
inline CLI::Validator non_negative() { return whole_number<long>(0, "an integer of 0 or more", "NONNEGATIVE"); }
inline CLI::Validator unsigned64() { return whole_number<std::uint64_t>(0, "an integer in [0, 2^64)", "UINT64"); }

//! --caches of the scoring commands (eval::ScoreOptions::caches).
inline constexpr const char* caches_help =
    "prompts kept in KV caches from batch to batch (at least a batch's), so that the questions of several tasks, "
    "interleaved, each find their own task's examples; the least recently used is given up first";

//! A flag that only some values of a choice flag read: --k is read by --unmask topk and random.
struct ReadBy {
  const char* flag;
  std::vector<std::string_view> values;
};

//! Refuses each flag of `flags` given on `app` that `chosen`, the value of the choice flag `choice`,
//! does not read: the run would go on without it, and report settings it never used.
inline void refuse_unread(const CLI::App& app, std::string_view choice, std::string_view chosen,
                          std::initializer_list<ReadBy> flags) {
  for (const auto& f : flags) {
    if (app.count(f.flag) == 0 || std::ranges::find(f.values, chosen) != f.values.end()) continue;
    std::string readers;
    for (std::size_t i = 0; i < f.values.size(); ++i)
      readers += std::string(i == 0 ? "" : i + 1 == f.values.size() ? " or " : ", ") + std::string(f.values[i]);
    fail(f.flag, " is read by ", choice, " ", readers, " only; ", choice, " ", chosen, " does not use it");
  }
}

//! The block that `app`'s command line left out (no --block): the model's own, config.json's
//! bd_size, the block it was trained with. Another decodes worse, much worse far from it (the
//! study's Table 4 rows), and a fine-tune or a resumed run goes on at it.
inline void default_block(const CLI::App& app, const io::ModelConfig& config, int& block) {
  if (app.count("--block") == 0)
    block = config.bd_size;
  else if (block != config.bd_size)
    std::fprintf(stderr,
                 "note: --block %d is not the block the model was trained with (config.json bd_size %d); "
                 "accuracy can fall where they differ (the paper's Table 4)\n",
                 block, config.bd_size);
}

//! "1,2,3" -> {1, 2, 3}; names the flag and the bad entry on error.
inline std::vector<int> parse_ids(const std::string& text, const std::string& flag) {
  std::vector<int> ids;
  std::size_t begin = 0;
  require(!text.empty(), flag, ": empty list of token ids");
  while (begin <= text.size()) {
    std::size_t end = text.find(',', begin);
    if (end == std::string::npos) end = text.size();
    std::string item = text.substr(begin, end - begin);
    while (!item.empty() && item.front() == ' ') item.erase(item.begin());
    while (!item.empty() && item.back() == ' ') item.pop_back();
    int value = 0;
    auto [ptr, ec] = std::from_chars(item.data(), item.data() + item.size(), value);
    require(ec == std::errc() && ptr == item.data() + item.size() && !item.empty(), flag, ": \"", item,
            "\" is not an integer token id");
    ids.push_back(value);
    begin = end + 1;
  }
  return ids;
}

//! Refuses to write a new model into `dir` where one is already (a trained model is hours of
//! work): names the file found and `remedy`, the flags that continue or replace it.
inline void refuse_checkpoint(const std::filesystem::path& dir, const std::string& remedy) {
  for (const char* file : {"trainer_state.json", "model.safetensors", "model.safetensors.index.json"})
    require(!std::filesystem::exists(dir / file), dir.string(), " holds a checkpoint already (", file, "): ", remedy);
}

//! Calls `f(line_number, value)` for the JSON value on each non-empty line of `path`.
template <class F>
void for_each_json_line(const std::string& path, F&& f) {
  std::ifstream in(path, std::ios::binary);
  require(in.good(), path, ": cannot open");
  std::string line;
  for (int number = 1; std::getline(in, line); ++number) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    auto j = nlohmann::json::parse(line, nullptr, false);
    require(!j.is_discarded(), path, ": line ", number, " is not valid JSON");
    f(number, j);
  }
}

//! The token ids of a JSON array; `what` names it in errors ("f.jsonl: line 2").
inline std::vector<int> ids_from_json(const nlohmann::json& j, const std::string& what) {
  require(j.is_array(), what, " is not a JSON array of token ids");
  std::vector<int> ids;
  for (const auto& v : j) {
    require(io::holds_integer_in(v, 0, INT32_MAX), what, " holds ", v.dump(), ", which is not a token id");
    ids.push_back(v.get<int>());
  }
  return ids;
}

//! One JSON array of token ids per non-empty line.
inline std::vector<std::vector<int>> read_prompt_file(const std::string& path) {
  std::vector<std::vector<int>> prompts;
  for_each_json_line(path, [&](int number, const nlohmann::json& j) {
    prompts.push_back(ids_from_json(j, ::blockdiff::detail::concat(path, ": line ", number)));
  });
  require(!prompts.empty(), path, ": no prompts");
  return prompts;
}

//! --weights f32|bf16|bf16-products: the dtype the model holds its weight matrices in, and
//! whether host products of 2 or more rows with BF16 weights multiply in BF16 (Host::bf16_products).
struct WeightsFlag {
  std::string name = "f32";
  void add(CLI::App* cmd) {
    cmd->add_option("--weights", name,
                    "hold weight matrices in f32 or bf16 (half the memory and bytes per step; arithmetic stays f32); "
                    "bf16-products: bf16, and products of 2+ rows round activations to BF16 and use AVX512-BF16 "
                    "where the CPU has it (about 1.7x the multiply-adds per second)")
        ->check(CLI::IsMember({"f32", "bf16", "bf16-products"}))
        ->each([](const std::string& v) { backend::Host::bf16_products(v == "bf16-products"); })
        ->capture_default_str();
  }
  DType dtype() const { return name == "f32" ? DType::f32 : DType::bf16; }
};

}  // namespace blockdiff::cli
