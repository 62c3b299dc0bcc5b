// ops/lm_head_ce.cpp: preconditions, workspace layout, and the CUDA composite: per chunk of tokens, two
// cuBLASLt GEMMs around the row kernel of lm_head_ce.cu (SPEC.md §1.6, §1.7).
#include <algorithm>

#include "ops/lm_head_ce.h"
#include "ops/matmul.h"

namespace ops {

void lm_head_ce_check(TensorView loss_sum, TensorView n_valid, TensorView dhidden, TensorView dtable,
                      TensorView hidden, TensorView table, TensorView labels, const LmHeadCeParams& p) {
  check_float(hidden, "lm_head_ce hidden");
  ENGINE_CHECK(p.rows >= 0 && p.dim > 0 && p.vocab > 0 && p.chunk_rows > 0, "lm_head_ce: bad sizes rows=", p.rows,
               " dim=", p.dim, " vocab=", p.vocab, " chunk_rows=", p.chunk_rows);
  ENGINE_CHECK(hidden.numel() == p.rows * p.dim, "lm_head_ce: hidden ", hidden.str(), " does not hold rows=", p.rows,
               " x dim=", p.dim);
  ENGINE_CHECK(table.dtype == hidden.dtype && table.numel() == p.vocab * p.dim, "lm_head_ce: table ", table.str(),
               " must be ", engine::dtype_name(hidden.dtype), " (vocab=", p.vocab, ", dim=", p.dim, ")");
  ENGINE_CHECK(labels.dtype == DType::kI32 && labels.numel() == p.rows, "lm_head_ce: labels ", labels.str(),
               " must be i32 with rows=", p.rows, " elements");
  ENGINE_CHECK(loss_sum.defined() && loss_sum.numel() == 1 &&
                   (loss_sum.dtype == DType::kF32 || loss_sum.dtype == DType::kF64),
               "lm_head_ce: loss_sum ", loss_sum.str(), " must be one f32");
  ENGINE_CHECK(!n_valid.defined() || (n_valid.dtype == DType::kI32 && n_valid.numel() == 1), "lm_head_ce: n_valid ",
               n_valid.str(), " must be one i32");
  ENGINE_CHECK(!dhidden.defined() || (dhidden.dtype == hidden.dtype && dhidden.numel() == hidden.numel()),
               "lm_head_ce: dhidden ", dhidden.str(), " must match hidden ", hidden.str());
  ENGINE_CHECK(!dtable.defined() || ((dtable.dtype == DType::kF32 || dtable.dtype == DType::kF64) &&
                                     dtable.numel() == p.vocab * p.dim),
               "lm_head_ce: dtable ", dtable.str(), " must be f32 (vocab=", p.vocab, ", dim=", p.dim, ")");
}

namespace {
constexpr size_t kAlign = 256;
size_t logits_bytes(const LmHeadCeParams& p, DType act) {
  const size_t b = size_t(std::min(p.chunk_rows, p.rows)) * size_t(p.vocab) * engine::dtype_size(act);
  return (b + kAlign - 1) / kAlign * kAlign;
}
}  // namespace

size_t lm_head_ce_workspace_bytes(const LmHeadCeParams& p, DType act) {
  return logits_bytes(p, act) + size_t(std::min(p.chunk_rows, p.rows)) * sizeof(float);
}

namespace cuda {

void lm_head_ce(TensorView loss_sum, TensorView n_valid, TensorView dhidden, Accum dh_mode, TensorView dtable,
                TensorView hidden,
                TensorView table, TensorView labels, TensorView workspace, const LmHeadCeParams& p,
                engine::CublasLt& blas, cudaStream_t stream) {
  lm_head_ce_check(loss_sum, n_valid, dhidden, dtable, hidden, table, labels, p);
  ENGINE_CHECK(hidden.dtype != DType::kF64 && loss_sum.dtype == DType::kF32, "lm_head_ce (cuda): hidden ",
               hidden.str(), " must be f32/f16/bf16 and loss_sum ", loss_sum.str(), " f32");
  if (p.rows == 0) return;
  const size_t ws_bytes = lm_head_ce_workspace_bytes(p, hidden.dtype);
  ENGINE_CHECK(workspace.is_cuda() && workspace.nbytes() >= ws_bytes, "lm_head_ce: workspace ", workspace.str(),
               " must hold ", ws_bytes, " bytes on the device");
  const int64_t N = p.rows, D = p.dim, V = p.vocab, chunk = std::min(p.chunk_rows, p.rows);
  char* ws = static_cast<char*>(workspace.data);
  const TensorView logits{ws, hidden.dtype, {chunk, V}, Device::kCUDA};  // raw logits, then dlogits
  const TensorView row_loss{ws + logits_bytes(p, hidden.dtype), DType::kF32, {chunk}, Device::kCUDA};
  const TensorView h = hidden.reshape({N, D}), e = table.reshape({V, D}), lab = labels.reshape({N});
  for (int64_t r0 = 0; r0 < N; r0 += chunk) {
    const int64_t r1 = std::min(N, r0 + chunk);
    const TensorView h_c = h.slice_rows(r0, r1), lg = logits.slice_rows(0, r1 - r0);
    matmul(lg, h_c, e, matmul_params(lg, h_c, e, false, true), blas, stream);  // (n, V) = h_c @ E^T
    lm_head_ce_rows(loss_sum, n_valid, row_loss.slice_rows(0, r1 - r0), lg, lab.slice_rows(r0, r1),
                    dhidden.defined() || dtable.defined(), p, stream);
    if (dtable.defined()) {  // dE (V, D) += dlogits^T (V, n) @ h_c (n, D)
      const TensorView de = dtable.reshape({V, D});
      matmul(de, lg, h_c, matmul_params(de, lg, h_c, true, false, 1.f, 1.f), blas, stream);
    }
    if (dhidden.defined()) {
      const TensorView dh_c = dhidden.reshape({N, D}).slice_rows(r0, r1);  // (n, D) = dlogits @ E
      matmul(dh_c, lg, e, matmul_params(dh_c, lg, e, false, false, 1.f, dh_mode == Accum::kAdd ? 1.f : 0.f), blas,
             stream);
    }
  }
}

}  // namespace cuda
}  // namespace ops
