// autograd/functions.h: one differentiable function per op. Each runs the op's forward now and records
// its backward on the tape (only when an input needs a gradient). Shapes follow the ops' contracts;
// tokens are rows: activations are (N, C) with N = B*T.
#pragma once
#include <functional>
#include <vector>

#include "autograd/tape.h"
#include "ops/attention.h"
#include "ops/attention_rope.h"
#include "ops/dropout.h"
#include "ops/embedding.h"
#include "ops/geglu.h"
#include "ops/nf4.h"
#include "ops/residual_rmsnorm.h"
#include "ops/rmsnorm.h"
#include "ops/rope.h"

namespace autograd {

// h = table[ids] * scale (ids: (N) i32 constant; table (V, D): constant, or a param when trainable).
Var embedding(Tape& tape, const Var& ids, const Var& table, float scale, DType out_dtype);
// Gemma RMSNorm; w (C) f32 (constant, or a param with an f32 grad).
Var rmsnorm(Tape& tape, const Var& x, const Var& w, float eps);
// y = x @ W^T (nn.Linear without bias). x (N, in); W (out, in) in x's dtype. dW (f32) when W is a param.
Var linear(Tape& tape, const Var& x, const Var& w);
// The frozen base of a linear layer: a dense (out, in) weight in x's dtype, or NF4 storage that forward and
// backward dequantize into a DequantStage's workspace (SPEC.md §1.8).
class DequantStage;
struct FrozenLinear {
  TensorView dense;        // defined: dense base; else `nf4`
  ops::Nf4Weight nf4;      // views (no ownership): safe to capture by value
  DequantStage* stage = nullptr;  // NF4: where it is dequantized (outlives the tape)
  int64_t out = 0, in = 0;
};

// The 16-bit workspace that NF4 base weights are dequantized into, shared by all layers, and the record of
// what it holds: one group of linears that share an input (lora_linear_group; q/k/v, gate/up, or one linear)
// at a time, from its start, so one group's weights are resident in 16-bit form at a time. On CUDA:
//   - a group is dequantized on the engine's side stream 1 when there is other work to overlap: prefetch(g)
//     (the caller's hint for the group needed next, issued after the current group's GEMMs), or members 1..
//     of a group that was not prefetched, beside member 0's dequantize and GEMM on the compute stream;
//   - side stream 1 starts after the compute stream's work so far (the earlier readers of the workspace), and
//     the compute stream joins it before it reads or writes the workspace again.
// The record is host state in program order: a hint that turns out wrong costs a dequantize, never a wrong
// weight. Members of a resident group are handed out from it in any combination (a linear that runs alone, as
// at ranks the grouped branch does not take, uses its group's prefetched slice). A group that does not fit
// dequantizes each weight right before its GEMM; the CPU backend prefetches nothing.
class DequantStage {
 public:
  DequantStage(TensorView ws, Engine& eng) : ws_(ws), eng_(eng) {}
  DequantStage(const DequantStage&) = delete;
  DequantStage& operator=(const DequantStage&) = delete;
  ~DequantStage();
  void prefetch(const std::vector<FrozenLinear>& group);
  // Before a group's GEMMs: begin(group), then weight(g) right before member g's GEMM.
  void begin(const std::vector<FrozenLinear>& group);
  TensorView weight(size_t g);
  DType dtype() const { return ws_.dtype; }

 private:
  bool fits(const std::vector<FrozenLinear>& group) const;
  // Each member's slice when all of them are resident, else empty.
  std::vector<size_t> slots(const std::vector<FrozenLinear>& group) const;
  TensorView slice(size_t g) const;
  void join();
  TensorView ws_;
  Engine& eng_;
  std::vector<FrozenLinear> group_;   // the workspace's layout: the group dequantized last (or begun, if sequential)
  std::vector<const void*> resident_; // packed NF4 data of the weights in the workspace, in slice order
  std::vector<size_t> slot_;          // member g of the group begun last is slice slot_[g] of group_
  bool pending_ = false;              // side stream 1 writes the workspace, not joined yet
  bool member0_ = false;              // slice 0 still to dequantize on the compute stream
  bool sequential_ = false;           // the group begun last does not fit: each weight at the workspace's start
};

// lora_linear takes the fused kernels (ops/lora_down.h, ops/lora_up.h) up to this rank, on both backends. On
// an H200 they beat dropout + cuBLASLt at r = 4 and lose at r = 16 (bench/NOTES.md), so larger ranks keep the
// GEMM path until their kernels are faster.
// LoraBranch::fuse_max_rank overrides it (bench_train --lora-fuse-max-rank measures other choices).
constexpr int64_t kLoraFuseMaxRank = 4;
// A LoRA branch: master A (r, in), B (out, r) and their gradients (+=), f32 (f64 for CPU checks).
struct LoraBranch {
  TensorView A, B, dA, dB;
  TensorView Ac, Bc;  // A and B in x's dtype: the model casts all adapters once per forward
  float scaling = 1.f;
  float dropout = 0.f;
  uint64_t seed = 0, stream = 0, offset = 0;  // Philox key of the dropout mask
  int64_t fuse_max_rank = kLoraFuseMaxRank;  // lora_linear's fused kernels up to this rank (0: never)
};
// y = x W^T + scaling * (dropout(x) A^T) B^T (SPEC.md §4.1). The GEMMs take A and B in x's dtype (Ac, Bc);
// the LoRA GEMM accumulates into y (beta = 1), so y is rounded once where peft rounds B's output, the
// scaling and the sum separately (a documented, bounded difference). No gradient for the base weight; dA,
// dB accumulate; dropout masks are regenerated in backward. When lora_fuses_down(in, r), the dropout is fused
// into the down-projection (forward) and into the dA / dx pass (backward): x' is never stored; when
// lora_fuses_up(out, r), B's product is added to y in one pass and dt / dB come from one pass over dy; with
// both (and r = 4 or 16: ops::lora_branch_fusable), the branch is ops::lora_branch (below).
Var lora_linear(Tape& tape, const Var& x, const FrozenLinear& base, const LoraBranch* lora);
// Linear layers that share their input (q/k/v, gate/up; at most ops::kLoraMaxGroup): y_g = lora_linear(x,
// bases[g], loras[g]). When every member's branch fuses in one pass (r = 4 or 16, within fuse_max_rank) with
// one rank, dropout key and dtype, the branches run as one ops::lora_branch group (CUDA: the down-projections
// beside the base GEMMs, then one up-projection launch; three launches backward) and one node backpropagates
// the group: dx takes the members' base products in
// member order, then their branches'. Otherwise each member is its own lora_linear. lora_linear itself is a
// group of one. CUDA: the base products run beside the branches' first passes (Engine side stream 0); NF4
// weights come from the DequantStage (side stream 1).
// `next` / `prev`: the group that runs after this one in forward / before it (hints for the stage's prefetch:
// after this group's forward GEMMs, `next` is dequantized ahead; after its backward GEMMs, `prev`).
std::vector<Var> lora_linear_group(Tape& tape, const Var& x, const std::vector<FrozenLinear>& bases,
                                   const std::vector<const LoraBranch*>& loras,
                                   const std::vector<FrozenLinear>& next = {},
                                   const std::vector<FrozenLinear>& prev = {});
bool lora_fuses_down(int64_t in, int64_t r, int64_t max_rank = kLoraFuseMaxRank);
bool lora_fuses_up(int64_t out, int64_t r, int64_t max_rank = kLoraFuseMaxRank);
// out = a + b (residual add, one rounding).
Var add(Tape& tape, const Var& a, const Var& b);
// A sublayer's exit and the next one's entry (ops/residual_rmsnorm.h): sum = h + rmsnorm(o, w_branch), and,
// when w_next is defined, normed = rmsnorm(sum, w_next). One node and one kernel each way where the op fuses
// (frozen norm weights; on CUDA, rows it takes); otherwise rmsnorm + add (+ rmsnorm), the same values.
struct ResidualNorm {
  Var sum, normed;
};
ResidualNorm residual_rmsnorm(Tape& tape, const Var& h, const Var& o, const Var& w_branch, const Var& w_next,
                              float eps);
// out = alpha * x
Var scale(Tape& tape, const Var& x, float alpha);
// RoPE on x viewed as (N, heads, head_dim); positions (N) i32 constant.
Var rope(Tape& tape, const Var& x, const Var& positions, int64_t heads, int64_t head_dim, float theta);
// RoPE on q and k, then eager attention: q (N, H*hd), k/v (N, KV*hd) as the projections give them; positions
// (N) i32 constant; key_mask (B, T) i32 constant or undefined. The node keeps q, k, v head-major and RoPE'd
// (ops/attention_rope.h: one launch each way instead of two RoPEs and six permutes). keep_probs = false: the
// (B, H, T, T) probabilities are freed after the forward and recomputed in backward (one more row pass; the
// same bits where the backward runs in one chunk: ops/attention.h).
Var attention(Tape& tape, const Var& q, const Var& k, const Var& v, const Var& positions, const Var& key_mask,
              const ops::AttentionParams& p, float rope_theta, bool keep_probs = true);
// gelu_tanh(gate) * up.
Var geglu(Tape& tape, const Var& gate, const Var& up);
// Dropout with a Philox mask regenerated in backward (p = 0: returns x itself).
Var dropout(Tape& tape, const Var& x, float p, uint64_t seed, uint64_t stream, uint64_t offset);

// Gradient checkpointing: runs fn(tape, x) without saving activations; in backward, runs it again on a
// nested tape and backpropagates through it. fn must be deterministic (dropout keys are fixed), so the
// gradients equal the uncheckpointed ones.
Var checkpoint(Tape& tape, const Var& x, std::function<Var(Tape&, const Var&)> fn);

}  // namespace autograd
