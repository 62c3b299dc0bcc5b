// ops/attention.cpp: the attention composite: layout permutes, strided-batched GEMMs over (b, kv) groups,
// and the fused row op. Head-major, the g query heads of kv head `kv` are rows [kv*g*T, (kv+1)*g*T) of one
// dense (B*H*T, hd) matrix, so every GEMM below is one call with uniform strides over B*KV groups.
#include "ops/attention.h"

#include "ops/attention_layout.h"
#include "ops/attention_softmax.h"
#include "ops/matmul.h"

namespace ops {
namespace {

engine::Tensor scratch(Engine& eng, engine::Device dev, Shape s, DType t) {
  return dev == Device::kCUDA ? eng.empty(s, t) : eng.empty_host(s, t);
}

AttentionSoftmaxParams softmax_params(const AttentionParams& p) {
  AttentionSoftmaxParams sp;
  sp.batch = p.batch; sp.heads = p.heads; sp.seq = p.seq;
  sp.scale = p.scale; sp.softcap = p.softcap; sp.window = p.window;
  return sp;
}

// C (g*T, n) per group = op(A) @ op(B), batch B*KV; strides in elements.
MatmulParams group_gemm(const AttentionParams& p, int64_t m, int64_t n, int64_t k, bool ta, bool tb,
                        int64_t sa, int64_t sb, int64_t sc) {
  MatmulParams mp;
  mp.m = m; mp.n = n; mp.k = k;
  mp.trans_a = ta; mp.trans_b = tb;
  mp.batch = p.batch * p.kv_heads;
  mp.stride_a = sa; mp.stride_b = sb; mp.stride_c = sc;
  return mp;
}

}  // namespace

void attention_check(TensorView out, TensorView probs, TensorView q, TensorView k, TensorView v,
                     TensorView key_mask, const AttentionParams& p) {
  check_float(q, "attention q");
  ENGINE_CHECK(p.batch > 0 && p.seq > 0 && p.heads > 0 && p.kv_heads > 0 && p.head_dim > 0 && p.window >= 0,
               "attention: bad params B=", p.batch, " T=", p.seq, " H=", p.heads, " KV=", p.kv_heads, " hd=",
               p.head_dim, " window=", p.window);
  ENGINE_CHECK(p.heads % p.kv_heads == 0, "attention: H=", p.heads, " is not a multiple of KV=", p.kv_heads);
  const int64_t nq = p.batch * p.seq * p.heads * p.head_dim, nkv = p.batch * p.seq * p.kv_heads * p.head_dim;
  for (const TensorView& t : {out, k, v, probs})
    ENGINE_CHECK(t.dtype == q.dtype, "attention: ", t.str(), " must have q's dtype ", q.str());
  ENGINE_CHECK(q.numel() == nq && out.numel() == nq, "attention: q ", q.str(), " / out ", out.str(),
               " must hold B*T=", p.batch * p.seq, " x H*hd=", p.heads * p.head_dim);
  ENGINE_CHECK(k.numel() == nkv && v.numel() == nkv, "attention: k ", k.str(), " / v ", v.str(),
               " must hold B*T=", p.batch * p.seq, " x KV*hd=", p.kv_heads * p.head_dim);
  ENGINE_CHECK(probs.numel() == p.batch * p.heads * p.seq * p.seq, "attention: probs ", probs.str(),
               " must hold B=", p.batch, " x H=", p.heads, " x T=", p.seq, " x T");
  ENGINE_CHECK(!key_mask.defined() || (key_mask.dtype == DType::kI32 && key_mask.numel() == p.batch * p.seq),
               "attention: key_mask ", key_mask.str(), " must be i32 with B=", p.batch, " x T=", p.seq);
}

void attention_forward(TensorView out, TensorView probs, TensorView q, TensorView k, TensorView v,
                       TensorView key_mask, const AttentionParams& p, Engine& eng) {
  attention_check(out, probs, q, k, v, key_mask, p);
  const engine::Device dev = engine::common_device({out, probs, q, k, v, key_mask});
  const int64_t B = p.batch, T = p.seq, H = p.heads, KV = p.kv_heads, hd = p.head_dim, g = H / KV;
  const DType dt = q.dtype;
  const AttentionLayoutParams lq{B, T, H, hd}, lkv{B, T, KV, hd};
  engine::Tensor qh = scratch(eng, dev, {B, H, T, hd}, dt), kh = scratch(eng, dev, {B, KV, T, hd}, dt),
                 vh = scratch(eng, dev, {B, KV, T, hd}, dt);
  attention_to_head_major(qh, q, lq, eng);
  attention_to_head_major(kh, k, lkv, eng);
  attention_to_head_major(vh, v, lkv, eng);
  // S = Q_g K^T into probs, then the row op in place.
  matmul(probs, qh, kh, group_gemm(p, g * T, T, hd, false, true, g * T * hd, T * hd, g * T * T), eng);
  attention_softmax_forward(probs, probs, key_mask, softmax_params(p), eng);
  // O = P V, head-major in qh's place (q is no longer needed), then token-major.
  matmul(qh, probs, vh, group_gemm(p, g * T, hd, T, false, false, g * T * T, T * hd, g * T * hd), eng);
  attention_to_token_major(out, qh, lq, eng);
}

void attention_backward(TensorView dq, TensorView dk, TensorView dv, TensorView dout, TensorView q, TensorView k,
                        TensorView v, TensorView probs, TensorView key_mask, const AttentionParams& p, Engine& eng) {
  const engine::Device dev = engine::common_device({dq, dk, dv, dout, q, k, v, probs, key_mask});
  const int64_t B = p.batch, T = p.seq, H = p.heads, KV = p.kv_heads, hd = p.head_dim, g = H / KV;
  const DType dt = q.dtype;
  engine::Tensor p_own;  // P recomputed below when the caller did not keep it
  if (!probs.defined()) {
    p_own = scratch(eng, dev, {B, H, T, T}, dt);
    probs = p_own;
  }
  attention_check(dout, probs, q, k, v, key_mask, p);
  ENGINE_CHECK(dq.dtype == q.dtype && dq.numel() == q.numel(), "attention: dq ", dq.str(), " must match q ", q.str());
  ENGINE_CHECK(dk.dtype == k.dtype && dk.numel() == k.numel(), "attention: dk ", dk.str(), " must match k ", k.str());
  ENGINE_CHECK(dv.dtype == v.dtype && dv.numel() == v.numel(), "attention: dv ", dv.str(), " must match v ", v.str());
  const AttentionLayoutParams lq{B, T, H, hd}, lkv{B, T, KV, hd};
  engine::Tensor qh = scratch(eng, dev, {B, H, T, hd}, dt), kh = scratch(eng, dev, {B, KV, T, hd}, dt),
                 vh = scratch(eng, dev, {B, KV, T, hd}, dt), doh = scratch(eng, dev, {B, H, T, hd}, dt);
  attention_to_head_major(qh, q, lq, eng);
  attention_to_head_major(kh, k, lkv, eng);
  attention_to_head_major(vh, v, lkv, eng);
  attention_to_head_major(doh, dout, lq, eng);
  const int64_t s_q = g * T * hd, s_kv = T * hd, s_tt = g * T * T;  // per-group strides
  engine::Tensor s = scratch(eng, dev, {B, H, T, T}, dt), ds = scratch(eng, dev, {B, H, T, T}, dt);
  matmul(s, qh, kh, group_gemm(p, g * T, T, hd, false, true, s_q, s_kv, s_tt), eng);      // S  = Q_g K^T
  if (p_own.defined()) attention_softmax_forward(probs, s, key_mask, softmax_params(p), eng);  // P, as the forward
  matmul(ds, doh, vh, group_gemm(p, g * T, T, hd, false, true, s_q, s_kv, s_tt), eng);    // dP = dO_g V^T
  attention_softmax_backward(ds, probs, ds, s, key_mask, softmax_params(p), eng);         // dS, in place
  engine::Tensor dvh = scratch(eng, dev, {B, KV, T, hd}, dt), dkh = scratch(eng, dev, {B, KV, T, hd}, dt);
  matmul(dvh, probs, doh, group_gemm(p, T, hd, g * T, true, false, s_tt, s_q, s_kv), eng);  // dV = P^T dO_g
  matmul(dkh, ds, qh, group_gemm(p, T, hd, g * T, true, false, s_tt, s_q, s_kv), eng);      // dK = dS^T Q_g
  matmul(doh, ds, kh, group_gemm(p, g * T, hd, T, false, false, s_tt, s_kv, s_q), eng);     // dQ = dS K (into doh)
  attention_to_token_major(dq, doh, lq, eng);
  attention_to_token_major(dk, dkh, lkv, eng);
  attention_to_token_major(dv, dvh, lkv, eng);
}

}  // namespace ops
