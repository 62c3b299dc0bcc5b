// ops/lora_up.h: the LoRA up-projection added to the base output (SPEC.md §4.1: y = base(x) + s * lora_B(t)).
//   Forward:  y[m,c]  = round_dt(y[m,c] + s * sum_j t[m,j] * b[c,j])     (accumulates into the base output)
//   Backward: dt[m,j] = round_dt(s * sum_c dy[m,c] * b[c,j])              (sets dt)
//             dB[c,j] += s * sum_m dy[m,c] * t[m,j]                       (f32 parameter gradient, accumulates)
//   The same values as the two cuBLASLt GEMMs they replace (alpha = s, beta = 1 / 0 / 1), in one pass over y
//   (forward) and one over dy (backward) instead of two, with no split-K reduce launches.
//   Shapes: y, dy (n, out); t, dt (n, r); b (out, r); dB (out, r). lora_up_fusable(out, r): r in {1, 2, 4, 8,
//   16} and out % 8 == 0 (callers keep the GEMMs otherwise, on both backends).
//   dtypes: y, dy, t, dt, b alike: f32/f16/bf16 (f64 on CPU); dB f32 (f32 or f64 on CPU). Sums in f32 on CUDA
//   (f64 on CPU), each rounded once where shown.
//   CUDA: y, dy and b 8-element aligned (tensors from the engine are). The backward takes `workspace`,
//   lora_up_workspace_elems f32: dt's partial sums per 256-column chunk (summed in chunk order) and dB's per
//   row slab (summed in slab order). No atomics: bitwise reproducible; the split depends on the shape only.
// Tests: tests/ops/lora_up_cpu_test.cpp, lora_up_gpu_test.cpp   Bench: bench/ops/lora_up_bench.cpp
#pragma once
#include "ops/common.h"

namespace ops {

struct LoraUpParams {
  int64_t n = 0;    // rows (tokens)
  int64_t out = 0;  // output features
  int64_t r = 0;    // LoRA rank
  float scaling = 1.f;
};

inline bool lora_up_fusable(int64_t out, int64_t r) {
  return (r == 1 || r == 2 || r == 4 || r == 8 || r == 16) && out % 8 == 0;
}

// CUDA backward split: 256-column chunks and row slabs (ops/lora_down.h's rule: ~32 rows, at most 64).
inline int64_t lora_up_chunks(int64_t out) { return (out + 255) / 256; }
int64_t lora_up_slabs(int64_t n);
int64_t lora_up_workspace_elems(int64_t n, int64_t out, int64_t r);  // chunks*n*r + slabs*out*r

// A LoRA branch backward in three launches (ops/lora_branch.h) splits lora_up_backward: its first pass, for up
// to kLoraMaxGroup outputs of one launch, leaves each member's dt and dB as the partial sums above (in
// `workspace`, lora_up_workspace_elems f32); ops/lora_down.h's group backward sums dt's chunks in chunk order
// (rounded as here) and dB's slabs in slab order: the same bits as lora_up_backward. CUDA only.
constexpr int kLoraMaxGroup = 3;

// y += scaling * t B^T: one forward member (and ops/lora_down.h's forward epilogue); y (n, out), b (out, r).
struct LoraUpEpilogue {
  TensorView y, b;
  int64_t out = 0;
  float scaling = 1.f;
};
struct LoraUpPartials {
  TensorView dy, t, b;   // (n, out), (n, r), (out, r), in one dtype
  TensorView db;         // (out, r) f32: += scaling * sum, by the finishing pass
  TensorView workspace;  // lora_up_workspace_elems(n, out, r) f32
  int64_t out = 0;
  float scaling = 1.f;
};

void lora_up_forward_check(TensorView y, TensorView t, TensorView b, const LoraUpParams& p);
void lora_up_backward_check(TensorView dt, TensorView db, TensorView dy, TensorView t, TensorView b,
                            const LoraUpParams& p);

namespace cpu {
void lora_up_forward(TensorView y, TensorView t, TensorView b, const LoraUpParams& p);
void lora_up_backward(TensorView dt, TensorView db, TensorView dy, TensorView t, TensorView b, const LoraUpParams& p);
}  // namespace cpu

namespace cuda {
void lora_up_forward(TensorView y, TensorView t, TensorView b, const LoraUpParams& p, cudaStream_t stream);
void lora_up_backward(TensorView dt, TensorView db, TensorView dy, TensorView t, TensorView b, TensorView workspace,
                      const LoraUpParams& p, cudaStream_t stream);
// The forward for `count` members (1..kLoraMaxGroup) of n rows and rank r, member g reading t[g], one launch.
void lora_up_forward_group(const LoraUpEpilogue* members, const TensorView* t, int count, int64_t n, int64_t r,
                           cudaStream_t stream);
// The backward's first pass for `count` members (1..kLoraMaxGroup) of n rows and rank r, one launch.
void lora_up_backward_partials(const LoraUpPartials* members, int count, int64_t n, int64_t r, cudaStream_t stream);
}  // namespace cuda

inline void lora_up_forward(TensorView y, TensorView t, TensorView b, const LoraUpParams& p, Engine& eng) {
  if (on_cuda({y, t, b})) cuda::lora_up_forward(y, t, b, p, eng.stream());
  else cpu::lora_up_forward(y, t, b, p);
}
// `workspace`: lora_up_workspace_elems f32 on CUDA; ignored (may be undefined) on CPU.
inline void lora_up_backward(TensorView dt, TensorView db, TensorView dy, TensorView t, TensorView b,
                             TensorView workspace, const LoraUpParams& p, Engine& eng) {
  if (on_cuda({dt, db, dy, t, b})) cuda::lora_up_backward(dt, db, dy, t, b, workspace, p, eng.stream());
  else cpu::lora_up_backward(dt, db, dy, t, b, p);
}

}  // namespace ops
