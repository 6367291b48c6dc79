// Thin launchers that run blockdiff's CUDA backend (compiled by nvcc in launchers.cu) behind
// plain C++ signatures, so that the doctest parity tests compile with the host compiler.
#pragma once

#include <array>
#include <string>
#include <utility>
#include <vector>

#include "blockdiff/backend/kernel.hpp"
#include "blockdiff/eval/loglikelihood.hpp"
#include "blockdiff/io/config.hpp"
#include "blockdiff/policy/unmask.hpp"
#include "blockdiff/train/batch.hpp"
#include "blockdiff/train/data.hpp"
#include "blockdiff/train/ops.hpp"
#include "blockdiff/train/trainer.hpp"

namespace blockdiff::test::cuda {

int device_count();
//! Cuda::use_dependent_launches(on); returns whether they were on before, and whether the device
//! takes them (compute capability 9.0 and up) in `supported`.
bool use_dependent_launches(bool on, bool* supported = nullptr);
//! Captures two RMSNorm launches on the backend's stream, dependent launches on or off, and
//! returns how many of the graph's edges are programmatic (the kernel after may start early).
int programmatic_edges(bool dependent_launches);

//! Which implementation a product runs on: the one op::Linear picks, the tensor-core kernel
//! (BF16 weights, 1 to 32 rows, k a multiple of 16) whatever the rows, or op::Linear with that
//! kernel switched off (Cuda::use_mma_rows(false)).
enum class LinearPath { automatic, tensor_cores, no_tensor_cores };
//! w is uploaded as f32, or as BF16 (bf16_weights: the caller passes BF16-representable values).
std::vector<float> linear(const std::vector<float>& x, int n, int k, const std::vector<float>& w, int m,
                          const std::vector<float>* bias, const std::vector<float>* accumulate_into,
                          bool bf16_weights = false, LinearPath path = LinearPath::automatic);
//! The RMSNorm of a product's input (InputNorm): its weight and eps, whether the kernels fold it
//! into the product (Cuda::use_folded_norms), and how many floats past a 16-byte boundary its
//! weight is uploaded (a misaligned weight cannot take the vectorised loads).
struct Norm {
  std::vector<float> weight;
  float eps = 1e-6f;
  bool folded = true;
  int misalign = 0;
};
//! op::Linears over the products of x (weights uploaded as BF16 when bf16_weights), its input
//! normalised first when `norm` is given; returns the outputs one after another.
std::vector<float> linears(const std::vector<float>& x, int n, int k, const std::vector<std::vector<float>>& w,
                           const std::vector<int>& m, const std::vector<std::vector<float>>& bias,
                           bool bf16_weights = false, const Norm* norm = nullptr);
//! op::SwiGluLinear; weights uploaded as BF16 when bf16_weights (BF16-representable values), the
//! input normalised first when `norm` is given.
std::vector<float> swiglu_linear(const std::vector<float>& x, int n, int k, const std::vector<float>& w_gate,
                                 const std::vector<float>& w_up, int m, bool bf16_weights, const Norm* norm = nullptr);
//! op::RopeKvWrite (or op::KvWrite alone, without with_rope) for rows of the given token counts,
//! each writing its cache at first_slot[r]; returns q, k and both caches, one after another.
std::vector<float> rope_kv_write(const std::vector<float>& q, const std::vector<float>& k, const std::vector<float>& v,
                                 const std::vector<int>& positions, const std::vector<float>& cos_t,
                                 const std::vector<float>& sin_t, const std::vector<int>& row_tokens,
                                 const std::vector<int>& first_slot, int heads, int kv_heads, int d, int capacity,
                                 bool with_rope = true);
std::vector<float> rmsnorm(const std::vector<float>& x, int n, int h, const std::vector<float>& w, float eps);
std::vector<float> rope(const std::vector<float>& x, int n, int heads, int d, const std::vector<int>& positions,
                        const std::vector<float>& cos_t, const std::vector<float>& sin_t);
std::vector<float> swiglu(const std::vector<float>& gate, const std::vector<float>& up);
//! One row of an attention call: its queries (packed one row after another in q), the cache slot
//! of the first, and the end of the keys they attend.
struct AttentionCall {
  int n_q = 0, first_slot = 0, kv_end = 0;
};
//! op::Attention over rows that share one cache (k and v: [kv_heads, capacity, d]), on the
//! grouped kernel or, with `grouped` false, the per-head one (Cuda::use_grouped_attention).
//! mask: "causal", "block-causal" (block 8), "full", "training" (block 4, length = the first
//! row's kv_end / 2).
std::vector<float> attention(const std::string& mask, const std::vector<float>& q, const std::vector<AttentionCall>& rows,
                             const std::vector<float>& k, const std::vector<float>& v, int heads, int kv_heads, int d,
                             int capacity, bool grouped = true);
std::vector<PositionStats> vocab_stats(bool second, bool entropy, const std::vector<float>& logits, int rows, int vocab);
std::vector<PositionStats> sample(const std::vector<float>& logits, int vocab, const std::vector<SampleRequest>& requests,
                                  float temperature, float top_p);
//! Calls f with the built-in unmasking policy of that name ("threshold", "topk", "scheduled" (with
//! the cosine schedule), "margin", "entropy", "entropy-bounded", "factor", "random") and knob (a
//! count for topk, scheduled and random).
template <class F>
void with_policy(const std::string& name, float knob, F&& f) {
  const int k = static_cast<int>(knob);
  if (name == "threshold") f(unmask::Threshold{knob});
  else if (name == "topk") f(unmask::TopK{k});
  else if (name == "scheduled") f(unmask::Scheduled<schedule::Cosine>{k});
  else if (name == "margin") f(unmask::Margin{knob});
  else if (name == "entropy") f(unmask::Entropy{knob});
  else if (name == "entropy-bounded") f(unmask::EntropyBounded{knob});
  else if (name == "factor") f(unmask::Factor{knob});
  else if (name == "random") f(unmask::Random{k});
  else fail("no unmasking policy named ", name);
}
//! op::Unmask on the device for a built-in policy, by its name and knob as with_policy takes
//! them; `rows` come back with their generators advanced, `chosen` (one flag a candidate) with
//! the decisions.
void unmask(const std::string& policy, float knob, const std::vector<Candidate>& candidates, std::vector<UnmaskRow>& rows,
            bool* chosen);

std::vector<float> logits(const std::string& model_dir, const std::vector<int>& ids, const std::string& mask,
                          bool bf16_weights = false);

//! eval::loglikelihood on the device: scoring::FirstToken<8> or, with `causal`, scoring::Causal.
eval::Scores score(const std::string& model_dir, const std::vector<eval::ScoreRequest>& requests,
                   const eval::ScoreOptions& options, bool causal);

struct Decoded {
  std::vector<int> tokens;
  std::vector<std::vector<std::pair<int, int>>> committed;
  std::array<int, 4> forwards{};
};
//! shape "8/4", "16/4" or "32/8"; policy "threshold" (every shape) or topk, margin, entropy,
//! entropy-bounded, factor, scheduled (8/4 only); cache none, block, hierarchical. A temperature
//! above 0 samples, with top_p and the seed.
std::vector<Decoded> generate(const std::string& model_dir, const std::vector<std::vector<int>>& prompts,
                              const std::string& shape, const std::string& policy, const std::string& cache,
                              float knob, int max_new, int eos, int mask_id, float temperature = 0.0f,
                              float top_p = 1.0f, std::uint64_t seed = 0);
std::vector<std::vector<int>> ar(const std::string& model_dir, const std::vector<std::vector<int>>& prompts, int max_new);

//! AR decoding of one prompt with CUDA graphs on or off: its tokens, and how many forwards ran
//! as a replayed graph.
std::pair<std::vector<int>, long> ar_graphs(const std::string& model_dir, const std::vector<int>& prompt, int max_new,
                                            bool graphs);

// ---- training: train::ops::Ops<backend::Cuda> and TrainableQwen2<float, backend::Cuda> ----------

struct TrainAttention {
  std::vector<float> out, lse, dq, dk, dv;
};
//! The attention forward, then its backward for the upstream gradient dout; `allowed` is the
//! [length, length] mask.
TrainAttention train_attention(const std::vector<float>& q, const std::vector<float>& k, const std::vector<float>& v,
                               const std::vector<float>& dout, const train::ops::AttentionDims& dims,
                               const std::vector<unsigned char>& allowed, float scale);
struct TrainNorm {
  std::vector<float> y, rstd, dx, dw;
};
//! RMSNorm forward, then its backward for dy, accumulating into dx0 and dw0.
TrainNorm train_rmsnorm(const std::vector<float>& x, int n, int h, const std::vector<float>& w, float eps,
                        const std::vector<float>& dy, const std::vector<float>& dx0, const std::vector<float>& dw0);
struct TrainHead {
  double loss = 0;
  std::vector<float> dx, dhead;
};
//! cross_entropy_head with gradients; dhead accumulates into dhead0.
TrainHead train_cross_entropy(const std::vector<float>& x, int n, int h, const std::vector<float>& head, int vocab,
                              const std::vector<int>& labels, float weight, const std::vector<float>& dhead0);
struct TrainStep {
  double loss = 0;
  std::int64_t n_tokens = 0;
  std::vector<float> gradients;
};
//! One training step (loss and gradients) of the model with these parameters (checkpoint order),
//! under the causal mask or, with block_diffusion, the block-diffusion training mask of block 8.
TrainStep train_step(const io::ModelConfig& config, const std::vector<float>& parameters,
                     const train::ModelBatch& batch, bool block_diffusion);

struct TrainOptimizer {
  std::vector<float> params, m, v;
  double sum_squares = 0;
};
//! Ops<Cuda>::adamw over [begin, end) of the arrays with these constants, then sum_squares of
//! the updated parameters.
TrainOptimizer train_adamw(std::vector<float> params, const std::vector<float>& grads, std::vector<float> m,
                           std::vector<float> v, std::size_t begin, std::size_t end,
                           const train::ops::AdamWStep<float>& step, bool decay);
struct TrainRun {
  std::vector<double> loss, grad_norm;  //!< per step run
  std::vector<float> parameters;        //!< at the end
};
//! Trainer<FastDllmV2Objective<8>, backend::Cuda> from these parameters, checkpointing into
//! `out` (resuming from it first, with `resume`).
TrainRun train_run(const io::ModelConfig& config, const std::vector<float>& parameters,
                   const std::vector<train::Example>& examples, const train::TrainOptions& options,
                   const std::string& out, bool resume);

}  // namespace blockdiff::test::cuda
