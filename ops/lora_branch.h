// ops/lora_branch.h: the LoRA branches of up to kLoraMaxGroup adapters that share their input x (SPEC.md §4.1;
// q/k/v read one normed hidden state, gate/up another). For each member g, in member order:
//   Forward:  t_g  = lora_down(x; A_g, the dropout mask of stream_g)     (ops/lora_down.h's forward)
//             y_g += s_g t_g B_g^T                                      (ops/lora_up.h's forward; y_g holds the
//                                                                        base output)
//   Backward: dt_g = round(s_g dy_g B_g), dB_g += s_g dy_g^T t_g         (ops/lora_up.h's backward)
//             dA_g += dt_g^T xd_g, dx (= or +=) v_g                      (ops/lora_down.h's backward)
//   dx: the first member takes dx_mode, the later ones add, each add rounded: dx = ((dx + v_0) + v_1) + v_2.
//   Exactly the per-member calls of those ops: the CPU backend makes them; CUDA gives the same bits in one
//   launch forward and three backward for the whole group (lora_up's first pass for every member; lora_down's
//   with each dt summed from lora_up's partials; one reduce for every dA and dB), where per-member calls take
//   one forward and four backward launches each.
//   Members share n, in, r (lora_branch_fusable: lora_down_fusable(in, r) and lora_down_fuses_up(out, r), so
//   r = 4 or 16), the dropout p, seed and offset, and x's dtype; each has its own A, B, stream and scaling.
//   Shapes: x, dx (n, in); a (r, in); b (out, r); y, dy (n, out); t (n, r); da (r, in), db (out, r) f32 (f32 or
//   f64 on CPU), both accumulate. dx undefined: no input gradient.
//   CUDA: the backward takes its f32 workspace from the engine's caching allocator. No atomics: bitwise
//   reproducible.
//   `overlap` (optional; on the CPU it runs first): the caller's work that can run beside the branch's first
//   pass, which then runs on the engine's side stream (Engine::fork / join). Forward: the base products into
//   the members' y, beside the down-projections (CUDA: the down-projections, then one up-projection launch
//   for the group after the join; without `overlap`, one fused launch; the same bits either way). Backward:
//   the base products dy W into dx, beside lora_up's first pass; it must not write the members' dy, t, b or
//   db, and dx_mode is the mode after it.
// Tests: tests/ops/lora_branch_cpu_test.cpp, lora_branch_gpu_test.cpp   Bench: bench/ops/lora_branch_bench.cpp
#pragma once
#include <functional>
#include <vector>

#include "ops/common.h"
#include "ops/lora_down.h"
#include "ops/lora_up.h"

namespace ops {

struct LoraBranchMember {
  TensorView a, b;    // A (r, in), B (out, r), in x's dtype
  TensorView y;       // forward: the base output (n, out), +=
  TensorView t;       // (n, r): the forward writes it, the backward reads it
  TensorView dy;      // backward: (n, out)
  TensorView da, db;  // backward: +=
  int64_t out = 0;
  float scaling = 1.f;
  uint64_t stream = 0;  // Philox stream of this member's dropout mask (LoraDownParams::stream is not read)
};

inline bool lora_branch_fusable(int64_t in, int64_t out, int64_t r) {
  return lora_down_fusable(in, r) && lora_down_fuses_up(out, r);
}

// `p`: n, in, r, the dropout p, seed and offset shared by the members.
void lora_branch_forward(TensorView x, const std::vector<LoraBranchMember>& members, const LoraDownParams& p,
                         Engine& eng, const std::function<void()>& overlap = {});
void lora_branch_backward(TensorView dx, Accum dx_mode, TensorView x, const std::vector<LoraBranchMember>& members,
                          const LoraDownParams& p, Engine& eng, const std::function<void()>& overlap = {});

}  // namespace ops
