// ops/embedding.h: scaled token embedding, h0 = E[ids] * normalizer (SPEC.md §1.1)
//   out[i, :] = round_E(table[ids[i], :] * round_E(scale)), then cast to out's dtype if it differs
//     round_E: rounding to the table's dtype. HF casts the normalizer to the weight dtype before the multiply
//     (sqrt(3072) = 55.4256 becomes 55.5 in bf16, 55.4375 in f16) and rounds the product once in that dtype;
//     out's dtype is a second rounding, as `.to()` would do. Gemma-2-2B: sqrt(2304) = 48, exact in every dtype.
//   ids: (N) i32, any shape of N elements   table: (V, D)   out: (N, D)   table, out: f32/f16/bf16 (f64 on CPU)
//   ids must lie in [0, V). The CPU backend throws on the first bad one (index and value in the message);
//   CUDA cannot throw, so ids are validated upstream (tokenizer / data loader) and a bad id yields a row of
//   zeros (forward) or is skipped (backward) instead of an out-of-bounds access.
// Backward (only when the table is trainable; it is frozen in QLoRA, SPEC.md §1.8):
//   dtable[ids[i], :] += round_G(dout[i, :] * round_G(scale))    always accumulates; round_G: dout's dtype
//     (HF's MulBackward rounds the product in the activation dtype, which is the table dtype there).
//     dtable: (V, D) f32 on CUDA (f32/f64 on CPU). CUDA uses atomics, so repeated ids make the last bits of
//     dtable vary from run to run.
// Tests: tests/ops/embedding_cpu_test.cpp, embedding_gpu_test.cpp   Bench: bench/ops/embedding_bench.cpp
#pragma once
#include "ops/common.h"

namespace ops {

struct EmbeddingParams {
  int64_t tokens = 0;  // N
  int64_t dim = 0;     // D
  int64_t vocab = 0;   // V
  float scale = 1.f;   // the normalizer before rounding: sqrt(D) for Gemma
};

// Fills N = ids.numel() (ids may be (B, T)), V and D from table (V, D), and scale = sqrt(D) in f32 (HF's f32
// `embed_scale` buffer).
EmbeddingParams embedding_params(TensorView ids, TensorView table);

// Shapes and dtypes; for the backward, pass dout as `out` and dtable as `table`.
void embedding_check(TensorView out, TensorView ids, TensorView table, const EmbeddingParams& p);

namespace cpu {
void embedding_forward(TensorView out, TensorView ids, TensorView table, const EmbeddingParams& p);
void embedding_backward(TensorView dtable, TensorView dout, TensorView ids, const EmbeddingParams& p);
}  // namespace cpu

namespace cuda {
void embedding_forward(TensorView out, TensorView ids, TensorView table, const EmbeddingParams& p,
                       cudaStream_t stream);
void embedding_backward(TensorView dtable, TensorView dout, TensorView ids, const EmbeddingParams& p,
                        cudaStream_t stream);
}  // namespace cuda

inline void embedding_forward(TensorView out, TensorView ids, TensorView table, const EmbeddingParams& p,
                              Engine& eng) {
  if (on_cuda({out, ids, table})) cuda::embedding_forward(out, ids, table, p, eng.stream());
  else cpu::embedding_forward(out, ids, table, p);
}
inline void embedding_backward(TensorView dtable, TensorView dout, TensorView ids, const EmbeddingParams& p,
                               Engine& eng) {
  if (on_cuda({dtable, dout, ids})) cuda::embedding_backward(dtable, dout, ids, p, eng.stream());
  else cpu::embedding_backward(dtable, dout, ids, p);
}

}  // namespace ops
