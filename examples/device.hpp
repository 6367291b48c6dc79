// --device host|cuda for `generate`, `chat`, `ar`, `logits`, `eval` and `study`. The GPU side of the
// program lives in device_cuda.cu, which nvcc compiles; the rest of the program sees only this
// host-only interface, so it stays plain C++ and builds the same without the CUDA toolkit.
//
// That side is a module of its own, blockdiff-cuda.so beside the program, which load_on_gpu
// opens the first time a model goes to the GPU (device_loader.cpp). So the program does not load
// the CUDA runtime and cuBLAS (a third of a second at every start) unless it uses them, and it
// runs where they are not installed.
//
// The GPU compiles its own, smaller set of decoders (each costs nvcc far more time than it costs
// g++), which compiled_set.hpp lists beside the host's (gpu_set_help).
#pragma once

#include <CLI/CLI.hpp>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "blockdiff/blockdiff.hpp"
#include "blockdiff/eval/loglikelihood.hpp"
#include "decode_set.hpp"

namespace blockdiff::cli {

//! --device host|cuda.
struct DeviceFlag {
  std::string name = "host";
  void add(CLI::App* cmd) {
    cmd->add_option("--device", name, "host, or cuda: the model in GPU memory (f32 or BF16 as --weights says)")
        ->check(CLI::IsMember({"host", "cuda"}))
        ->capture_default_str();
  }
  bool cuda() const { return name == "cuda"; }
};

//! The logits of one forward over `ids` from an empty cache, under the mask `mask_name` names
//! ("causal", or "block-causal" with a block size among Blocks): [ids.size(), vocab], row-major,
//! on the host.
template <int... Blocks, class Model>
std::vector<float> forward_logits(Model& model, const std::vector<int>& ids, const std::string& mask_name, int block) {
  using Backend = typename Model::backend_type;
  decode::check_prompt(ids, 0, model.config(), 0, 1);
  auto cache = model.make_cache(static_cast<int>(ids.size()));
  model::ForwardRow<Backend> row;
  row.tokens = ids;
  row.cache = &cache;
  std::span<model::ForwardRow<Backend>> rows(&row, 1);
  TensorView<const float> logits;
  if (mask_name == "causal")
    logits = model.template forward<mask::Causal>(rows);
  else if (mask_name == "block-causal")
    logits = dispatch_value<Blocks...>(
        block, [&]<int B>() { return model.template forward<mask::BlockCausal<B>>(rows); }, "--block");
  else
    fail("--mask must be causal or block-causal, got \"", mask_name, "\"");
  std::vector<float> out(static_cast<std::size_t>(logits.numel()));
  Backend::download(out.data(), logits.data(), out.size());
  return out;
}

//! Log-likelihoods of `requests` (eval/loglikelihood.hpp): Fast-dLLM v2's first-token score at
//! `block`, one among Blocks, or where there is none, an AR model's causal score.
template <int... Blocks, class Model>
eval::Scores score_requests(Model& model, std::span<const eval::ScoreRequest> requests,
                            const eval::ScoreOptions& options, std::optional<int> block) {
  if (!block) return eval::causal_loglikelihood(model, requests, options);
  return dispatch_value<Blocks...>(
      *block, [&]<int B>() { return eval::first_token_loglikelihood<B>(model, requests, options); }, "--block");
}

//! A checkpoint loaded into GPU memory (model::Qwen2<backend::Cuda>), behind a host-only interface.
class GpuModel {
 public:
  virtual ~GpuModel() = default;
  virtual const io::ModelConfig& config() const = 0;
  //! Why the configuration `spec` names cannot decode on the GPU (it lies outside the GPU's set,
  //! or the compiled set's error), or nothing where it can.
  virtual std::optional<std::string> why_not_compiled(const DecoderSpec& spec) const = 0;
  //! Block-diffusion decoding with the configuration `spec` names; it must lie in the GPU's set.
  virtual std::vector<decode::GenerateResult> generate(const DecoderSpec& spec, Prompts prompts,
                                                       const decode::DecodeOptions& options) = 0;
  //! Greedy AR decoding.
  virtual std::vector<decode::ArResult> ar(Prompts prompts, const decode::ArOptions& options) = 0;
  //! forward_logits, with the block-causal block sizes the GPU's decoders compile (8 and 32).
  virtual std::vector<float> logits(const std::vector<int>& ids, const std::string& mask_name, int block) = 0;
  //! score_requests, with the blocks the GPU's decoders compile (8 and 32).
  virtual eval::Scores score(std::span<const eval::ScoreRequest> requests, const eval::ScoreOptions& options,
                             std::optional<int> block) = 0;
};

//! Loads `dir` into GPU memory. Fails, naming the cause, where this program was built without the
//! CUDA backend, where its GPU module or the libraries that module needs cannot be loaded, or
//! where there is no CUDA device.
std::unique_ptr<GpuModel> load_on_gpu(const std::string& dir, DType weights);

//! The GPU module's entry point, which load_on_gpu finds by this name: `dir` loaded into GPU
//! memory, owned by the caller; it throws as load_on_gpu does.
extern "C" GpuModel* blockdiff_cli_load_on_gpu(const std::string& dir, DType weights);

}  // namespace blockdiff::cli
