// ops/softcap.h: logit soft-capping y = cap * tanh(x / cap), as HF's fp16/bf16 elementwise chain computes it
// (SPEC.md §1.6, §7.3): a = rnd(x * f32(1/cap)) (torch's CUDA `tensor / scalar` multiplies by the f32
// reciprocal), t = rnd(tanh(a)), y = rnd(t * cap); rnd() rounds to x's dtype (f32 storage: no rounding).
//   x, y: any shape, same dtype (f32/f16/bf16; f64 on CPU); y may alias x.
// Forward only: training never materialises the final logits (ops/lm_head_ce.h fuses softcap into the
// loss, ops/attention_softmax.h into attention); this serves inference logits.
// Tests: tests/ops/softcap_cpu_test.cpp, softcap_gpu_test.cpp
#pragma once
#include "ops/common.h"

namespace ops {

void softcap_check(TensorView y, TensorView x, float cap);

namespace cpu {
void softcap(TensorView y, TensorView x, float cap);
}  // namespace cpu
namespace cuda {
void softcap(TensorView y, TensorView x, float cap, cudaStream_t stream);
}  // namespace cuda

inline void softcap(TensorView y, TensorView x, float cap, Engine& eng) {
  if (on_cuda({y, x})) cuda::softcap(y, x, cap, eng.stream());
  else cpu::softcap(y, x, cap);
}

}  // namespace ops
