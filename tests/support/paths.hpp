// Where the tests find their data, and small helpers shared by the test programs.
#pragma once

#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace blockdiff::test {

//! The test data folder: $BLOCKDIFF_TEST_DATA when set (a binary run on another machine), else
//! the source tree's tests/data.
inline std::filesystem::path data_dir() {
  if (const char* env = std::getenv("BLOCKDIFF_TEST_DATA")) return env;
  return BLOCKDIFF_TEST_DATA;
}
inline std::filesystem::path golden(const std::string& name) { return data_dir() / "golden" / name; }

//! A fresh, empty temporary folder for one test.
inline std::filesystem::path temp_dir(const std::string& name) {
  auto dir = std::filesystem::temp_directory_path() / ("blockdiff-test-" + name + "-" + std::to_string(::getpid()));
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir;
}

inline std::vector<nlohmann::json> read_jsonl(const std::filesystem::path& p) {
  std::ifstream in(p);
  std::vector<nlohmann::json> out;
  std::string line;
  while (std::getline(in, line))
    if (!line.empty()) out.push_back(nlohmann::json::parse(line));
  return out;
}

inline void write_text(const std::filesystem::path& p, const std::string& text) {
  std::ofstream out(p, std::ios::binary);
  out << text;
}

}  // namespace blockdiff::test
