#include <blockdiff/blockdiff.hpp>
using Model = blockdiff::model::Qwen2<blockdiff::backend::Host>;
// A noise schedule where the unmasking policy belongs: must fail with the slot named.
using Bad = blockdiff::decode::BlockDiffusionDecoder<Model, blockdiff::PaperShape, blockdiff::schedule::Linear>;
Bad* instantiate(Model& m) { return new Bad(m); }
