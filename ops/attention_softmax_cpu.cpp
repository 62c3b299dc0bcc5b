// ops/attention_softmax_cpu.cpp: reference attention row op, plain loops in f64 with the act-dtype roundings
// of SPEC.md §1.4 (engine::round_to rounds exactly like the CUDA kernel's f32 -> act conversions).
// Backward derivation, per row, over allowed keys j (p_j = 0 elsewhere):
//   p = softmax(x):           dx_j = p_j (dp_j - sum_k p_k dp_k)
//   x = cap tanh(y / cap):    dx/dy = 1 - tanh^2(y / cap) = 1 - t^2
//   y = s * scale:            dy/ds = scale
#include <cmath>
#include <vector>

#include "ops/attention_softmax.h"

namespace ops {

void attention_softmax_check(TensorView probs, TensorView scores, TensorView key_mask,
                             const AttentionSoftmaxParams& p) {
  check_float(scores, "attention softmax scores");
  ENGINE_CHECK(probs.dtype == scores.dtype, "attention softmax: probs ", probs.str(), " must have scores' dtype ",
               scores.str());
  ENGINE_CHECK(p.batch >= 0 && p.heads >= 0 && p.seq >= 0 && p.window >= 0, "attention softmax: bad params B=",
               p.batch, " H=", p.heads, " T=", p.seq, " window=", p.window);
  const int64_t n = p.batch * p.heads * p.seq * p.seq;
  ENGINE_CHECK(scores.numel() == n && probs.numel() == n, "attention softmax: scores ", scores.str(), " / probs ",
               probs.str(), " do not hold B=", p.batch, " x H=", p.heads, " x T=", p.seq, " x T");
  ENGINE_CHECK(!key_mask.defined() || (key_mask.dtype == DType::kI32 && key_mask.numel() == p.batch * p.seq),
               "attention softmax: key_mask ", key_mask.str(), " must be i32 with B=", p.batch, " x T=", p.seq);
}

namespace cpu {
namespace {

struct RowInfo {
  int64_t b, i, lo;  // batch, query position, first key inside the window
};

RowInfo row_info(int64_t row, const AttentionSoftmaxParams& p) {
  const int64_t i = row % p.seq;
  return {row / (p.heads * p.seq), i, p.window > 0 ? std::max<int64_t>(0, i - p.window + 1) : 0};
}

bool allowed(const RowInfo& r, int64_t j, TensorView key_mask, const AttentionSoftmaxParams& p) {
  if (j < r.lo || j > r.i) return false;
  return !key_mask.defined() || engine::load_f64(key_mask.data, key_mask.dtype, r.b * p.seq + j) != 0;
}

// round(tanh(round(round(s * scale) / cap))): the tanh value t of the softcap, as the forward rounds it.
double softcap_tanh(DType dt, double s, const AttentionSoftmaxParams& p) {
  const double x = engine::round_to(dt, s * double(p.scale));
  return engine::round_to(dt, std::tanh(engine::round_to(dt, x / double(p.softcap))));
}

double capped_logit(DType dt, double s, const AttentionSoftmaxParams& p) {
  if (p.softcap <= 0.f) return engine::round_to(dt, s * double(p.scale));
  return engine::round_to(dt, softcap_tanh(dt, s, p) * double(p.softcap));
}

}  // namespace

void attention_softmax_forward(TensorView probs, TensorView scores, TensorView key_mask,
                               const AttentionSoftmaxParams& p) {
  attention_softmax_check(probs, scores, key_mask, p);
  const DType dt = scores.dtype;
  std::vector<double> x(p.seq);
  std::vector<char> ok(p.seq);
  for (int64_t row = 0; row < p.batch * p.heads * p.seq; ++row) {
    const RowInfo r = row_info(row, p);
    const int64_t base = row * p.seq;
    double mx = -INFINITY;
    for (int64_t j = 0; j < p.seq; ++j) {  // read the whole row first: probs may alias scores
      ok[j] = allowed(r, j, key_mask, p);
      if (ok[j]) x[j] = capped_logit(dt, engine::load_f64(scores.data, dt, base + j), p);
      if (ok[j]) mx = std::max(mx, x[j]);
    }
    double sum = 0;
    for (int64_t j = 0; j < p.seq; ++j)
      if (ok[j]) sum += (x[j] = std::exp(x[j] - mx));
    for (int64_t j = 0; j < p.seq; ++j)  // an empty row (sum = 0) stays all zero
      engine::store_f64(probs.data, probs.dtype, base + j, ok[j] ? x[j] / sum : 0.0);
  }
}

void attention_softmax_backward(TensorView dscores, TensorView probs, TensorView dprobs, TensorView scores,
                                TensorView key_mask, const AttentionSoftmaxParams& p) {
  attention_softmax_check(probs, scores, key_mask, p);
  ENGINE_CHECK(dscores.dtype == scores.dtype && dprobs.dtype == scores.dtype && dscores.numel() == scores.numel() &&
                   dprobs.numel() == scores.numel(),
               "attention softmax backward: dscores ", dscores.str(), " and dprobs ", dprobs.str(),
               " must match scores ", scores.str());
  const DType dt = scores.dtype;
  std::vector<double> pr(p.seq), dp(p.seq);
  std::vector<char> ok(p.seq);
  for (int64_t row = 0; row < p.batch * p.heads * p.seq; ++row) {
    const RowInfo r = row_info(row, p);
    const int64_t base = row * p.seq;
    double dot = 0;
    for (int64_t j = 0; j < p.seq; ++j) {  // read first: dscores may alias dprobs
      ok[j] = allowed(r, j, key_mask, p);
      if (!ok[j]) continue;
      pr[j] = engine::load_f64(probs.data, dt, base + j);
      dp[j] = engine::load_f64(dprobs.data, dt, base + j);
      dot += pr[j] * dp[j];
    }
    for (int64_t j = 0; j < p.seq; ++j) {
      double ds = 0;
      if (ok[j]) {
        ds = pr[j] * (dp[j] - dot);
        if (p.softcap > 0.f) {
          const double t = softcap_tanh(dt, engine::load_f64(scores.data, dt, base + j), p);
          ds *= 1.0 - t * t;
        }
        ds *= double(p.scale);
      }
      engine::store_f64(dscores.data, dscores.dtype, base + j, ds);
    }
  }
}

}  // namespace cpu
}  // namespace ops
