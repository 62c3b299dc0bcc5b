// ops/attention_rope_cpu.cpp: the reference is the composition it replaces: ops/rope.h's CPU RoPE, then
// ops/attention_layout.h's permute (and back, with the mode applied by the tape's accumulate).
#include "ops/attention_rope.h"

#include <vector>

#include "ops/attention_layout.h"
#include "ops/elementwise.h"

namespace ops {

namespace {

// A host scratch tensor for the composition.
struct HostBuf {
  std::vector<double> storage;  // double: aligned for every dtype
  TensorView view;
  HostBuf(TensorView like) : storage(size_t(like.numel())) {
    view = like;
    view.data = storage.data();
    view.device = Device::kCPU;
  }
};

}  // namespace

void attention_rope_check(TensorView q, TensorView k, TensorView v, TensorView qh, TensorView kh, TensorView vh,
                          TensorView pos, const AttentionRopeParams& p) {
  ENGINE_CHECK(p.batch > 0 && p.seq > 0 && p.heads > 0 && p.kv_heads > 0, "attention_rope: bad params B=",
               p.batch, " T=", p.seq, " H=", p.heads, " KV=", p.kv_heads);
  rope_check(q, q, pos, p.rope(p.heads));
  rope_check(k, k, pos, p.rope(p.kv_heads));
  const AttentionLayoutParams lq{p.batch, p.seq, p.heads, p.head_dim}, lkv{p.batch, p.seq, p.kv_heads, p.head_dim};
  attention_layout_check(qh, q, lq);
  attention_layout_check(kh, k, lkv);
  attention_layout_check(vh, v, lkv);
  for (const TensorView& t : {k, v, qh, kh, vh})
    ENGINE_CHECK(t.dtype == q.dtype, "attention_rope: ", t.str(), " must have q's dtype ", q.str());
}

namespace cpu {

void attention_rope_forward(TensorView qh, TensorView kh, TensorView vh, TensorView q, TensorView k, TensorView v,
                            TensorView pos, const AttentionRopeParams& p) {
  attention_rope_check(q, k, v, qh, kh, vh, pos, p);
  HostBuf qr(q), kr(k);
  rope_forward(qr.view, q, pos, p.rope(p.heads));
  rope_forward(kr.view, k, pos, p.rope(p.kv_heads));
  attention_to_head_major(qh, qr.view, {p.batch, p.seq, p.heads, p.head_dim});
  attention_to_head_major(kh, kr.view, {p.batch, p.seq, p.kv_heads, p.head_dim});
  attention_to_head_major(vh, v, {p.batch, p.seq, p.kv_heads, p.head_dim});
}

void attention_rope_backward(const AttentionRopeGrads& d, TensorView dqh, TensorView dkh, TensorView dvh,
                             TensorView pos, const AttentionRopeParams& p) {
  // The token-major shapes stand in for q, k, v in the check (they are only read for shapes and dtypes).
  HostBuf dq(d.dq.defined() ? d.dq : dqh.reshape({p.batch * p.seq, p.heads * p.head_dim})),
      dk(d.dk.defined() ? d.dk : dkh.reshape({p.batch * p.seq, p.kv_heads * p.head_dim})),
      dv(d.dv.defined() ? d.dv : dvh.reshape({p.batch * p.seq, p.kv_heads * p.head_dim}));
  attention_rope_check(dq.view, dk.view, dv.view, dqh, dkh, dvh, pos, p);
  if (d.dq.defined()) {
    attention_to_token_major(dq.view, dqh, {p.batch, p.seq, p.heads, p.head_dim});
    rope_backward(d.dq, d.dq_mode, dq.view, pos, p.rope(p.heads));
  }
  if (d.dk.defined()) {
    attention_to_token_major(dk.view, dkh, {p.batch, p.seq, p.kv_heads, p.head_dim});
    rope_backward(d.dk, d.dk_mode, dk.view, pos, p.rope(p.kv_heads));
  }
  if (d.dv.defined()) {
    attention_to_token_major(dv.view, dvh, {p.batch, p.seq, p.kv_heads, p.head_dim});
    accumulate(d.dv, dv.view, 1.f, d.dv_mode);
  }
}

}  // namespace cpu
}  // namespace ops
