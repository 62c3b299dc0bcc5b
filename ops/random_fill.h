// ops/random_fill.h: fill a tensor with N(0, std^2) values from the engine's Philox (engine/philox.h).
//   out[i] = round_to(out.dtype, double(std) * double(philox_normal(seed, stream, offset + i)))
//   The product is formed in f64 and rounded once to f32, then (f16/bf16) once more to the storage type,
//   exactly as engine::store_f64 does, so the CPU fill equals the values models::write_random_checkpoint
//   writes for the same (seed, stream).
//   out: any shape, contiguous, f32/f16/bf16 (f64 on CPU).
// CUDA vs CPU: philox_normal's Box-Muller uses logf/cosf/sqrtf, which may differ by an ulp between device
//   math and host libm (engine/philox.h); everything else is bit-identical. So f32 agrees to a few f32 ulps,
//   and f16/bf16 agree exactly except where that ulp crosses a rounding boundary (one storage ulp).
// Gradients: none (an initializer).
// Tests: tests/ops/random_fill_cpu_test.cpp, random_fill_gpu_test.cpp   Bench: bench/ops/random_fill_bench.cpp
#pragma once
#include "ops/common.h"

namespace ops {

struct RandomFillParams {
  uint64_t seed = 0;
  uint64_t stream = 0;   // Philox stream: one per tensor keeps tensors independent
  uint64_t offset = 0;   // element index of out[0] within the stream (fill a tensor in pieces)
  double std = 1.0;      // finite, >= 0
};

void random_fill_check(TensorView out, const RandomFillParams& p);

namespace cpu {
void random_normal_fill(TensorView out, const RandomFillParams& p);
}  // namespace cpu

namespace cuda {
void random_normal_fill(TensorView out, const RandomFillParams& p, cudaStream_t stream);
}  // namespace cuda

inline void random_normal_fill(TensorView out, const RandomFillParams& p, Engine& eng) {
  if (on_cuda({out})) cuda::random_normal_fill(out, p, eng.stream());
  else cpu::random_normal_fill(out, p);
}

}  // namespace ops
