// ops/geglu.h: Gemma MLP activation, out = gelu_tanh(gate) * up (SPEC.md §1.5)
//   gelu_tanh(x) = 0.5*x*(1 + tanh(sqrt(2/pi)*(x + 0.044715*x^3))), computed in f32 (f64 on CPU) and rounded
//   once to the dtype (torch's half kernel); the product with up is rounded once more.
//   out: (N, F) dense.  gate, up, dgate, dup: (N, F) with row stride `in_stride` elements, so they can be the
//   two halves of one fused (N, 2F) gate_up GEMM output (gate = columns [0,F), up = [F,2F), in_stride = 2F;
//   see geglu_fused_part). Each of them must hold the (N-1)*in_stride + F elements that layout touches.
//   All tensors share one dtype: f32/f16/bf16 (f64 on CPU). No aliasing between outputs and inputs.
// Backward (f32 math on CUDA, f64 on CPU, each result rounded once):
//   dgate = dout * up * gelu_tanh'(gate)   honours dgate_mode (set or add)
//   dup   = dout * a                        honours dup_mode (set or add); a = gelu_tanh(gate) rounded to the
//                                           dtype, the value the forward multiplied up by (as HF's autograd).
//   HF rounds dout*up to the dtype before gelu's backward; dgate here rounds once. Measured against torch on an
//   H200 (N=512, F=9216): out and dup bit-exact in bf16/f16/f32; dgate bit-exact in 74% of elements (f32: all),
//   elsewhere within 1 ulp (bf16) or 2 ulps (f16).
// Tests: tests/ops/geglu_cpu_test.cpp, geglu_gpu_test.cpp   Bench: bench/ops/geglu_bench.cpp
#pragma once
#include "ops/common.h"

namespace ops {

struct GegluParams {
  int64_t rows = 0;        // N
  int64_t cols = 0;        // F
  int64_t in_stride = -1;  // elements between rows of gate/up/dgate/dup; -1 = cols (dense)
};

// Column half `part` (0 = gate, 1 = up) of a fused (N, 2F) gate_up tensor (or of its gradient), as a view of
// the (N-1)*2F + F elements a strided read touches; use with geglu_fused_params.
inline TensorView geglu_fused_part(TensorView gate_up, int part) {
  ENGINE_CHECK(gate_up.shape.ndim == 2 && gate_up.cols() % 2 == 0 && (part == 0 || part == 1),
               "geglu_fused_part: gate_up ", gate_up.str(), " must be (N, 2F); part=", part);
  const int64_t f = gate_up.cols() / 2, n = gate_up.rows();
  TensorView v = gate_up;
  v.data = static_cast<char*>(gate_up.data) + size_t(part * f) * engine::dtype_size(gate_up.dtype);
  v.shape = Shape{n == 0 ? 0 : (n - 1) * 2 * f + f};
  return v;
}
inline GegluParams geglu_fused_params(TensorView gate_up) {
  return GegluParams{gate_up.rows(), gate_up.cols() / 2, gate_up.cols()};
}

void geglu_check(TensorView out, TensorView gate, TensorView up, const GegluParams& p);

namespace cpu {
void geglu_forward(TensorView out, TensorView gate, TensorView up, const GegluParams& p);
void geglu_backward(TensorView dgate, Accum dgate_mode, TensorView dup, Accum dup_mode, TensorView dout,
                    TensorView gate, TensorView up, const GegluParams& p);
}  // namespace cpu

namespace cuda {
void geglu_forward(TensorView out, TensorView gate, TensorView up, const GegluParams& p, cudaStream_t stream);
void geglu_backward(TensorView dgate, Accum dgate_mode, TensorView dup, Accum dup_mode, TensorView dout,
                    TensorView gate, TensorView up, const GegluParams& p, cudaStream_t stream);
}  // namespace cuda

inline void geglu_forward(TensorView out, TensorView gate, TensorView up, const GegluParams& p, Engine& eng) {
  if (on_cuda({out, gate, up})) cuda::geglu_forward(out, gate, up, p, eng.stream());
  else cpu::geglu_forward(out, gate, up, p);
}
inline void geglu_backward(TensorView dgate, Accum dgate_mode, TensorView dup, Accum dup_mode, TensorView dout,
                           TensorView gate, TensorView up, const GegluParams& p, Engine& eng) {
  if (on_cuda({dgate, dup, dout, gate, up}))
    cuda::geglu_backward(dgate, dgate_mode, dup, dup_mode, dout, gate, up, p, eng.stream());
  else cpu::geglu_backward(dgate, dgate_mode, dup, dup_mode, dout, gate, up, p);
}

}  // namespace ops
