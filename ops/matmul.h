// ops/matmul.h: C = alpha * op(A) @ op(B) + beta * C, row-major, optionally batched.
//   A: (m,k), or (k,m) with trans_a      B: (k,n), or (n,k) with trans_b      C: (m,n)
//   Batched: A, B, C carry a leading batch dim (stride = one matrix), or stride 0 to broadcast A or B.
//   dtypes: A and B alike (f32, f16, bf16; f64 on CPU); C is that dtype or f32. f32 accumulation on CUDA
//   (cuBLASLt, engine/cublaslt.h), f64 accumulation on CPU; the result is rounded once to C's dtype.
//   Gradient semantics: beta = 0 sets C, beta = 1 accumulates into C.
// Tests: tests/ops/matmul_cpu_test.cpp, matmul_gpu_test.cpp   Bench: bench/ops/matmul_bench.cpp
#pragma once
#include "ops/common.h"

namespace ops {

struct MatmulParams {
  int64_t m = 0, n = 0, k = 0;
  bool trans_a = false, trans_b = false;
  int64_t batch = 1;
  int64_t stride_a = -1, stride_b = -1, stride_c = -1;  // elements; -1 = one dense matrix
  float alpha = 1.f, beta = 0.f;
};

// Fills m, n, k and dense strides from the views' shapes (2-D, or 3-D with a leading batch dim).
MatmulParams matmul_params(TensorView c, TensorView a, TensorView b, bool trans_a, bool trans_b,
                           float alpha = 1.f, float beta = 0.f);

namespace detail {
inline int64_t resolve_stride(int64_t s, int64_t dense) { return s < 0 ? dense : s; }
void check_matmul(TensorView c, TensorView a, TensorView b, const MatmulParams& p);
}  // namespace detail

namespace cpu {
void matmul(TensorView c, TensorView a, TensorView b, const MatmulParams& p);
}  // namespace cpu
namespace cuda {
void matmul(TensorView c, TensorView a, TensorView b, const MatmulParams& p, engine::CublasLt& blas,
            cudaStream_t stream);
}  // namespace cuda

inline void matmul(TensorView c, TensorView a, TensorView b, const MatmulParams& p, Engine& eng) {
  if (on_cuda({c, a, b})) cuda::matmul(c, a, b, p, eng.blas(), eng.stream());
  else cpu::matmul(c, a, b, p);
}

}  // namespace ops
