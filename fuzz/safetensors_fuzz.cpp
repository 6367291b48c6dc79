// libFuzzer: any byte string as a safetensors file must parse or throw blockdiff::Error, never
// crash or read out of bounds (ASan watches). Valid files are also read end to end.
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <string>

#include "blockdiff/io/safetensors.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static const std::string path = "/tmp/blockdiff-fuzz-" + std::to_string(::getpid()) + ".safetensors";
  if (FILE* f = std::fopen(path.c_str(), "wb")) {
    std::fwrite(data, 1, size, f);
    std::fclose(f);
  }
  try {
    blockdiff::io::SafetensorsFile file(path);
    float sink = 0;
    for (auto& e : file.entries())
      for (auto b : e.bytes) sink += static_cast<float>(b);
    (void)sink;
  } catch (const blockdiff::Error&) {
  }
  std::remove(path.c_str());  // the file is closed (and unmapped) here: nothing is left behind
  return 0;
}
