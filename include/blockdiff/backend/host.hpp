// backend::Host kernels: the CPU reference that every other backend is tested against, a header
// per family as backend/cuda/ has them:
//   host/vectors.hpp      SIMD vectors, lane-wise exponentials, the ISA chosen at run time
//   host/linear.hpp       products: the few-row register-blocked kernel, one-row slices, SGEMM
//   host/elementwise.hpp  embedding, KV-cache writes, RMSNorm, RoPE, SwiGLU
//   host/row_passes.hpp   passes over a row of logits or scores: max, top two, Σ e^(l−m)
//   host/attention.hpp    grouped-query attention under each mask kind
//   host/vocab_stats.hpp  the statistics of the unmasking policies
//   host/sample.hpp       temperature and top-p draws
//
// Arithmetic is f32 throughout, but for the sums of the vocabulary passes (f64) and sampling's
// draws (f64 vectors, sorting only the candidates of a nucleus); weight matrices may be held in
// BF16, which the products widen as they read them. The vectorised kernels are compiled for
// AVX-512, AVX2 and the build's own vectors and chosen at run time from the CPU.
#pragma once

#include "blockdiff/backend/host/attention.hpp"
#include "blockdiff/backend/host/elementwise.hpp"
#include "blockdiff/backend/host/linear.hpp"
#include "blockdiff/backend/host/row_passes.hpp"
#include "blockdiff/backend/host/sample.hpp"
#include "blockdiff/backend/host/vectors.hpp"
#include "blockdiff/backend/host/vocab_stats.hpp"
