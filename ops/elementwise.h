// ops/elementwise.h: the small elementwise ops of the model and the tape. Each computes in f32 (f64 on CPU)
// and rounds once to out's dtype, like PyTorch's f16/bf16 kernels (f32 opmath; SPEC.md §1.3, §1.10).
//   add(out, a, b):                  out = a + b                     a, b, out: one dtype (residual add)
//   scale(out, x, alpha):            out = alpha * x                 x, out: one dtype
//   cast(out, in):                   out = in                        any two float dtypes
//   accumulate(out, x, alpha, mode): out = (mode == kAdd ? out : 0) + alpha * x     any two float dtypes
//     The tape's gradient sum (f32 grad += bf16 contribution). kSet never reads out, which may hold garbage.
//     It is also the mixed-dtype residual add (f32 h + f16 x -> f32, SPEC.md §1.10 kbit variant), alpha = 1.
//     CUDA rounds out + alpha*x once in f32 (fma); the CPU sums in f64 first, so 16-bit outputs can differ by
//     an ulp in rare ties.
// Shapes: any; only element counts must match (contiguous views). dtypes f32/f16/bf16; f64 on CPU only.
// Aliasing: an input may be the output itself (same data pointer and dtype: in place); partial overlap
// throws, because vectorized CUDA kernels would read elements another thread already wrote.
// Gradients: none here; the tape routes them (d a = d b = dout; d x = alpha * dout; d in = cast(dout)) and
// sets or adds each contribution with accumulate.
// Tests: tests/ops/elementwise_cpu_test.cpp, elementwise_gpu_test.cpp   Bench: bench/ops/elementwise_bench.cpp
#pragma once
#include "ops/common.h"

namespace ops {

// Shared preconditions: float dtypes, equal element counts, no partial overlap with out, and (same_dtype)
// every input in out's dtype. `op` names the caller in messages.
void elementwise_check(const char* op, TensorView out, std::initializer_list<TensorView> inputs, bool same_dtype);

namespace cpu {
void add(TensorView out, TensorView a, TensorView b);
void scale(TensorView out, TensorView x, float alpha);
void cast(TensorView out, TensorView in);
void accumulate(TensorView out, TensorView x, float alpha, Accum mode);
}  // namespace cpu

namespace cuda {
void add(TensorView out, TensorView a, TensorView b, cudaStream_t stream);
void scale(TensorView out, TensorView x, float alpha, cudaStream_t stream);
void cast(TensorView out, TensorView in, cudaStream_t stream);
void accumulate(TensorView out, TensorView x, float alpha, Accum mode, cudaStream_t stream);
}  // namespace cuda

inline void add(TensorView out, TensorView a, TensorView b, Engine& eng) {
  if (on_cuda({out, a, b})) cuda::add(out, a, b, eng.stream());
  else cpu::add(out, a, b);
}
inline void scale(TensorView out, TensorView x, float alpha, Engine& eng) {
  if (on_cuda({out, x})) cuda::scale(out, x, alpha, eng.stream());
  else cpu::scale(out, x, alpha);
}
inline void cast(TensorView out, TensorView in, Engine& eng) {
  if (on_cuda({out, in})) cuda::cast(out, in, eng.stream());
  else cpu::cast(out, in);
}
inline void accumulate(TensorView out, TensorView x, float alpha, Accum mode, Engine& eng) {
  if (on_cuda({out, x})) cuda::accumulate(out, x, alpha, mode, eng.stream());
  else cpu::accumulate(out, x, alpha, mode);
}

}  // namespace ops
