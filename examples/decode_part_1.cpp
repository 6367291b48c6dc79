// Part 1 of the blockdiff program's compiled set of decoders (see compiled_set.hpp).
#include "decode_set.hpp"

namespace blockdiff::cli {
template Decoded decode_part<1>(const DecoderSpec&, HostModel&, Prompts, const decode::DecodeOptions&);
}  // namespace blockdiff::cli
