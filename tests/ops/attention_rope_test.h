// tests/ops/attention_rope_test.h: ops/attention_rope.h fused, or as ops/rope.h + ops/attention_layout.h (+ the
// tape's accumulate for v), on one device from the same seeded inputs.
#pragma once
#include <vector>

#include "ops/attention_layout.h"
#include "ops/attention_rope.h"
#include "ops/elementwise.h"
#include "tests/test_util.h"

namespace test {

struct AttentionRopeCase {
  int64_t batch, seq, heads, kv_heads, head_dim;
  DType dtype;
  ops::Accum mode;     // the modes of dq, dk, dv (kAdd: they start from seeded values)
  bool want_dk = true;  // false: dk undefined (skipped)
};

struct AttentionRopeResult {
  std::vector<double> qh, kh, vh, dq, dk, dv;
};

inline AttentionRopeResult run_attention_rope(Engine& eng, Device dev, const AttentionRopeCase& c, bool fused) {
  const int64_t N = c.batch * c.seq, nq = N * c.heads * c.head_dim, nkv = N * c.kv_heads * c.head_dim;
  const DType dt = c.dtype;
  const ops::AttentionRopeParams p{c.batch, c.seq, c.heads, c.kv_heads, c.head_dim, 10000.f};
  std::vector<double> pv(static_cast<size_t>(N));
  for (int64_t i = 0; i < N; ++i) pv[size_t(i)] = double((i % c.seq) * 7 % 4099);  // per-row positions
  const Shape sq{N, c.heads * c.head_dim}, skv{N, c.kv_heads * c.head_dim};
  const Shape hq{c.batch, c.heads, c.seq, c.head_dim}, hkv{c.batch, c.kv_heads, c.seq, c.head_dim};
  TestTensor q(eng, dev, sq, dt, random_normal(nq, 51)), k(eng, dev, skv, dt, random_normal(nkv, 52)),
      v(eng, dev, skv, dt, random_normal(nkv, 53)), pos(eng, dev, {N}, DType::kI32, pv);
  TestTensor qh(eng, dev, hq, dt), kh(eng, dev, hkv, dt), vh(eng, dev, hkv, dt);
  TestTensor dqh(eng, dev, hq, dt, random_normal(nq, 54)), dkh(eng, dev, hkv, dt, random_normal(nkv, 55)),
      dvh(eng, dev, hkv, dt, random_normal(nkv, 56));
  TestTensor dq(eng, dev, sq, dt, random_normal(nq, 57)), dk(eng, dev, skv, dt, random_normal(nkv, 58)),
      dv(eng, dev, skv, dt, random_normal(nkv, 59));
  ops::AttentionRopeGrads d{dq, c.want_dk ? dk.view() : TensorView{}, dv, c.mode, c.mode, c.mode};
  if (fused) {
    ops::attention_rope_forward(qh, kh, vh, q, k, v, pos, p, eng);
    ops::attention_rope_backward(d, dqh, dkh, dvh, pos, p, eng);
  } else {
    TestTensor qr(eng, dev, sq, dt), kr(eng, dev, skv, dt), tq(eng, dev, sq, dt), tk(eng, dev, skv, dt),
        tv(eng, dev, skv, dt);
    const ops::AttentionLayoutParams lq{c.batch, c.seq, c.heads, c.head_dim}, lkv{c.batch, c.seq, c.kv_heads, c.head_dim};
    ops::rope_forward(qr, q, pos, p.rope(c.heads), eng);
    ops::rope_forward(kr, k, pos, p.rope(c.kv_heads), eng);
    ops::attention_to_head_major(qh, qr, lq, eng);
    ops::attention_to_head_major(kh, kr, lkv, eng);
    ops::attention_to_head_major(vh, v, lkv, eng);
    ops::attention_to_token_major(tq, dqh, lq, eng);
    ops::rope_backward(dq, c.mode, tq, pos, p.rope(c.heads), eng);
    if (c.want_dk) {
      ops::attention_to_token_major(tk, dkh, lkv, eng);
      ops::rope_backward(dk, c.mode, tk, pos, p.rope(c.kv_heads), eng);
    }
    ops::attention_to_token_major(tv, dvh, lkv, eng);
    ops::accumulate(dv, tv, 1.f, c.mode, eng);
  }
  AttentionRopeResult r{qh.values(), kh.values(), vh.values(), dq.values(), dk.values(), dv.values()};
  for (const TestTensor* t : {&qh, &kh, &vh, &dq, &dk, &dv}) EXPECT_GUARDS_INTACT(*t);
  return r;
}

}  // namespace test
