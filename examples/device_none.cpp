// --device cuda in a build without the CUDA backend (nvcc was not found at configure time).
#include "device.hpp"

namespace blockdiff::cli {

std::unique_ptr<GpuModel> load_on_gpu(const std::string& dir, DType) {
  fail("--device cuda: this blockdiff was built without the CUDA backend (no nvcc when it was configured), "
       "so it cannot load ", dir, " on a GPU; configure with the CUDA toolkit installed (cmake --preset cuda)");
}

}  // namespace blockdiff::cli
