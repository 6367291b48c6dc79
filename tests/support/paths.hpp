// Where the tests find their data, and small helpers shared by the test programs.
#pragma once

#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <system_error>
#include <vector>

namespace blockdiff::test {

//! The test data folder: $BLOCKDIFF_TEST_DATA when set (a binary run on another machine), else
//! the source tree's tests/data.
inline std::filesystem::path data_dir() {
  if (const char* env = std::getenv("BLOCKDIFF_TEST_DATA")) return env;
  return BLOCKDIFF_TEST_DATA;
}
inline std::filesystem::path golden(const std::string& name) { return data_dir() / "golden" / name; }

//! A fresh, empty temporary folder for one test, removed with all it holds when the object goes
//! out of scope (set BLOCKDIFF_KEEP_TEST_FILES to keep it for a look). It reads as its path:
//! `dir / "a.json"`, or passed where a `std::filesystem::path` is taken.
class TempDir {
 public:
  explicit TempDir(const std::string& name)
      : path_(std::filesystem::temp_directory_path() / ("blockdiff-test-" + name + "-" + std::to_string(::getpid()))) {
    std::filesystem::remove_all(path_);
    std::filesystem::create_directories(path_);
  }
  ~TempDir() {
    if (std::getenv("BLOCKDIFF_KEEP_TEST_FILES")) return;
    std::error_code ignored;  // a destructor reports nothing: a folder left behind is harmless
    std::filesystem::remove_all(path_, ignored);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  const std::filesystem::path& path() const { return path_; }
  operator const std::filesystem::path&() const { return path_; }
  template <class Name>
  std::filesystem::path operator/(const Name& name) const { return path_ / name; }

 private:
  std::filesystem::path path_;
};

inline TempDir temp_dir(const std::string& name) { return TempDir(name); }

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
