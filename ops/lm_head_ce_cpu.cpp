// ops/lm_head_ce_cpu.cpp: reference LM head + softcap + CE in f64, rounding to the act dtype where HF
// rounds (SPEC.md §1.6, §7.3). Derivation of the backward, per row with target y (x = softcapped logits):
//   loss = logsumexp(x) - x_y               d loss / d x_j = softmax_j - [j == y]
//   x = cap * tanh(inv_cap * l)             d x / d l = cap * inv_cap * (1 - t^2), t = tanh(inv_cap * l)
//   l_j = h . E_j                           d loss / d h = sum_j dl_j E_j
// Chunking-free: rows are independent, so the block of rows held at once only bounds memory and never
// changes a result; every sum runs in the same order as ops::cpu::matmul's.
#include <algorithm>
#include <cmath>
#include <vector>

#include "ops/lm_head_ce.h"

namespace ops {
namespace cpu {

void lm_head_ce(TensorView loss_sum, TensorView n_valid, TensorView dhidden, Accum dh_mode, TensorView dtable,
                TensorView hidden,
                TensorView table, TensorView labels, const LmHeadCeParams& p) {
  lm_head_ce_check(loss_sum, n_valid, dhidden, dtable, hidden, table, labels, p);
  const DType dt = hidden.dtype;
  const int64_t N = p.rows, D = p.dim, V = p.vocab;
  const bool cap = p.softcap > 0.f;
  const double cap_v = p.softcap, inv_cap = double(1.f / p.softcap);  // f32 reciprocal, as torch's CUDA div
  for (int64_t i = 0; i < N; ++i) {  // before any output is written
    const int64_t y = int64_t(engine::load_f64(labels.data, DType::kI32, i));
    ENGINE_CHECK(y == kIgnoreIndex || (0 <= y && y < V), "lm_head_ce: label ", y, " at row ", i, " is neither ",
                 kIgnoreIndex, " nor in [0, ", V, ")");
  }
  // kRows rows at a time: their logit accumulators stay in registers and each element of E is converted
  // once per block; the dhidden sums run over k-tiles of kTile columns that stay in L1.
  constexpr int64_t kRows = 32, kTile = 256;
  std::vector<double> e(D), ht(D * kRows), x(kRows * V), slope(V), dh(kRows * kTile);
  double loss = 0;
  int64_t valid = 0;
  for (int64_t r0 = 0; r0 < N; r0 += kRows) {
    const int64_t nb = std::min(kRows, N - r0);
    std::fill(ht.begin(), ht.end(), 0.0);  // hidden block transposed (D, kRows); rows past nb stay zero
    for (int64_t i = 0; i < nb; ++i)
      for (int64_t k = 0; k < D; ++k) ht[k * kRows + i] = engine::load_f64(hidden.data, dt, (r0 + i) * D + k);
    // l = rnd(h @ E^T): the GEMM output in the act dtype.
    for (int64_t j = 0; j < V; ++j) {
      for (int64_t k = 0; k < D; ++k) e[k] = engine::load_f64(table.data, dt, j * D + k);
      double acc[kRows] = {};
      for (int64_t k = 0; k < D; ++k)
        for (int64_t i = 0; i < kRows; ++i) acc[i] += ht[k * kRows + i] * e[k];
      for (int64_t i = 0; i < nb; ++i) x[i * V + j] = engine::round_to(dt, acc[i]);
    }
    for (int64_t i = 0; i < nb; ++i) {
      double* xi = &x[i * V];  // (V): logits, then dlogits
      const int64_t y = int64_t(engine::load_f64(labels.data, DType::kI32, r0 + i));
      if (y == kIgnoreIndex) {
        std::fill(xi, xi + V, 0.0);
        continue;
      }
      for (int64_t j = 0; j < V; ++j) {
        if (cap) {  // HF: (l / cap) -> tanh -> (* cap), each rounded to the act dtype
          const double t = engine::round_to(dt, std::tanh(engine::round_to(dt, xi[j] * inv_cap)));
          xi[j] = engine::round_to(dt, t * cap_v);
          slope[j] = cap_v * inv_cap * (1.0 - t * t);
        } else {
          slope[j] = 1.0;
        }
      }
      const double m = *std::max_element(xi, xi + V);
      double s = 0;
      for (int64_t j = 0; j < V; ++j) s += std::exp(xi[j] - m);
      const double lse = m + std::log(s);
      loss += lse - xi[y];
      ++valid;
      for (int64_t j = 0; j < V; ++j)
        xi[j] = engine::round_to(dt, (std::exp(xi[j] - lse) - (j == y ? 1.0 : 0.0)) * p.grad_scale * slope[j]);
    }
    if (dtable.defined()) {  // dE[j, :] += sum_i dlogits[i, j] * h[i, :]
      for (int64_t j = 0; j < V; ++j)
        for (int64_t k = 0; k < D; ++k) {
          double acc = 0;
          for (int64_t i = 0; i < nb; ++i) acc += x[i * V + j] * ht[k * kRows + i];
          const int64_t idx = j * D + k;
          engine::store_f64(dtable.data, dtable.dtype, idx, engine::load_f64(dtable.data, dtable.dtype, idx) + acc);
        }
    }
    if (!dhidden.defined()) continue;
    // dh = dlogits @ E, summed over j in order like ops::cpu::matmul; rounded once (with dhidden when adding).
    for (int64_t k0 = 0; k0 < D; k0 += kTile) {
      const int64_t kt = std::min(kTile, D - k0);
      std::fill(dh.begin(), dh.end(), 0.0);
      for (int64_t j = 0; j < V; ++j) {
        for (int64_t k = 0; k < kt; ++k) e[k] = engine::load_f64(table.data, dt, j * D + k0 + k);
        for (int64_t i = 0; i < nb; ++i) {
          const double g = x[i * V + j];
          double* dhi = &dh[i * kTile];
          for (int64_t k = 0; k < kt; ++k) dhi[k] += g * e[k];
        }
      }
      for (int64_t i = 0; i < nb; ++i)
        for (int64_t k = 0; k < kt; ++k) {
          const int64_t idx = (r0 + i) * D + k0 + k;
          double v = dh[i * kTile + k];
          if (dh_mode == Accum::kAdd) v += engine::load_f64(dhidden.data, dhidden.dtype, idx);
          engine::store_f64(dhidden.data, dhidden.dtype, idx, v);
        }
    }
  }
  engine::store_f64(loss_sum.data, loss_sum.dtype, 0, engine::load_f64(loss_sum.data, loss_sum.dtype, 0) + loss);
  if (n_valid.defined())
    engine::store_f64(n_valid.data, DType::kI32, 0, engine::load_f64(n_valid.data, DType::kI32, 0) + double(valid));
}

}  // namespace cpu
}  // namespace ops
