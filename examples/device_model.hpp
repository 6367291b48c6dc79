// A checkpoint on the device that --device names, for the commands that decode or run forwards.
// Apart from device.hpp so that the GPU's side of the program (device_cuda.cu, compiled by nvcc)
// does not compile the host model's decoders too.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "blockdiff/blockdiff.hpp"
#include "decode_set.hpp"
#include "device.hpp"

namespace blockdiff::cli {

//! A checkpoint on the device that --device names: what `generate`, `chat`, `ar`, `logits`, `score`,
//! `eval` and `study` ask of the host model or of the GPU's alike.
class DeviceModel {
 public:
  DeviceModel(const std::string& dir, DType weights, const DeviceFlag& device) {
    if (device.cuda())
      gpu_ = load_on_gpu(dir, weights);
    else
      host_.emplace(HostModel::load(dir, weights));
  }

  const io::ModelConfig& config() const { return gpu_ ? gpu_->config() : host_->config(); }
  //! Why the configuration `spec` names cannot decode on this device, or nothing where it can.
  std::optional<std::string> why_not_compiled(const DecoderSpec& spec) const {
    return gpu_ ? gpu_->why_not_compiled(spec) : cli::why_not_compiled(spec);
  }
  //! Block-diffusion decoding with the configuration `spec` names (the GPU compiles fewer).
  std::vector<decode::GenerateResult> generate(const DecoderSpec& spec, Prompts prompts,
                                               const decode::DecodeOptions& options) {
    return gpu_ ? gpu_->generate(spec, prompts, options) : decode_batch(spec, *host_, prompts, options);
  }
  std::vector<decode::ArResult> ar(Prompts prompts, const decode::ArOptions& options) {
    return gpu_ ? gpu_->ar(prompts, options) : decode::ar_generate(*host_, prompts, options);
  }
  //! forward_logits: any block size of 4 to 64 on the host, 8 or 32 on the GPU.
  std::vector<float> logits(const std::vector<int>& ids, const std::string& mask_name, int block) {
    return gpu_ ? gpu_->logits(ids, mask_name, block) : forward_logits<4, 8, 16, 32, 64>(*host_, ids, mask_name, block);
  }
  //! score_requests: any block size of 4 to 64 on the host, 8 or 32 on the GPU; none scores causally.
  eval::Scores score(std::span<const eval::ScoreRequest> requests, const eval::ScoreOptions& options,
                     std::optional<int> block) {
    return gpu_ ? gpu_->score(requests, options, block)
                : score_requests<4, 8, 16, 32, 64>(*host_, requests, options, block);
  }

 private:
  std::optional<HostModel> host_;
  std::unique_ptr<GpuModel> gpu_;
};

}  // namespace blockdiff::cli
