// ops/lora_down.h: the LoRA down-projection with its input dropout fused (SPEC.md §4.1: lora_A(dropout(x))).
//   Forward:  xd[m,k] = keep(m,k) ? round_dt(x[m,k] * scale) : 0,   scale = 1/(1-p) in f32 (as ops/dropout.h)
//             t[m,j]  = round_dt( sum_k xd[m,k] * a[j,k] )              f32 accumulation (f64 on CPU)
//   keep(m,k) = dropout_keep(philox_u16(seed, stream, offset + m*in + k), p): exactly ops::dropout's mask on x viewed
//   flat (row-major), so t equals matmul(dropout_forward(x), a^T). p = 0: xd = x (no mask).
//   Backward (one pass over x and dx, the mask regenerated once per element, nothing saved):
//     dA[j,k] += sum_m dt[m,j] * xd[m,k]                                always accumulates (parameter gradient)
//     v[m,k]   = keep(m,k) ? round_dt(round_dt(sum_j dt[m,j] * a[j,k]) * scale) : 0
//                (= dropout_backward(round_dt(dt @ a)) into a tensor of x's dtype)
//     dx       = v, or round_dt(dx + v) with Accum::kAdd; skipped when dx is undefined.
//   v is rounded before the add, as in torch, where dropout's backward returns a tensor of x's dtype that
//   autograd then adds to dx; lora_linear's unfused path (r > 4) adds inside dropout_backward in f32, one
//   rounding fewer. Products and sums are f32 before each rounding (the CPU reference rounds them to f32 too).
//   Shapes: x, dx (n, in); a (r, in); t, dt (n, r); dA (r, in); lora_down_fusable(in, r): 1 <= r <= 16 and
//   in % 8 == 0 (callers keep dropout + GEMMs otherwise, on both backends, so CPU and CUDA take one path).
//   dtypes: x, a, t, dt, dx alike: f32/f16/bf16 (f64 on CPU); dA f32 (f32 or f64 on CPU).
//   CUDA: x, a, dx 8-element aligned (16 bytes of a 16-bit dtype, 32 of f32): tensors from the engine are.
//   round_dt = rounding to x's dtype; each sum (f32 on CUDA, f64 on CPU) is rounded once, where shown.
//   Determinism: no float atomics. The CUDA forward sums each row of t within one block (a lane's vectors in
//   order, then shuffles, then lora_down_fwd_warps_per_row(n, in) warps in warp order). The CUDA backward
//   takes `workspace` (lora_down_workspace_elems f32, from the caller) and sums dA over lora_down_slabs(n)
//   row slabs in slab order. Bitwise reproducible run to run; the split depends on the shape only.
//   Forward epilogue (optional, `up`): y += scaling * t B^T, i.e. ops/lora_up.h's forward on the t just
//   computed, with the same bits, so that a LoRA branch's forward is one launch: on CUDA each block adds its
//   rows' t B^T to y right after summing them (lora_down_fuses_up(out, r): r = 4 or 16, out % 8 == 0; y and b
//   8-element aligned); the CPU runs lora_up_forward after the down-projection.
//   Groups (CUDA; ops/lora_branch.h uses them): up to kLoraMaxGroup adapters that share x (q/k/v, gate/up) in one
//   launch per pass, each with its own A, t, dA, Philox stream and epilogue, and the same n, in, r, p, seed and
//   offset. A block runs the members one after another, so each member's results have the bits of its own
//   call, and dx takes the members' v in member order (as successive calls with Accum::kAdd). The group
//   backward can take each member's dt as lora_up_backward_partials' sums and then finishes lora_up's dB in
//   its reduce: a branch backward in three launches (ops/lora_up.h).
// Tests: tests/ops/lora_down_cpu_test.cpp, lora_down_gpu_test.cpp   Bench: bench/ops/lora_down_bench.cpp
#pragma once
#include "ops/common.h"
#include "ops/dropout.h"
#include "ops/lora_up.h"

namespace ops {

constexpr int64_t kLoraDownMaxRank = 16;

struct LoraDownParams {
  int64_t n = 0;   // rows (tokens)
  int64_t in = 0;  // input features
  int64_t r = 0;   // LoRA rank
  float p = 0.f;   // dropout probability, 0 <= p < 1
  uint64_t seed = 0, stream = 0, offset = 0;  // Philox key and element offset of x[0,0] (ops::DropoutParams)
};

inline bool lora_down_fusable(int64_t in, int64_t r) { return r >= 1 && r <= kLoraDownMaxRank && in % 8 == 0; }

// The forward's optional y += scaling * t B^T is an ops::LoraUpEpilogue (ops/lora_up.h), in x's dtype.
inline bool lora_down_fuses_up(int64_t out, int64_t r) { return (r == 4 || r == 16) && out % 8 == 0; }

// The params of the dropout mask this op fuses (n*in elements of x viewed flat).
inline DropoutParams lora_down_dropout(const LoraDownParams& p) {
  return DropoutParams{p.n * p.in, p.p, p.seed, p.stream, p.offset};
}

// The CUDA work split. Forward: warps per row (1, 2, 4 or 8 of a block's 8), more when there are few rows,
// so that ~512 blocks run. Backward: row slabs (~32 rows each, at most 64) x 256-column chunks, and the f32
// workspace of the slabs' dA partials, slabs * r * in.
int64_t lora_down_fwd_warps_per_row(int64_t n, int64_t in);
int64_t lora_down_slabs(int64_t n);
int64_t lora_down_workspace_elems(int64_t n, int64_t in, int64_t r);

// One adapter of a group sharing x (CUDA group entry points below).
struct LoraDownMember {
  TensorView a;         // (r, in)
  TensorView t;         // forward: t (n, r), written; backward: dt (n, r), read, unless `dt_from` is set
  TensorView da;        // backward: (r, in) f32, +=
  uint64_t stream = 0;  // this adapter's Philox stream (LoraDownParams::stream is not read)
  LoraUpEpilogue up;    // forward: y += s t B^T when up.y is defined (all members or none)
  const LoraUpPartials* dt_from = nullptr;  // backward: dt and dB from lora_up_backward_partials (all or none)
};

void lora_down_forward_check(TensorView t, TensorView x, TensorView a, const LoraDownParams& p,
                             const LoraUpEpilogue* up = nullptr);
void lora_down_backward_check(TensorView da, TensorView dx, TensorView dt, TensorView x, TensorView a,
                              const LoraDownParams& p);

namespace cpu {
void lora_down_forward(TensorView t, TensorView x, TensorView a, const LoraDownParams& p,
                       const LoraUpEpilogue* up = nullptr);
void lora_down_backward(TensorView da, TensorView dx, Accum dx_mode, TensorView dt, TensorView x, TensorView a,
                        const LoraDownParams& p);
}  // namespace cpu

namespace cuda {
void lora_down_forward(TensorView t, TensorView x, TensorView a, const LoraDownParams& p, cudaStream_t stream,
                       const LoraUpEpilogue* up = nullptr);
void lora_down_backward(TensorView da, TensorView dx, Accum dx_mode, TensorView dt, TensorView x, TensorView a,
                        TensorView workspace, const LoraDownParams& p, cudaStream_t stream);
// `count` (1..kLoraMaxGroup) members sharing x: one launch. The backward's workspace holds
// count * lora_down_workspace_elems f32; it ends with one reduce launch for every member's dA (and dB).
void lora_down_forward_group(TensorView x, const LoraDownMember* members, int count, const LoraDownParams& p,
                             cudaStream_t stream);
void lora_down_backward_group(TensorView dx, Accum dx_mode, TensorView x, const LoraDownMember* members, int count,
                              TensorView workspace, const LoraDownParams& p, cudaStream_t stream);
}  // namespace cuda

inline void lora_down_forward(TensorView t, TensorView x, TensorView a, const LoraDownParams& p, Engine& eng,
                              const LoraUpEpilogue* up = nullptr) {
  if (on_cuda({t, x, a})) cuda::lora_down_forward(t, x, a, p, eng.stream(), up);
  else cpu::lora_down_forward(t, x, a, p, up);
}
// `workspace`: lora_down_workspace_elems f32 on CUDA; ignored (may be undefined) on CPU.
inline void lora_down_backward(TensorView da, TensorView dx, Accum dx_mode, TensorView dt, TensorView x,
                               TensorView a, TensorView workspace, const LoraDownParams& p, Engine& eng) {
  if (on_cuda({da, dx, dt, x, a})) cuda::lora_down_backward(da, dx, dx_mode, dt, x, a, workspace, p, eng.stream());
  else cpu::lora_down_backward(da, dx, dx_mode, dt, x, a, p);
}

}  // namespace ops
