// ops/lm_head_ce.h: tied LM head + final-logit softcap + cross-entropy, forward and backward fused
// (SPEC.md §1.6, §1.7, §5.2), chunked over tokens so the (N, V) logits never exist for the whole batch
// (the idea of Liger's fused-linear-CE and Apple's CCE: the loss is the last node, so its gradient scale is
// known before the forward runs and dlogits can overwrite the logits at once).
//   hidden: (N, D) act dtype (after the final norm)   table E: (V, D) act dtype (frozen tied embedding)
//   labels: (N) i32, ALREADY SHIFTED by the caller: labels[i] is the target of position i; -100 = ignored
//   act dtype: f32 / f16 / bf16 (f64 on CPU, for finite differences)
// Per token i with a label y (row math in f32 on CUDA, f64 on CPU; rnd() = round to the act dtype):
//   l = rnd(h_i . E_j)                                   the GEMM output in the act dtype, as HF's
//   a = rnd(l * inv_cap), t = rnd(tanh(a)), x = rnd(t*cap)   HF's softcap, three roundings; inv_cap =
//                                                        f32(1/cap): torch's CUDA `tensor / scalar` multiplies
//                                                        by the f32 reciprocal. softcap <= 0: x = l.
//   loss_i = logsumexp_j(x) - x_y                         f32 log-softmax, as F.cross_entropy on .float()
//   dlogit_j = rnd((softmax_j - [j == y]) * grad_scale * cap*inv_cap*(1 - t_j^2))   (ignored rows: 0)
//   dh_i = dlogit @ E
// Outputs:
//   loss_sum (scalar, f32; f64 also on CPU)  += sum of loss_i over non-ignored tokens (ACCUMULATES, so
//            micro-batches add up; the caller zeroes it and divides by N_total, SPEC.md §5.2).
//            Deterministic on CUDA (fixed-order reduction per chunk, no atomics).
//   n_valid  (scalar, i32, optional)           += number of non-ignored tokens.
//   dhidden  (N, D) act dtype, optional: grad_scale * d(loss_sum)/d(hidden); honours dh_mode (set or add).
//            The trainer passes grad_scale = loss_scale / N_total (SPEC.md §5.2, §5.3).
//   dtable   (V, D) f32 (f64 on CPU), optional: += grad_scale * d(loss_sum)/d(E) through the head
//            (dlogits^T @ hidden), ACCUMULATES. Only full fine-tuning of the tied embedding wants it; the
//            QLoRA head is frozen (SPEC.md §1.8) and passes an undefined view.
// Deliberate differences from HF: the backward rounds dlogits once (HF's autograd rounds after the CE
// backward and again in each softcap backward step); an out-of-range label (neither -100 nor in [0, V))
// throws on CPU and makes loss_sum NaN on CUDA (a host-side check would need a sync).
// CUDA: per chunk of chunk_rows tokens, logits = h_c @ E^T (ops::matmul, cuBLASLt), one row kernel (softcap,
// CE, dlogits in place), dh_c = dlogits @ E (ops::matmul). Scratch: lm_head_ce_workspace_bytes(); the
// Engine-level dispatch takes it from the engine's caching allocator.
// Tests: tests/ops/lm_head_ce_cpu_test.cpp, lm_head_ce_gpu_test.cpp   Bench: bench/ops/lm_head_ce_bench.cpp
#pragma once
#include "ops/common.h"

namespace ops {

struct LmHeadCeParams {
  int64_t rows = 0;           // N tokens
  int64_t dim = 0;            // D
  int64_t vocab = 0;          // V
  float softcap = 30.f;       // final_logit_softcapping; <= 0 disables
  int64_t chunk_rows = 2048;  // tokens per chunk on CUDA (workspace = chunk_rows * V act elements); at 1024
                              // the dX GEMM (K = V) runs far below peak (bench/ops/lm_head_ce_bench.cpp)
  float grad_scale = 1.f;     // multiplies d(loss_sum)/d(logits)
};

constexpr int32_t kIgnoreIndex = -100;

void lm_head_ce_check(TensorView loss_sum, TensorView n_valid, TensorView dhidden, TensorView dtable,
                      TensorView hidden, TensorView table, TensorView labels, const LmHeadCeParams& p);

// Bytes of CUDA scratch: one (min(chunk_rows, N), V) act-dtype logits buffer plus per-row f32 losses.
size_t lm_head_ce_workspace_bytes(const LmHeadCeParams& p, DType act);

namespace cpu {
void lm_head_ce(TensorView loss_sum, TensorView n_valid, TensorView dhidden, Accum dh_mode, TensorView dtable,
                TensorView hidden, TensorView table, TensorView labels, const LmHeadCeParams& p);
}  // namespace cpu

namespace cuda {
// The row kernel alone, for rows = logits.rows() tokens: reads raw logits (rows, V) and overwrites them with
// dlogits (when write_grad), writes row_loss (rows) f32 (0 for ignored rows), then adds the rows' losses
// and valid count to loss_sum / n_valid in a fixed order. Uses p.vocab, p.softcap, p.grad_scale.
void lm_head_ce_rows(TensorView loss_sum, TensorView n_valid, TensorView row_loss, TensorView logits,
                     TensorView labels, bool write_grad, const LmHeadCeParams& p, cudaStream_t stream);
// The whole op; workspace: at least lm_head_ce_workspace_bytes(p, hidden.dtype) bytes on the device.
void lm_head_ce(TensorView loss_sum, TensorView n_valid, TensorView dhidden, Accum dh_mode, TensorView dtable,
                TensorView hidden, TensorView table, TensorView labels, TensorView workspace, const LmHeadCeParams& p,
                engine::CublasLt& blas, cudaStream_t stream);
}  // namespace cuda

inline void lm_head_ce(TensorView loss_sum, TensorView n_valid, TensorView dhidden, Accum dh_mode,
                       TensorView dtable, TensorView hidden, TensorView table, TensorView labels, const LmHeadCeParams& p,
                       Engine& eng) {
  if (on_cuda({loss_sum, n_valid, dhidden, dtable, hidden, table, labels})) {
    // From the caching allocator: freed at return, reused by the next call in stream order.
    engine::Tensor ws = eng.empty({int64_t(lm_head_ce_workspace_bytes(p, hidden.dtype))}, DType::kU8);
    cuda::lm_head_ce(loss_sum, n_valid, dhidden, dh_mode, dtable, hidden, table, labels, ws, p, eng.blas(),
                     eng.stream());
  } else {
    cpu::lm_head_ce(loss_sum, n_valid, dhidden, dh_mode, dtable, hidden, table, labels, p);
  }
}

}  // namespace ops
