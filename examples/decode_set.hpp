// The decoders of the blockdiff program: the flags that name one, and the dispatch from those
// flags to the compiled set of compiled_set.hpp.
//
// The compiled set is 141 decoder types. They are split into parts that compile
// in parallel, one source file each (decode_part_<n>.cpp, which instantiate decode_part<n>); every
// other file of the program sees only the declarations below.
#pragma once

#include <CLI/CLI.hpp>
#include <charconv>
#include <cstdlib>
#include <nlohmann/json.hpp>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "blockdiff/blockdiff.hpp"
#include "cli_util.hpp"
#include "compiled_set.hpp"

namespace blockdiff::cli {

using HostModel = model::Qwen2<backend::Host>;
using Prompts = std::span<const std::vector<int>>;
using Decoded = std::optional<std::vector<decode::GenerateResult>>;

//! What the decoding flags ask for; shared by generate and eval.
struct DecoderSpec {
  int block = 32, sub_block = 8;
  std::string unmask = "threshold", schedule = "linear", cache = "block";
  bool no_commit = false;
  float threshold = 0.9f;
  int k = 2, steps = 8;

  void add_flags(CLI::App* app) {
    app_ = app;
    app->add_option("--block", block, "block size (default: the model's, config.json's bd_size)");
    app->add_option("--sub-block", sub_block, "sub-block size (default: min(8, block / 2))");
    app->add_option("--unmask", unmask,
                    "threshold | topk | scheduled | margin | entropy | entropy-bounded | factor | random")
        ->capture_default_str();
    app->add_option("--threshold", threshold,
                    "tau of threshold, margin and entropy; gamma of entropy-bounded; f of factor")
        ->capture_default_str();
    app->add_option("--k", k, "positions per forward for topk and random")->capture_default_str();
    app->add_option("--steps", steps, "denoising steps per block for scheduled")->capture_default_str();
    app->add_option("--schedule", schedule, "noise schedule of scheduled: linear | loglinear | cosine")
        ->capture_default_str();
    app->add_option("--cache", cache, "none | block | hierarchical")->capture_default_str();
    app->add_flag("--no-commit", no_commit, "skip the commit forward (reuse the last denoising K/V)");
  }
  //! The flags add_flags() adds: an option that makes them meaningless (eval's --ar) excludes them.
  static constexpr const char* flags[] = {"--block", "--sub-block", "--unmask",   "--threshold", "--k",
                                          "--steps", "--schedule",  "--cache",    "--no-commit"};

  //! The block and sub-block that `app`'s command line left out: the model's block (default_block),
  //! and a sub-block of min(8, block / 2): the paper's 8 at its block 32, and half the block from
  //! 16 down, so that a block is always decoded in more than one sub-block.
  static void default_shape(const CLI::App& app, const io::ModelConfig& config, int& block, int& sub_block) {
    default_block(app, config, block);
    if (app.count("--sub-block") == 0) sub_block = std::max(1, std::min(8, block / 2));
  }
  //! default_shape() of this spec's flags; a no-op for a spec that add_flags() did not fill.
  void default_shape(const io::ModelConfig& config) {
    if (app_ != nullptr) default_shape(*app_, config, block, sub_block);
  }

  //! Refuses a parameter flag that the policy `unmask` names does not read (--k 4 with threshold).
  //! A no-op for a spec that add_flags() did not fill, and for an unknown policy, which the
  //! dispatch names.
  void refuse_unread_flags() const {
    static constexpr std::string_view policies[] = {"threshold", "margin", "entropy", "entropy-bounded",
                                                    "factor",    "topk",   "random",  "scheduled"};
    if (app_ == nullptr || std::ranges::find(policies, unmask) == std::end(policies)) return;
    refuse_unread(*app_, "--unmask", unmask,
                  {{"--threshold", {"threshold", "margin", "entropy", "entropy-bounded", "factor"}},
                   {"--k", {"topk", "random"}},
                   {"--steps", {"scheduled"}},
                   {"--schedule", {"scheduled"}}});
  }

  //! The parameters of the policy `unmask` names, by their names in the paper and the policy
  //! types ({"threshold": 0.9}, {"k": 2}, ...), floats at the decimal they were given as.
  nlohmann::ordered_json policy_parameters() const {
    const auto decimal = [](float v) {  // 0.9f, not 0.8999999761581421
      char text[32];
      *std::to_chars(text, text + sizeof text - 1, v).ptr = '\0';
      return std::strtod(text, nullptr);
    };
    if (unmask == "topk" || unmask == "random") return {{"k", k}};
    if (unmask == "scheduled") return {{"steps", steps}, {"schedule", schedule}};
    if (unmask == "entropy-bounded") return {{"gamma", decimal(threshold)}};
    if (unmask == "factor") return {{"factor", decimal(threshold)}};
    return {{"threshold", decimal(threshold)}};
  }

 private:
  const CLI::App* app_ = nullptr;  // the command add_flags() filled this from
};

//! Calls `f.template operator()<Shape, Policy, Cache>(policy)` for the configuration `spec` names.
template <class F>
void with_decoder(const DecoderSpec& spec, F&& f) {
  auto with_cache = [&]<class Shape, class Policy>(const Policy& policy) {
    auto go = [&]<Commit C>() {
      if (spec.cache == "none") return f.template operator()<Shape, Policy, cache::None<C>>(policy);
      if (spec.cache == "block") return f.template operator()<Shape, Policy, cache::Block<C>>(policy);
      if (spec.cache == "hierarchical") return f.template operator()<Shape, Policy, cache::Hierarchical<C>>(policy);
      fail("--cache must be none, block or hierarchical, got \"", spec.cache, "\"");
    };
    if constexpr (std::is_same_v<Policy, unmask::Threshold>) {
      if (spec.no_commit) {
        const bool ok = PolicyShapes::visit(spec.block, spec.sub_block, [&]<class Listed>() {
          if constexpr (std::is_same_v<Listed, Shape>) go.template operator()<Commit::reuse>();
        });
        require(ok, "--no-commit is compiled for threshold at block/sub-block ", PolicyShapes::list, " only, not ",
                spec.block, "/", spec.sub_block, "; add the shape in examples/compiled_set.hpp");
        return;
      }
    } else {
      require(!spec.no_commit, "--no-commit is compiled for --unmask threshold only; add it in examples/compiled_set.hpp");
    }
    go.template operator()<Commit::forward>();
  };
  if (spec.unmask == "threshold") {
    unmask::Threshold policy{spec.threshold};
    policy.validate();
    dispatch_value<BLOCKDIFF_CLI_BLOCKS>(spec.block, [&]<int Bk>() {
      dispatch_value<BLOCKDIFF_CLI_SUB_BLOCKS>(spec.sub_block, [&]<int Sb>() {
        if constexpr (Sb <= Bk && Bk % Sb == 0)
          with_cache.template operator()<BlockShape<Bk, Sb>>(policy);
        else
          fail("--sub-block ", Sb, " does not divide --block ", Bk);
      }, "--sub-block");
    }, "--block");
    return;
  }
  auto at_policy_shape = [&](const auto& policy) {
    policy.validate();
    const bool ok = PolicyShapes::visit(spec.block, spec.sub_block, [&]<class Shape>() {
      with_cache.template operator()<Shape>(policy);
    });
    require(ok, "--unmask ", spec.unmask, " is compiled for block/sub-block ", PolicyShapes::list, " only, not ",
            spec.block, "/", spec.sub_block, "; add the shape in examples/compiled_set.hpp");
  };
  if (spec.unmask == "topk") return at_policy_shape(unmask::TopK{spec.k});
  if (spec.unmask == "margin") return at_policy_shape(unmask::Margin{spec.threshold});
  if (spec.unmask == "entropy") return at_policy_shape(unmask::Entropy{spec.threshold});
  if (spec.unmask == "entropy-bounded") return at_policy_shape(unmask::EntropyBounded{spec.threshold});
  if (spec.unmask == "factor") return at_policy_shape(unmask::Factor{spec.threshold});
  if (spec.unmask == "random") return at_policy_shape(unmask::Random{spec.k});
  if (spec.unmask == "scheduled") {
    if (spec.schedule == "linear") return at_policy_shape(unmask::Scheduled<schedule::Linear>{spec.steps});
    if (spec.schedule == "loglinear") return at_policy_shape(unmask::Scheduled<schedule::LogLinear>{spec.steps});
    if (spec.schedule == "cosine") return at_policy_shape(unmask::Scheduled<schedule::Cosine>{spec.steps});
    fail("--schedule must be linear, loglinear or cosine, got \"", spec.schedule, "\"");
  }
  fail("--unmask must be threshold, topk, scheduled, margin, entropy, entropy-bounded, factor or random, got \"",
       spec.unmask, "\"");
}

//! Why the configuration `spec` names cannot decode (the compiled set's error, or a value out of
//! range), or nothing where it can: lets a caller check every configuration before decoding any.
inline std::optional<std::string> why_not_compiled(const DecoderSpec& spec) {
  try {
    // [&], though nothing is captured: a lambda without captures converts to a function pointer,
    // whose unused template parameters nvcc warns of.
    with_decoder(spec, [&]<class Shape, class Policy, class Cache>(const Policy&) {});
  } catch (const Error& e) {
    return e.what();
  }
  return std::nullopt;
}

//! Decodes `prompts` if the configuration `spec` names lies in part `Part` of the compiled set,
//! else returns nothing. Raises the compiled set's errors for a configuration that is in no part.
template <int Part>
Decoded decode_part(const DecoderSpec& spec, HostModel& model, Prompts prompts, const decode::DecodeOptions& options) {
  Decoded results;
  with_decoder(spec, [&]<class Shape, class Policy, class Cache>(const Policy& policy) {
    if constexpr (decode_part_of<Shape, Policy>() == Part) {
      decode::BlockDiffusionDecoder<HostModel, Shape, Policy, Cache> decoder(model, policy);
      results = decoder.generate(prompts, options);
    }
  });
  return results;
}

extern template Decoded decode_part<0>(const DecoderSpec&, HostModel&, Prompts, const decode::DecodeOptions&);
extern template Decoded decode_part<1>(const DecoderSpec&, HostModel&, Prompts, const decode::DecodeOptions&);
extern template Decoded decode_part<2>(const DecoderSpec&, HostModel&, Prompts, const decode::DecodeOptions&);
static_assert(decode_parts == 3, "declare and define each part of the compiled set (decode_part_<n>.cpp)");

//! Decodes `prompts` with the configuration `spec` names (shared by generate, eval, study and chat).
inline std::vector<decode::GenerateResult> decode_batch(const DecoderSpec& spec, HostModel& model, Prompts prompts,
                                                        const decode::DecodeOptions& options) {
  auto results = decode_part<0>(spec, model, prompts, options);
  if (!results) results = decode_part<1>(spec, model, prompts, options);
  if (!results) results = decode_part<2>(spec, model, prompts, options);
  require(results.has_value(), "--unmask ", spec.unmask, " at block/sub-block ", spec.block, "/", spec.sub_block,
          " is in no part of the compiled set; see decode_part_of in examples/compiled_set.hpp");
  return std::move(*results);
}

}  // namespace blockdiff::cli
