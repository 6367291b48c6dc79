// --device cuda in a build with the CUDA backend: the GPU's side of the program is the module
// blockdiff-cuda.so beside it (device.hpp), opened the first time a model goes to the GPU.
#include <dlfcn.h>

#include <filesystem>

#include "device.hpp"

namespace blockdiff::cli {

std::unique_ptr<GpuModel> load_on_gpu(const std::string& dir, DType weights) {
  static const auto entry = [] {
    std::error_code ec;
    const auto program = std::filesystem::read_symlink("/proc/self/exe", ec);
    const std::string module = (ec ? std::filesystem::path() : program.parent_path()) / "blockdiff-cuda.so";
    void* handle = dlopen(module.c_str(), RTLD_NOW | RTLD_LOCAL);  // never closed: the models live in it
    require(handle != nullptr, "--device cuda: cannot load the program's GPU module (", dlerror(),
            "): it belongs beside the program, and needs the CUDA runtime and cuBLAS");
    auto* load = reinterpret_cast<decltype(&blockdiff_cli_load_on_gpu)>(dlsym(handle, "blockdiff_cli_load_on_gpu"));
    require(load != nullptr, "--device cuda: ", module, " is not this program's GPU module (", dlerror(), ")");
    return load;
  }();
  return std::unique_ptr<GpuModel>(entry(dir, weights));
}

}  // namespace blockdiff::cli
