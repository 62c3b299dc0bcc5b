// tests/ops/attention_rope_cpu_test.cpp (label cpu): the CPU reference against f64 finite differences (the
// backward is the forward's transpose, modes included) and its input checks.
#include "autograd/functions.h"
#include "ops/attention.h"
#include "ops/attention_rope.h"
#include "tests/ops/attention_rope_test.h"

namespace {

using namespace test;
using ops::Accum;

// loss = qh.a + kh.b + vh.c: d q, d k, d v are the backward of (a, b, c).
TEST(AttentionRopeCpu, BackwardMatchesFiniteDifferences) {
  Engine eng({engine::Backend::kCPU});
  const int64_t B = 2, T = 3, H = 4, KV = 2, hd = 6, N = B * T;
  const ops::AttentionRopeParams p{B, T, H, KV, hd, 10000.f};
  const Shape sq{N, H * hd}, skv{N, KV * hd}, hq{B, H, T, hd}, hkv{B, KV, T, hd};
  TestTensor q(eng, Device::kCPU, sq, DType::kF64, random_normal(N * H * hd, 1)),
      k(eng, Device::kCPU, skv, DType::kF64, random_normal(N * KV * hd, 2)),
      v(eng, Device::kCPU, skv, DType::kF64, random_normal(N * KV * hd, 3)),
      pos(eng, Device::kCPU, {N}, DType::kI32, {0, 1, 2, 5, 9, 4});
  TestTensor qh(eng, Device::kCPU, hq, DType::kF64), kh(eng, Device::kCPU, hkv, DType::kF64),
      vh(eng, Device::kCPU, hkv, DType::kF64);
  const std::vector<double> a = random_normal(N * H * hd, 4), b = random_normal(N * KV * hd, 5),
                            c = random_normal(N * KV * hd, 6);
  auto loss = [&] {
    ops::cpu::attention_rope_forward(qh, kh, vh, q, k, v, pos, p);
    return dot(qh.values(), a) + dot(kh.values(), b) + dot(vh.values(), c);
  };
  loss();
  TestTensor da(eng, Device::kCPU, hq, DType::kF64, a), db(eng, Device::kCPU, hkv, DType::kF64, b),
      dc(eng, Device::kCPU, hkv, DType::kF64, c);
  TestTensor dq(eng, Device::kCPU, sq, DType::kF64), dk(eng, Device::kCPU, skv, DType::kF64),
      dv(eng, Device::kCPU, skv, DType::kF64, std::vector<double>(size_t(N * KV * hd), 1.0));
  // dq, dk set; dv added to ones
  ops::cpu::attention_rope_backward({dq, dk, dv, Accum::kSet, Accum::kSet, Accum::kAdd}, da, db, dc, pos, p);
  EXPECT_CLOSE(dq.values(), numeric_grad(loss, q), (Tol{1e-7, 1e-6}));
  EXPECT_CLOSE(dk.values(), numeric_grad(loss, k), (Tol{1e-7, 1e-6}));
  std::vector<double> want_dv = numeric_grad(loss, v);
  for (double& x : want_dv) x += 1.0;
  EXPECT_CLOSE(dv.values(), want_dv, (Tol{1e-7, 1e-6}));
}

TEST(AttentionRopeCpu, RejectsBadArguments) {
  Engine eng({engine::Backend::kCPU});
  const ops::AttentionRopeParams p{1, 4, 2, 1, 8, 10000.f};
  TestTensor q(eng, Device::kCPU, {4, 16}, DType::kBF16, random_normal(64, 1)),
      k(eng, Device::kCPU, {4, 8}, DType::kBF16, random_normal(32, 2)),
      v(eng, Device::kCPU, {4, 8}, DType::kBF16, random_normal(32, 3)),
      v16(eng, Device::kCPU, {4, 8}, DType::kF16, random_normal(32, 3)), pos(eng, Device::kCPU, {4}, DType::kI32, {0, 1, 2, 3});
  TestTensor qh(eng, Device::kCPU, {1, 2, 4, 8}, DType::kBF16), kh(eng, Device::kCPU, {1, 1, 4, 8}, DType::kBF16),
      vh(eng, Device::kCPU, {1, 1, 4, 8}, DType::kBF16), small(eng, Device::kCPU, {1, 1, 3, 8}, DType::kBF16);
  EXPECT_NO_THROW(ops::cpu::attention_rope_forward(qh, kh, vh, q, k, v, pos, p));
  EXPECT_THROW(ops::cpu::attention_rope_forward(qh, kh, vh, q, k, v16, pos, p), engine::Error);   // dtype
  EXPECT_THROW(ops::cpu::attention_rope_forward(qh, kh, small, q, k, v, pos, p), engine::Error);  // vh's size
  EXPECT_THROW(ops::cpu::attention_rope_forward(qh, kh, vh, q, k, v, pos, {1, 4, 2, 1, 7, 10000.f}),
               engine::Error);  // odd head_dim
}

// autograd::attention (RoPE inside, q/k/v kept head-major) against RoPE and the token-major attention as
// separate ops: the same output and gradients, bit for bit, set or added to earlier contributions.
TEST(AttentionRopeCpu, AutogradAttentionMatchesRopeThenAttention) {
  Engine eng({engine::Backend::kCPU});
  const int64_t B = 2, T = 5, H = 4, KV = 2, hd = 8, N = B * T;
  const DType dt = DType::kBF16;
  ops::AttentionParams ap;
  ap.batch = B; ap.seq = T; ap.heads = H; ap.kv_heads = KV; ap.head_dim = hd; ap.scale = 0.25f; ap.softcap = 50.f;
  ap.window = 3;
  const float theta = 10000.f;
  auto host = [&](Shape shape, DType t, const std::vector<double>& v) {
    engine::Tensor x = eng.empty(shape, t);
    for (int64_t i = 0; i < x.numel(); ++i) engine::store_f64(x.data(), t, i, v[size_t(i)]);
    return x;
  };
  auto values = [](TensorView t) {
    std::vector<double> v(size_t(t.numel()));
    for (size_t i = 0; i < v.size(); ++i) v[i] = engine::load_f64(t.data, t.dtype, int64_t(i));
    return v;
  };
  const Shape sq{N, H * hd}, skv{N, KV * hd};
  const engine::Tensor q = host(sq, dt, random_normal(N * H * hd, 1)), k = host(skv, dt, random_normal(N * KV * hd, 2)),
                       v = host(skv, dt, random_normal(N * KV * hd, 3)), seed = host(sq, dt, random_normal(N * H * hd, 4));
  std::vector<double> pv(static_cast<size_t>(N));
  for (int64_t i = 0; i < N; ++i) pv[size_t(i)] = double(i % T);
  const engine::Tensor pos = host({N}, DType::kI32, pv);

  // The autograd function; q also feeds a later scale node, so the attention adds its dq (kAdd) while dk and
  // dv are set (kSet).
  autograd::Tape tape(eng);
  autograd::Var vq = tape.leaf(q, "q"), vk = tape.leaf(k, "k"), vv = tape.leaf(v, "v");
  autograd::Var out = autograd::attention(tape, vq, vk, vv, tape.constant(pos, "pos"), autograd::Var(), ap, theta);
  autograd::Var sum = autograd::add(tape, out, autograd::scale(tape, vq, 0.5f));
  tape.backward(sum, seed);
  const std::vector<double> got_out = values(out.t()), got_dq = values(vq.gref().slot()->grad.view()),
                            got_dk = values(vk.gref().slot()->grad.view()), got_dv = values(vv.gref().slot()->grad.view());

  // The separate ops.
  const ops::RopeParams rq{N, H, hd, theta}, rk{N, KV, hd, theta};
  engine::Tensor qr = eng.empty(sq, dt), kr = eng.empty(skv, dt), o = eng.empty(sq, dt), probs = eng.empty({B, H, T, T}, dt);
  ops::rope_forward(qr, q, pos, rq, eng);
  ops::rope_forward(kr, k, pos, rk, eng);
  ops::attention_forward(o, probs, qr, kr, v, TensorView{}, ap, eng);
  engine::Tensor dqr = eng.empty(sq, dt), dkr = eng.empty(skv, dt), dv = eng.empty(skv, dt);
  ops::attention_backward(dqr, dkr, dv, seed, qr, kr, v, probs, TensorView{}, ap, eng);
  engine::Tensor dq = eng.empty(sq, dt), dk = eng.empty(skv, dt);
  ops::accumulate(dq, seed, 0.5f, ops::Accum::kSet, eng);  // the scale node's contribution comes first
  ops::rope_backward(dq, ops::Accum::kAdd, dqr, pos, rq, eng);
  ops::rope_backward(dk, ops::Accum::kSet, dkr, pos, rk, eng);
  EXPECT_EQ(got_out, values(o.view()));
  EXPECT_EQ(got_dq, values(dq.view()));
  EXPECT_EQ(got_dk, values(dk.view()));
  EXPECT_EQ(got_dv, values(dv.view()));
  EXPECT_ALL_FINITE(got_dq);
}

}  // namespace
