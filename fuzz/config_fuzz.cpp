// libFuzzer: any text as config.json must give a valid config or a blockdiff::Error.
#include <cstdint>
#include <string>

#include "blockdiff/io/config.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  try {
    auto c = blockdiff::io::ModelConfig::from_text(std::string(reinterpret_cast<const char*>(data), size), "fuzz");
    (void)c.parameter_count();
  } catch (const blockdiff::Error&) {
  }
  return 0;
}
