// ops/dropout.h: LoRA dropout on the input of the LoRA branch (SPEC.md §4.1)
//   keep_i = philox_u16(seed, stream, offset + i) / 65536 >= p      (engine/philox.h: same mask on CPU and CUDA;
//            16 random bits per element, so the drop rate is ceil(65536 p) / 65536, within 1.6e-5 of p)
//   y_i    = x_i * keep_i * scale,   scale = 1/(1-p) computed once in f32 (torch multiplies by a precomputed
//            f32 scale too); the product is in f32 (f64 on CPU) and rounded once to y's dtype.
//   x, y: (n) any float dtype each (f32/f16/bf16; f64 on CPU), e.g. bf16 -> f32 fuses the cast before lora_A.
//   p = 0 is the identity (values copied, converted to y's dtype); 0 <= p < 1.
//   stream: one id per adapted module, so q, k and v draw their own masks from the same x (SPEC.md §4.1).
//   offset: element offset into the stream, so each micro-batch (and each call) uses fresh masks.
// Backward regenerates the mask from (seed, stream, offset), nothing is saved:
//   dx = dy * keep * scale                                          honours dx_mode (set or add)
// The mask cannot match torch's (different generator); its distribution does.
// Tests: tests/ops/dropout_cpu_test.cpp, dropout_gpu_test.cpp   Bench: bench/ops/dropout_bench.cpp
#pragma once
#include "ops/common.h"

namespace ops {

struct DropoutParams {
  int64_t n = 0;        // elements
  float p = 0.f;        // drop probability
  uint64_t seed = 0;
  uint64_t stream = 0;  // Philox stream: the module id
  uint64_t offset = 0;  // Philox element index of element 0
};

void dropout_check(TensorView out, TensorView in, const DropoutParams& p);

namespace cpu {
void dropout_forward(TensorView y, TensorView x, const DropoutParams& p);
void dropout_backward(TensorView dx, Accum dx_mode, TensorView dy, const DropoutParams& p);
}  // namespace cpu

namespace cuda {
void dropout_forward(TensorView y, TensorView x, const DropoutParams& p, cudaStream_t stream);
void dropout_backward(TensorView dx, Accum dx_mode, TensorView dy, const DropoutParams& p, cudaStream_t stream);
}  // namespace cuda

inline void dropout_forward(TensorView y, TensorView x, const DropoutParams& p, Engine& eng) {
  if (on_cuda({y, x})) cuda::dropout_forward(y, x, p, eng.stream());
  else cpu::dropout_forward(y, x, p);
}
inline void dropout_backward(TensorView dx, Accum dx_mode, TensorView dy, const DropoutParams& p, Engine& eng) {
  if (on_cuda({dx, dy})) cuda::dropout_backward(dx, dx_mode, dy, p, eng.stream());
  else cpu::dropout_backward(dx, dx_mode, dy, p);
}

}  // namespace ops
