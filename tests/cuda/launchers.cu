// nvcc side of the CUDA parity tests: upload, run one backend::Cuda operation or a whole
// decode, download.
#include "blockdiff/cuda.cuh"
#include "launchers.hpp"

namespace blockdiff::test::cuda {
namespace {
using Cuda = backend::Cuda;

template <class T>
DeviceBuffer<T> up(const std::vector<T>& v) {
  DeviceBuffer<T> b(Shape{static_cast<std::int64_t>(v.size())});
  Cuda::upload(b.data(), v.data(), v.size());
  return b;
}
template <class T>
std::vector<T> down(const DeviceBuffer<T>& b, std::size_t n) {
  std::vector<T> v(n);
  Cuda::download(v.data(), b.data(), n);
  return v;
}
//! The device side of a test Norm: its weight uploaded `misalign` floats past the buffer's start,
//! scratch rows for a norm the kernels do not fold, and the fold switch set for the object's life.
struct DeviceNorm {
  DeviceBuffer<float> weight, scratch;
  InputNorm norm;
  bool before = Cuda::folded_norms();

  DeviceNorm(const Norm* n, std::int64_t rows, int k) {
    if (n == nullptr) return;
    weight.resize(Shape{k + n->misalign});
    scratch.resize(Shape{rows * k});
    Cuda::upload(weight.data() + n->misalign, n->weight.data(), n->weight.size());
    norm = {weight.data() + n->misalign, n->eps, scratch.data()};
    Cuda::use_folded_norms(n->folded);
  }
  ~DeviceNorm() { Cuda::use_folded_norms(before); }
  DeviceNorm(const DeviceNorm&) = delete;
  DeviceNorm& operator=(const DeviceNorm&) = delete;
};

//! BF16 copies of BF16-representable values.
std::vector<bf16> bf16_of(const std::vector<float>& v) {
  std::vector<bf16> out(v.size());
  for (std::size_t i = 0; i < v.size(); ++i) out[i] = to_bf16(v[i]);
  return out;
}
}  // namespace

int device_count() { return Cuda::device_count(); }

bool use_dependent_launches(bool on, bool* supported) {
  const bool before = Cuda::pdl_flag();
  Cuda::use_dependent_launches(on);
  if (supported) *supported = Cuda::compute_capability() >= 90;
  return before;
}

int programmatic_edges(bool dependent_launches) {
  const bool before = Cuda::pdl_flag();
  Cuda::use_dependent_launches(dependent_launches);
  DeviceBuffer<float> x(Shape{64}), w(Shape{64}), y(Shape{64});
  const cudaStream_t stream = Cuda::stream();
  BLOCKDIFF_CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
  Kernel<Cuda, op::RmsNorm>::run(x.data(), 2, 32, w.data(), 1e-6f, y.data());
  Kernel<Cuda, op::RmsNorm>::run(y.data(), 2, 32, w.data(), 1e-6f, x.data());
  cudaGraph_t graph = nullptr;
  BLOCKDIFF_CUDA_CHECK(cudaStreamEndCapture(stream, &graph));
  std::size_t n = 0;
  BLOCKDIFF_CUDA_CHECK(cudaGraphGetEdges(graph, nullptr, nullptr, nullptr, &n));
  std::vector<cudaGraphNode_t> from(n), to(n);
  std::vector<cudaGraphEdgeData> data(n);
  BLOCKDIFF_CUDA_CHECK(cudaGraphGetEdges(graph, from.data(), to.data(), data.data(), &n));
  cudaGraphDestroy(graph);
  Cuda::use_dependent_launches(before);
  int programmatic = 0;
  for (const auto& e : data) programmatic += e.type == cudaGraphDependencyTypeProgrammatic;
  return programmatic;
}

std::vector<float> linear(const std::vector<float>& x, int n, int k, const std::vector<float>& w, int m,
                          const std::vector<float>* bias, const std::vector<float>* accumulate_into,
                          bool bf16_weights, LinearPath path) {
  auto dx = up(x);
  DeviceBuffer<float> db, dy(Shape{std::int64_t{n} * m});
  if (bias) db = up(*bias);
  if (accumulate_into) dy = up(*accumulate_into);
  const float* b = bias ? db.data() : nullptr;
  const bool accumulate = accumulate_into != nullptr;
  const bool before = Cuda::mma_rows();
  Cuda::use_mma_rows(path != LinearPath::no_tensor_cores);
  if (bf16_weights) {
    auto dw = up(bf16_of(w));
    if (path == LinearPath::tensor_cores)
      detail::cuda::mma_linear(dx.data(), n, k, dw.data(), m, b, dy.data(), accumulate, Cuda::stream());
    else
      Kernel<Cuda, op::Linear>::run(dx.data(), n, k, dw.data(), m, b, dy.data(), accumulate);
  } else {
    require(path != LinearPath::tensor_cores, "the tensor-core kernel takes BF16 weights");
    auto dw = up(w);
    Kernel<Cuda, op::Linear>::run(dx.data(), n, k, dw.data(), m, b, dy.data(), accumulate);
  }
  Cuda::use_mma_rows(before);
  return down(dy, static_cast<std::size_t>(n) * m);
}

std::vector<float> linears(const std::vector<float>& x, int n, int k, const std::vector<std::vector<float>>& w,
                           const std::vector<int>& m, const std::vector<std::vector<float>>& bias, bool bf16_weights,
                           const Norm* norm) {
  auto dx = up(x);
  const DeviceNorm dn(norm, n, k);
  std::vector<DeviceBuffer<float>> db, dy;
  for (std::size_t i = 0; i < w.size(); ++i) {
    db.push_back(up(bias[i]));
    dy.emplace_back(Shape{std::int64_t{n} * m[i]});
  }
  auto run = [&]<class W>(const std::vector<std::vector<W>>& weights) {
    std::vector<DeviceBuffer<W>> dw;
    std::vector<LinearOut<W>> outs;
    for (const auto& wi : weights) dw.push_back(up(wi));
    for (std::size_t i = 0; i < w.size(); ++i) outs.push_back({dw[i].data(), m[i], db[i].data(), dy[i].data()});
    Kernel<Cuda, op::Linears>::run(dx.data(), n, k, std::span<const LinearOut<W>>(outs), dn.norm);
  };
  if (bf16_weights) {
    std::vector<std::vector<bf16>> wb;
    for (const auto& wi : w) wb.push_back(bf16_of(wi));
    run(wb);
  } else {
    run(w);
  }
  std::vector<float> all;
  for (std::size_t i = 0; i < w.size(); ++i) {
    auto part = down(dy[i], static_cast<std::size_t>(n) * m[i]);
    all.insert(all.end(), part.begin(), part.end());
  }
  return all;
}

std::vector<float> swiglu_linear(const std::vector<float>& x, int n, int k, const std::vector<float>& w_gate,
                                 const std::vector<float>& w_up, int m, bool bf16_weights, const Norm* norm) {
  auto dx = up(x);
  const DeviceNorm dn(norm, n, k);
  DeviceBuffer<float> out(Shape{std::int64_t{n} * m}), scratch(Shape{std::int64_t{n} * m});
  auto run = [&]<class W>(const std::vector<W>& g, const std::vector<W>& u) {
    auto dg = up(g), du = up(u);
    Kernel<Cuda, op::SwiGluLinear>::run(dx.data(), n, k, dg.data(), du.data(), m, out.data(), scratch.data(), dn.norm);
  };
  if (bf16_weights) {
    run(bf16_of(w_gate), bf16_of(w_up));
  } else {
    run(w_gate, w_up);
  }
  return down(out, static_cast<std::size_t>(n) * m);
}

std::vector<float> rope_kv_write(const std::vector<float>& q, const std::vector<float>& k, const std::vector<float>& v,
                                 const std::vector<int>& positions, const std::vector<float>& cos_t,
                                 const std::vector<float>& sin_t, const std::vector<int>& row_tokens,
                                 const std::vector<int>& first_slot, int heads, int kv_heads, int d, int capacity,
                                 bool with_rope) {
  auto dq = up(q), dk = up(k), dv = up(v), dc = up(cos_t), ds = up(sin_t);
  auto dp = up(positions);
  std::vector<DeviceBuffer<float>> ck, cv;
  std::vector<AttentionRow> rows;
  std::int64_t begin = 0;
  int max_q = 0;
  for (std::size_t r = 0; r < row_tokens.size(); ++r) {
    ck.push_back(up(std::vector<float>(static_cast<std::size_t>(kv_heads) * capacity * d, 0.0f)));
    cv.push_back(up(std::vector<float>(static_cast<std::size_t>(kv_heads) * capacity * d, 0.0f)));
  }
  for (std::size_t r = 0; r < row_tokens.size(); ++r) {
    rows.push_back({begin, row_tokens[r], first_slot[r], first_slot[r] + row_tokens[r], ck[r].data(), cv[r].data(),
                    capacity});
    begin += row_tokens[r];
    max_q = std::max(max_q, row_tokens[r]);
  }
  auto drows = up(rows);
  const AttentionShape shape{heads, kv_heads, d, 1.0f, max_q, capacity};
  const std::span<const AttentionRow> device_rows(drows.data(), rows.size());
  if (with_rope)
    Kernel<Cuda, op::RopeKvWrite>::run(dq.data(), dk.data(), dv.data(), begin, dp.data(), dc.data(), ds.data(),
                                       device_rows, shape);
  else
    Kernel<Cuda, op::KvWrite>::run(dk.data(), dv.data(), device_rows, shape);
  auto all = down(dq, q.size());
  auto kk = down(dk, k.size());
  all.insert(all.end(), kk.begin(), kk.end());
  for (std::size_t r = 0; r < rows.size(); ++r) {
    auto a = down(ck[r], static_cast<std::size_t>(kv_heads) * capacity * d);
    auto b = down(cv[r], a.size());
    all.insert(all.end(), a.begin(), a.end());
    all.insert(all.end(), b.begin(), b.end());
  }
  return all;
}

std::vector<float> rmsnorm(const std::vector<float>& x, int n, int h, const std::vector<float>& w, float eps) {
  auto dx = up(x), dw = up(w);
  DeviceBuffer<float> dy(Shape{std::int64_t{n} * h});
  Kernel<Cuda, op::RmsNorm>::run(dx.data(), n, h, dw.data(), eps, dy.data());
  return down(dy, x.size());
}

std::vector<float> rope(const std::vector<float>& x, int n, int heads, int d, const std::vector<int>& positions,
                        const std::vector<float>& cos_t, const std::vector<float>& sin_t) {
  auto dx = up(x), dc = up(cos_t), ds = up(sin_t);
  auto dp = up(positions);
  Kernel<Cuda, op::Rope>::run(dx.data(), n, heads, d, dp.data(), dc.data(), ds.data());
  return down(dx, x.size());
}

std::vector<float> swiglu(const std::vector<float>& gate, const std::vector<float>& upv) {
  auto dg = up(gate), du = up(upv);
  Kernel<Cuda, op::SwiGlu>::run(dg.data(), du.data(), static_cast<std::int64_t>(gate.size()));
  return down(dg, gate.size());
}

std::vector<float> attention(const std::string& mask_name, const std::vector<float>& q,
                             const std::vector<AttentionCall>& calls, const std::vector<float>& k,
                             const std::vector<float>& v, int heads, int kv_heads, int d, int capacity, bool grouped) {
  auto dq = up(q), dk = up(k), dv = up(v);
  DeviceBuffer<float> dout(Shape{static_cast<std::int64_t>(q.size())});
  std::vector<AttentionRow> rows;
  std::int64_t begin = 0;
  int max_q = 0;
  for (const auto& c : calls) {
    rows.push_back({begin, c.n_q, c.first_slot, c.kv_end, dk.data(), dv.data(), capacity});
    begin += c.n_q;
    max_q = std::max(max_q, c.n_q);
  }
  const AttentionShape shape{heads, kv_heads, d, 1.0f / std::sqrt(static_cast<float>(d)), max_q, capacity};
  auto drows = up(rows);
  std::span<const AttentionRow> span(drows.data(), rows.size());  // rows live in device memory
  const bool before = Cuda::grouped_attention();
  Cuda::use_grouped_attention(grouped);
  if (mask_name == "causal") Kernel<Cuda, op::Attention<mask::Causal>>::run(dq.data(), dout.data(), span, shape, {});
  else if (mask_name == "block-causal") Kernel<Cuda, op::Attention<mask::BlockCausal<8>>>::run(dq.data(), dout.data(), span, shape, {});
  else if (mask_name == "full") Kernel<Cuda, op::Attention<mask::Full>>::run(dq.data(), dout.data(), span, shape, {});
  else Kernel<Cuda, op::Attention<mask::BlockDiffusionTraining<4>>>::run(dq.data(), dout.data(), span, shape, {calls.front().kv_end / 2});
  Cuda::use_grouped_attention(before);
  return down(dout, q.size());
}

std::vector<PositionStats> vocab_stats(bool second, bool entropy, const std::vector<float>& logits, int rows, int vocab) {
  auto dl = up(logits);
  std::vector<PositionStats> out(static_cast<std::size_t>(rows));
  if (second && entropy) Kernel<Cuda, op::VocabStats<true, true>>::run(dl.data(), rows, vocab, out.data());
  else if (second) Kernel<Cuda, op::VocabStats<true, false>>::run(dl.data(), rows, vocab, out.data());
  else if (entropy) Kernel<Cuda, op::VocabStats<false, true>>::run(dl.data(), rows, vocab, out.data());
  else Kernel<Cuda, op::VocabStats<false, false>>::run(dl.data(), rows, vocab, out.data());
  return out;
}

std::vector<PositionStats> sample(const std::vector<float>& logits, int vocab, const std::vector<SampleRequest>& requests,
                                  float temperature, float top_p) {
  auto dl = up(logits);
  std::vector<PositionStats> out(requests.size());
  Kernel<Cuda, op::Sample>::run(dl.data(), vocab, requests, temperature, top_p, out.data());
  return out;
}

void unmask(const std::string& policy, float knob, const std::vector<Candidate>& candidates, std::vector<UnmaskRow>& rows,
            bool* chosen) {
  with_policy(policy, knob, [&]<class P>(const P& p) {
    static_assert(DeviceSelectable<P>, "the device's kernel, not the host's");
    Kernel<Cuda, op::Unmask<P>>::run(p, candidates.data(), rows, chosen);
  });
}

std::vector<float> logits(const std::string& model_dir, const std::vector<int>& ids, const std::string& mask_name,
                          bool bf16_weights) {
  auto m = model::Qwen2<Cuda>::load(model_dir, bf16_weights ? DType::bf16 : DType::f32);
  auto cache = m.make_cache(static_cast<int>(ids.size()));
  std::vector<model::ForwardRow<Cuda>> rows(1);
  rows[0].tokens = ids;
  rows[0].cache = &cache;
  auto l = mask_name == "causal" ? m.forward<mask::Causal>(rows) : m.forward<mask::BlockCausal<8>>(rows);
  std::vector<float> out(static_cast<std::size_t>(l.numel()));
  Cuda::download(out.data(), l.data(), out.size());
  return out;
}

eval::Scores score(const std::string& model_dir, const std::vector<eval::ScoreRequest>& requests,
                   const eval::ScoreOptions& options, bool causal) {
  auto m = model::Qwen2<Cuda>::load(model_dir);
  return causal ? eval::causal_loglikelihood(m, requests, options)
                : eval::first_token_loglikelihood<8>(m, requests, options);
}

std::vector<Decoded> generate(const std::string& model_dir, const std::vector<std::vector<int>>& prompts,
                              const std::string& shape, const std::string& policy, const std::string& cache_name,
                              float knob, int max_new, int eos, int mask_id, float temperature, float top_p,
                              std::uint64_t seed) {
  using Model = model::Qwen2<Cuda>;
  auto m = Model::load(model_dir);
  decode::DecodeOptions o;
  o.max_new_tokens = max_new;
  o.mask_id = mask_id;
  o.eos_id = eos;
  o.sampling = {temperature, top_p};
  o.seed = seed;
  std::vector<Decoded> out;
  auto run = [&]<class Shape, class Policy>(Policy p) {
    auto with = [&]<class C>() {
      decode::BlockDiffusionDecoder<Model, Shape, Policy, C> d(m, p);
      for (auto& r : d.generate(prompts, o)) {
        Decoded x;
        x.tokens = r.tokens;
        x.forwards = r.trace.forwards;
        for (auto& s : r.trace.steps) x.committed.push_back(s.committed);
        out.push_back(std::move(x));
      }
    };
    if (cache_name == "none") with.template operator()<cache::None<>>();
    else if (cache_name == "block") with.template operator()<cache::Block<>>();
    else with.template operator()<cache::Hierarchical<>>();
  };
  if (policy == "threshold") {
    if (shape == "8/4") run.template operator()<BlockShape<8, 4>>(unmask::Threshold{knob});
    else if (shape == "16/4") run.template operator()<BlockShape<16, 4>>(unmask::Threshold{knob});
    else run.template operator()<BlockShape<32, 8>>(unmask::Threshold{knob});
  } else if (policy == "topk") run.template operator()<BlockShape<8, 4>>(unmask::TopK{static_cast<int>(knob)});
  else if (policy == "margin") run.template operator()<BlockShape<8, 4>>(unmask::Margin{knob});
  else if (policy == "entropy") run.template operator()<BlockShape<8, 4>>(unmask::Entropy{knob});
  else if (policy == "entropy-bounded") run.template operator()<BlockShape<8, 4>>(unmask::EntropyBounded{knob});
  else if (policy == "factor") run.template operator()<BlockShape<8, 4>>(unmask::Factor{knob});
  else run.template operator()<BlockShape<8, 4>>(unmask::Scheduled<>{static_cast<int>(knob)});
  return out;
}

std::vector<std::vector<int>> ar(const std::string& model_dir, const std::vector<std::vector<int>>& prompts, int max_new) {
  auto m = model::Qwen2<Cuda>::load(model_dir);
  decode::ArOptions o;
  o.max_new_tokens = max_new;
  std::vector<std::vector<int>> out;
  for (auto& r : decode::ar_generate(m, prompts, o)) out.push_back(r.tokens);
  return out;
}

std::pair<std::vector<int>, long> ar_graphs(const std::string& model_dir, const std::vector<int>& prompt, int max_new,
                                            bool graphs) {
  const bool before = Cuda::graphs();
  Cuda::use_graphs(graphs);
  auto m = model::Qwen2<Cuda>::load(model_dir);
  decode::ArOptions o;
  o.max_new_tokens = max_new;
  auto r = decode::ar_generate(m, std::vector<std::vector<int>>{prompt}, o);
  Cuda::use_graphs(before);
  return {r.at(0).tokens, m.replays().launches()};
}

// ---- training ------------------------------------------------------------------------------

using TrainOps = train::ops::Ops<Cuda>;

TrainAttention train_attention(const std::vector<float>& q, const std::vector<float>& k, const std::vector<float>& v,
                               const std::vector<float>& dout, const train::ops::AttentionDims& dims,
                               const std::vector<unsigned char>& allowed, float scale) {
  auto dq_in = up(q), dk_in = up(k), dv_in = up(v), ddout = up(dout);
  auto dallowed = up(allowed);
  const auto stats = static_cast<std::size_t>(std::int64_t(dims.rows) * dims.heads * dims.length);
  DeviceBuffer<float> out(Shape{std::int64_t(q.size())}), lse(Shape{std::int64_t(stats)}),
      dq(Shape{std::int64_t(q.size())}), dk(Shape{std::int64_t(k.size())}), dv(Shape{std::int64_t(v.size())}),
      scratch(Shape{TrainOps::attention_scratch(dims)});
  TrainOps::attention_forward(dq_in.data(), dk_in.data(), dv_in.data(), dims, dallowed.data(), scale, out.data(),
                              lse.data(), scratch.data());
  TrainOps::attention_backward(ddout.data(), dq_in.data(), dk_in.data(), dv_in.data(), out.data(), lse.data(), dims,
                               dallowed.data(), scale, dq.data(), dk.data(), dv.data(), scratch.data());
  return {down(out, q.size()), down(lse, stats), down(dq, q.size()), down(dk, k.size()), down(dv, v.size())};
}

TrainNorm train_rmsnorm(const std::vector<float>& x, int n, int h, const std::vector<float>& w, float eps,
                        const std::vector<float>& dy, const std::vector<float>& dx0, const std::vector<float>& dw0) {
  auto dx_in = up(x), dw_in = up(w), ddy = up(dy), dx = up(dx0), dw = up(dw0);
  DeviceBuffer<float> y(Shape{std::int64_t(x.size())}), rstd(Shape{std::int64_t{n}}),
      scratch(Shape{TrainOps::rmsnorm_scratch(n, h)});
  TrainOps::rmsnorm_forward(dx_in.data(), n, h, dw_in.data(), eps, y.data(), rstd.data());
  TrainOps::rmsnorm_backward(ddy.data(), dx_in.data(), rstd.data(), n, h, dw_in.data(), dx.data(), dw.data(),
                             scratch.data());
  return {down(y, x.size()), down(rstd, std::size_t(n)), down(dx, x.size()), down(dw, w.size())};
}

TrainHead train_cross_entropy(const std::vector<float>& x, int n, int h, const std::vector<float>& head, int vocab,
                              const std::vector<int>& labels, float weight, const std::vector<float>& dhead0) {
  auto dx_in = up(x), dhead_w = up(head), dhead = up(dhead0);
  auto dlabels = up(labels);
  DeviceBuffer<float> logits(Shape{std::int64_t{n} * vocab}), dx(Shape{std::int64_t(x.size())});
  const double loss = TrainOps::cross_entropy_head(dx_in.data(), n, h, dhead_w.data(), vocab, dlabels.data(), weight,
                                                   logits.data(), dx.data(), dhead.data());
  return {loss, down(dx, x.size()), down(dhead, head.size())};
}

TrainStep train_step(const io::ModelConfig& config, const std::vector<float>& parameters,
                     const train::ModelBatch& batch, bool block_diffusion) {
  train::TrainableQwen2<float, Cuda> m(config);
  m.upload_parameters(parameters);
  m.zero_grad();
  const auto r = block_diffusion ? m.step(batch, mask::BlockDiffusionTraining<8>{batch.length / 2})
                                 : m.step(batch, mask::Causal{});
  return {r.loss, r.n_tokens, m.download_gradients()};
}

TrainOptimizer train_adamw(std::vector<float> params, const std::vector<float>& grads, std::vector<float> m,
                           std::vector<float> v, std::size_t begin, std::size_t end,
                           const train::ops::AdamWStep<float>& step, bool decay) {
  auto dp = up(params), dg = up(grads), dm = up(m), dv = up(v);
  TrainOps::adamw(dp.data(), dg.data(), dm.data(), dv.data(), begin, end, step, decay);
  const double sum = TrainOps::sum_squares(dp.data(), params.size());
  return {down(dp, params.size()), down(dm, m.size()), down(dv, v.size()), sum};
}

TrainRun train_run(const io::ModelConfig& config, const std::vector<float>& parameters,
                   const std::vector<train::Example>& examples, const train::TrainOptions& options,
                   const std::string& out, bool resume) {
  train::TrainableQwen2<float, Cuda> m(config);
  m.upload_parameters(parameters);
  train::Trainer<train::FastDllmV2Objective<8>, Cuda> trainer(m, train::FastDllmV2Objective<8>{*config.mask_token_id},
                                                             examples, options);
  if (resume) trainer.resume(out);
  TrainRun run;
  trainer.run(out, [&](const train::StepLog& s) {
    run.loss.push_back(s.loss);
    run.grad_norm.push_back(s.grad_norm);
  });
  run.parameters = m.download_parameters();
  return run;
}

}  // namespace blockdiff::test::cuda
