// libFuzzer: any text as a model.safetensors.index.json must parse to a weight map or throw
// blockdiff::Error; a parsed map names only plain file names inside the folder.
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "blockdiff/io/checkpoint.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  try {
    const auto map = blockdiff::io::parse_weight_map(std::string_view(reinterpret_cast<const char*>(data), size), "fuzz.json");
    for (auto& [name, file] : map)
      if (file.empty() || file.find('/') != std::string::npos || file == "..") std::abort();
  } catch (const blockdiff::Error&) {
  }
  return 0;
}
