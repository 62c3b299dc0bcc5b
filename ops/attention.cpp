// ops/attention.cpp: the attention composite: layout permutes, strided-batched GEMMs over (b, kv) groups,
// and the fused row op. Head-major, the g query heads of kv head `kv` are rows [kv*g*T, (kv+1)*g*T) of one
// dense (B*H*T, hd) matrix, so every GEMM below is one call with uniform strides over B*KV groups (in the
// backward, over a chunk of them when its T x T scratch would be large).
#include "ops/attention.h"

#include <algorithm>

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

// C (g*T, n) per group = op(A) @ op(B), batched over `groups` (b, kv) groups; strides in elements.
MatmulParams group_gemm(int64_t groups, int64_t m, int64_t n, int64_t k, bool ta, bool tb, int64_t sa, int64_t sb,
                        int64_t sc) {
  MatmulParams mp;
  mp.m = m; mp.n = n; mp.k = k;
  mp.trans_a = ta; mp.trans_b = tb;
  mp.batch = groups;
  mp.stride_a = sa; mp.stride_b = sb; mp.stride_c = sc;
  return mp;
}

}  // namespace

void attention_check(TensorView out, TensorView probs, TensorView q, TensorView k, TensorView v,
                     TensorView key_mask, const AttentionParams& p, bool probs_optional) {
  check_float(q, "attention q");
  ENGINE_CHECK(p.batch > 0 && p.seq > 0 && p.heads > 0 && p.kv_heads > 0 && p.head_dim > 0 && p.window >= 0,
               "attention: bad params B=", p.batch, " T=", p.seq, " H=", p.heads, " KV=", p.kv_heads, " hd=",
               p.head_dim, " window=", p.window);
  ENGINE_CHECK(p.heads % p.kv_heads == 0, "attention: H=", p.heads, " is not a multiple of KV=", p.kv_heads);
  const int64_t nq = p.batch * p.seq * p.heads * p.head_dim, nkv = p.batch * p.seq * p.kv_heads * p.head_dim;
  ENGINE_CHECK(p.backward_scratch_bytes > 0, "attention: backward_scratch_bytes must be > 0, got ",
               p.backward_scratch_bytes);
  ENGINE_CHECK(probs.defined() || probs_optional, "attention: probs must be defined");
  for (const TensorView& t : {out, k, v, probs})
    ENGINE_CHECK(!t.defined() || t.dtype == q.dtype, "attention: ", t.str(), " must have q's dtype ", q.str());
  ENGINE_CHECK(q.numel() == nq && out.numel() == nq, "attention: q ", q.str(), " / out ", out.str(),
               " must hold B*T=", p.batch * p.seq, " x H*hd=", p.heads * p.head_dim);
  ENGINE_CHECK(k.numel() == nkv && v.numel() == nkv, "attention: k ", k.str(), " / v ", v.str(),
               " must hold B*T=", p.batch * p.seq, " x KV*hd=", p.kv_heads * p.head_dim);
  ENGINE_CHECK(!probs.defined() || probs.numel() == p.batch * p.heads * p.seq * p.seq, "attention: probs ", probs.str(),
               " must hold B=", p.batch, " x H=", p.heads, " x T=", p.seq, " x T");
  ENGINE_CHECK(!key_mask.defined() || (key_mask.dtype == DType::kI32 && key_mask.numel() == p.batch * p.seq),
               "attention: key_mask ", key_mask.str(), " must be i32 with B=", p.batch, " x T=", p.seq);
}

void attention_forward_head_major(TensorView out, TensorView probs, TensorView qh, TensorView kh, TensorView vh,
                                  TensorView key_mask, const AttentionParams& p, Engine& eng) {
  attention_check(out, probs, qh, kh, vh, key_mask, p);
  const engine::Device dev = engine::common_device({out, probs, qh, kh, vh, key_mask});
  const int64_t B = p.batch, T = p.seq, H = p.heads, KV = p.kv_heads, hd = p.head_dim, g = H / KV;
  // S = Q_g K^T into probs, then the row op in place.
  matmul(probs, qh, kh, group_gemm(B * KV, g * T, T, hd, false, true, g * T * hd, T * hd, g * T * T), eng);
  attention_softmax_forward(probs, probs, key_mask, softmax_params(p), eng);
  // O = P V head-major, then token-major.
  engine::Tensor oh = scratch(eng, dev, {B, H, T, hd}, qh.dtype);
  matmul(oh, probs, vh, group_gemm(B * KV, g * T, hd, T, false, false, g * T * T, T * hd, g * T * hd), eng);
  attention_to_token_major(out, oh, {B, T, H, hd}, eng);
}

void attention_forward(TensorView out, TensorView probs, TensorView q, TensorView k, TensorView v,
                       TensorView key_mask, const AttentionParams& p, Engine& eng) {
  attention_check(out, probs, q, k, v, key_mask, p);
  const engine::Device dev = engine::common_device({out, probs, q, k, v, key_mask});
  const int64_t B = p.batch, T = p.seq, H = p.heads, KV = p.kv_heads, hd = p.head_dim;
  const DType dt = q.dtype;
  engine::Tensor qh = scratch(eng, dev, {B, H, T, hd}, dt), kh = scratch(eng, dev, {B, KV, T, hd}, dt),
                 vh = scratch(eng, dev, {B, KV, T, hd}, dt);
  attention_to_head_major(qh, q, {B, T, H, hd}, eng);
  attention_to_head_major(kh, k, {B, T, KV, hd}, eng);
  attention_to_head_major(vh, v, {B, T, KV, hd}, eng);
  attention_forward_head_major(out, probs, qh, kh, vh, key_mask, p, eng);
}

int64_t attention_backward_chunk_groups(const AttentionParams& p, DType dt, bool probs_given) {
  const int64_t g = p.heads / p.kv_heads, groups = p.batch * p.kv_heads;
  const int64_t per_group = g * p.seq * p.seq * int64_t(engine::dtype_size(dt)) * (probs_given ? 2 : 3);
  const int64_t fit = std::max<int64_t>(1, p.backward_scratch_bytes / std::max<int64_t>(1, per_group));
  if (fit >= groups) return groups;
  if (fit >= p.kv_heads) return fit / p.kv_heads * p.kv_heads;  // whole batch entries
  int64_t c = fit;
  while (p.kv_heads % c != 0) --c;  // kv groups of one entry
  return c;
}

void attention_backward_head_major(TensorView dqh, TensorView dkh, TensorView dvh, TensorView dout, TensorView qh,
                                   TensorView kh, TensorView vh, TensorView probs, TensorView key_mask,
                                   const AttentionParams& p, Engine& eng) {
  const engine::Device dev = engine::common_device({dqh, dkh, dvh, dout, qh, kh, vh, probs, key_mask});
  const int64_t B = p.batch, T = p.seq, H = p.heads, KV = p.kv_heads, hd = p.head_dim, g = H / KV;
  const DType dt = qh.dtype;
  const bool have_probs = probs.defined();
  engine::Tensor probs_buf;  // P recomputed below, chunk by chunk, when the caller did not keep it
  attention_check(dout, probs, qh, kh, vh, key_mask, p, /*probs_optional=*/true);
  ENGINE_CHECK(dqh.dtype == dt && dqh.numel() == qh.numel(), "attention: dq ", dqh.str(), " must match q ", qh.str());
  ENGINE_CHECK(dkh.dtype == dt && dkh.numel() == kh.numel(), "attention: dk ", dkh.str(), " must match k ", kh.str());
  ENGINE_CHECK(dvh.dtype == dt && dvh.numel() == vh.numel(), "attention: dv ", dvh.str(), " must match v ", vh.str());
  engine::Tensor doh = scratch(eng, dev, {B, H, T, hd}, dt);
  attention_to_head_major(doh, dout, {B, T, H, hd}, eng);
  const int64_t s_q = g * T * hd, s_kv = T * hd, s_tt = g * T * T;  // per-group strides
  const int64_t groups = B * KV, chunk = attention_backward_chunk_groups(p, dt, have_probs);
  engine::Tensor s = scratch(eng, dev, {chunk, s_tt}, dt), ds = scratch(eng, dev, {chunk, s_tt}, dt);
  if (!have_probs) probs_buf = scratch(eng, dev, {chunk, s_tt}, dt);
  // Per-group views: group G = b * KV + kv owns rows G of these.
  const TensorView qg = qh.reshape({groups, s_q}), kg = kh.reshape({groups, s_kv}), vg = vh.reshape({groups, s_kv}),
                   dog = TensorView(doh).reshape({groups, s_q}), dqg = dqh.reshape({groups, s_q}),
                   dvg = dvh.reshape({groups, s_kv}), dkg = dkh.reshape({groups, s_kv});
  for (int64_t g0 = 0; g0 < groups; g0 += chunk) {
    const int64_t n = std::min(chunk, groups - g0), g1 = g0 + n;
    // The row op's view of the chunk: whole batch entries, or n kv groups (n * g heads) of entry b.
    AttentionSoftmaxParams sp = softmax_params(p);
    TensorView mask = key_mask.defined() ? key_mask.reshape({B, T}) : key_mask;
    const int64_t b0 = g0 / KV;
    if (n % KV == 0) {
      sp.batch = n / KV;
      if (mask.defined()) mask = mask.slice_rows(b0, b0 + n / KV);
    } else {
      sp.batch = 1;
      sp.heads = n * g;
      if (mask.defined()) mask = mask.slice_rows(b0, b0 + 1);
    }
    const TensorView sc = TensorView(s).slice_rows(0, n), dsc = TensorView(ds).slice_rows(0, n);
    const TensorView pcv = have_probs ? probs.reshape({groups, s_tt}).slice_rows(g0, g1)
                                      : TensorView(probs_buf).slice_rows(0, n);
    const TensorView qc = qg.slice_rows(g0, g1), kc = kg.slice_rows(g0, g1), vc = vg.slice_rows(g0, g1),
                     doc = dog.slice_rows(g0, g1), dqc = dqg.slice_rows(g0, g1), dvc = dvg.slice_rows(g0, g1), dkc = dkg.slice_rows(g0, g1);
    const TensorView sc4 = sc.reshape({sp.batch, sp.heads, T, T}), dsc4 = dsc.reshape({sp.batch, sp.heads, T, T}),
                     pc4 = pcv.reshape({sp.batch, sp.heads, T, T});
    matmul(sc, qc, kc, group_gemm(n, g * T, T, hd, false, true, s_q, s_kv, s_tt), eng);     // S  = Q_g K^T
    if (!have_probs) attention_softmax_forward(pc4, sc4, mask, sp, eng);                     // P, as the forward
    matmul(dsc, doc, vc, group_gemm(n, g * T, T, hd, false, true, s_q, s_kv, s_tt), eng);   // dP = dO_g V^T
    attention_softmax_backward(dsc4, pc4, dsc4, sc4, mask, sp, eng);                         // dS, in place
    matmul(dvc, pcv, doc, group_gemm(n, T, hd, g * T, true, false, s_tt, s_q, s_kv), eng);  // dV = P^T dO_g
    matmul(dkc, dsc, qc, group_gemm(n, T, hd, g * T, true, false, s_tt, s_q, s_kv), eng);   // dK = dS^T Q_g
    matmul(dqc, dsc, kc, group_gemm(n, g * T, hd, T, false, false, s_tt, s_kv, s_q), eng);  // dQ = dS K
  }
}

void attention_backward(TensorView dq, TensorView dk, TensorView dv, TensorView dout, TensorView q, TensorView k,
                        TensorView v, TensorView probs, TensorView key_mask, const AttentionParams& p, Engine& eng) {
  const engine::Device dev = engine::common_device({dq, dk, dv, dout, q, k, v, probs, key_mask});
  const int64_t B = p.batch, T = p.seq, H = p.heads, KV = p.kv_heads, hd = p.head_dim;
  const DType dt = q.dtype;
  attention_check(dout, probs, q, k, v, key_mask, p, /*probs_optional=*/true);
  ENGINE_CHECK(dq.dtype == q.dtype && dq.numel() == q.numel(), "attention: dq ", dq.str(), " must match q ", q.str());
  ENGINE_CHECK(dk.dtype == k.dtype && dk.numel() == k.numel(), "attention: dk ", dk.str(), " must match k ", k.str());
  ENGINE_CHECK(dv.dtype == v.dtype && dv.numel() == v.numel(), "attention: dv ", dv.str(), " must match v ", v.str());
  const AttentionLayoutParams lq{B, T, H, hd}, lkv{B, T, KV, hd};
  engine::Tensor qh = scratch(eng, dev, {B, H, T, hd}, dt), kh = scratch(eng, dev, {B, KV, T, hd}, dt),
                 vh = scratch(eng, dev, {B, KV, T, hd}, dt), dqh = scratch(eng, dev, {B, H, T, hd}, dt),
                 dkh = scratch(eng, dev, {B, KV, T, hd}, dt), dvh = scratch(eng, dev, {B, KV, T, hd}, dt);
  attention_to_head_major(qh, q, lq, eng);
  attention_to_head_major(kh, k, lkv, eng);
  attention_to_head_major(vh, v, lkv, eng);
  attention_backward_head_major(dqh, dkh, dvh, dout, qh, kh, vh, probs, key_mask, p, eng);
  attention_to_token_major(dq, dqh, lq, eng);
  attention_to_token_major(dk, dkh, lkv, eng);
  attention_to_token_major(dv, dvh, lkv, eng);
}

}  // namespace ops
