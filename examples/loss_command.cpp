// `blockdiff loss`, compiled apart from the rest of the program: it instantiates a training step
// for every objective the flags can name.
#include "train_command.hpp"

namespace blockdiff::cli {

int LossCommand::run() {
  auto model = train::TrainableQwen2<float>::load(model_);
  const auto batch = train::read_batch_file(batch_, model.config().vocab_size);
  spec_.default_block(model.config());
  train::ModelBatch mb;
  train::LossResult result;
  const bool backward = !grads_out_.empty();
  spec_.visit(model.config().mask_token_id.value_or(-1), [&](auto objective) {
    using O = decltype(objective);
    const int count = batch.windows.count();
    if constexpr (std::is_same_v<O, train::ArObjective>) {
      Rng unused(0);
      objective.build(batch.windows, 0, count, unused, mb);
    } else {
      require(!batch.mask.empty(), batch_, ": --objective fdllm2 needs the \"mask\" field");
      objective.build_with_masks(batch.windows, 0, count, batch.mask, mb);
    }
    result = model.step(mb, objective.mask(batch.windows.length), backward);
  });
  if (backward) {
    io::SafetensorsWriter w;
    for (std::size_t i = 0; i < model.tensors().size(); ++i)
      w.add(model.tensors()[i].name, model.tensors()[i].shape, std::span<const float>(model.gradient(i)));
    w.write(grads_out_);
  }
  nlohmann::json out{{"loss", result.loss}, {"n_tokens", result.n_tokens}, {"objective", spec_.objective}};
  if (spec_.objective == "fdllm2") out["block"] = spec_.block;
  std::cout << (json_ ? out.dump() : out.dump(2)) << "\n";
  return 0;
}

}  // namespace blockdiff::cli
