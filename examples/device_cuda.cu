// --device cuda: model::Qwen2<backend::Cuda> and the GPU's decoder set, the program's GPU module
// (device.hpp).
#include "blockdiff/cuda.cuh"
#include "device.hpp"

namespace blockdiff::cli {
namespace {

using CudaModel = model::Qwen2<backend::Cuda>;

//! The configurations compiled for the GPU (gpu_set_help in compiled_set.hpp says the same in words).
template <class Shape, class Policy>
constexpr bool on_gpu() {
  return std::is_same_v<Policy, unmask::Threshold> &&
         ((Shape::block == 32 && Shape::sub_block == 8) || (Shape::block == 8 && Shape::sub_block == 4));
}

class Loaded final : public GpuModel {
 public:
  Loaded(const std::string& dir, DType weights) : model_(CudaModel::load(dir, weights)) {}

  const io::ModelConfig& config() const override { return model_.config(); }

  std::optional<std::string> why_not_compiled(const DecoderSpec& spec) const override {
    if (auto why = cli::why_not_compiled(spec)) return why;
    bool found = false;
    with_decoder(spec, [&]<class Shape, class Policy, class Cache>(const Policy&) { found = on_gpu<Shape, Policy>(); });
    if (found) return std::nullopt;
    return detail::concat("--device cuda: --unmask ", spec.unmask, " at block/sub-block ", spec.block, "/",
                          spec.sub_block, " is not compiled for the GPU; add it in on_gpu, examples/device_cuda.cu\n",
                          gpu_set_help);
  }

  std::vector<decode::GenerateResult> generate(const DecoderSpec& spec, Prompts prompts,
                                               const decode::DecodeOptions& options) override {
    if (auto why = why_not_compiled(spec)) fail(*why);
    std::optional<std::vector<decode::GenerateResult>> results;
    with_decoder(spec, [&]<class Shape, class Policy, class Cache>(const Policy& policy) {
      if constexpr (on_gpu<Shape, Policy>()) {
        decode::BlockDiffusionDecoder<CudaModel, Shape, Policy, Cache> decoder(model_, policy);
        results = decoder.generate(prompts, options);
      }
    });
    return std::move(*results);
  }

  std::vector<decode::ArResult> ar(Prompts prompts, const decode::ArOptions& options) override {
    return decode::ar_generate(model_, prompts, options);
  }

  std::vector<float> logits(const std::vector<int>& ids, const std::string& mask_name, int block) override {
    return forward_logits<8, 32>(model_, ids, mask_name, block);
  }

  eval::Scores score(std::span<const eval::ScoreRequest> requests, const eval::ScoreOptions& options,
                     std::optional<int> block) override {
    return score_requests<8, 32>(model_, requests, options, block);
  }

 private:
  CudaModel model_;
};

}  // namespace

extern "C" GpuModel* blockdiff_cli_load_on_gpu(const std::string& dir, DType weights) {
  require(backend::Cuda::device_count() > 0, "--device cuda: no CUDA device is visible to this process");
  return new Loaded(dir, weights);
}

}  // namespace blockdiff::cli
