// tests/ops/lora_up_cpu_test.cpp (label cpu): the LoRA up-projection reference against the GEMMs it replaces
// (ops::cpu::matmul with alpha = s, beta = 1 / 0 / 1), f64 finite differences, dB accumulation, every
// supported rank, and the preconditions.
#include "ops/lora_up.h"
#include "ops/matmul.h"
#include "tests/test_util.h"

namespace {

using namespace test;

void check_against_matmul(DType dt, int64_t n, int64_t out, int64_t r) {
  SCOPED_TRACE(std::string(engine::dtype_name(dt)) + " n=" + std::to_string(n) + " out=" + std::to_string(out) +
               " r=" + std::to_string(r));
  Engine eng({engine::Backend::kCPU});
  const Device c = Device::kCPU;
  const ops::LoraUpParams p{n, out, r, 0.75f};
  const auto yv = random_normal(n * out, 1), tv = random_normal(n * r, 2), bv = random_normal(out * r, 3, 0.3);
  const auto gv = random_normal(n * out, 4), db0 = random_normal(out * r, 5);
  TestTensor y(eng, c, {n, out}, dt, yv), y2(eng, c, {n, out}, dt, yv), t(eng, c, {n, r}, dt, tv);
  TestTensor b(eng, c, {out, r}, dt, bv), g(eng, c, {n, out}, dt, gv);
  TestTensor dt1(eng, c, {n, r}, dt), dt2(eng, c, {n, r}, dt);
  TestTensor db1(eng, c, {out, r}, DType::kF32, db0), db2(eng, c, {out, r}, DType::kF32, db0);
  ops::cpu::lora_up_forward(y, t, b, p);
  ops::cpu::lora_up_backward(dt1, db1, g, t, b, p);
  ops::MatmulParams pf; pf.m = n; pf.n = out; pf.k = r; pf.trans_b = true; pf.alpha = p.scaling; pf.beta = 1.f;
  ops::cpu::matmul(y2, t, b, pf);
  ops::MatmulParams pb; pb.m = out; pb.n = r; pb.k = n; pb.trans_a = true; pb.alpha = p.scaling; pb.beta = 1.f;
  ops::cpu::matmul(db2, g, t, pb);
  ops::MatmulParams pt; pt.m = n; pt.n = r; pt.k = out; pt.alpha = p.scaling;
  ops::cpu::matmul(dt2, g, b, pt);
  EXPECT_CLOSE(y.values(), y2.values(), tol_for(dt));
  EXPECT_CLOSE(dt1.values(), dt2.values(), tol_for(dt));
  EXPECT_CLOSE(db1.values(), db2.values(), tol_for(DType::kF32));
  EXPECT_GUARDS_INTACT(y); EXPECT_GUARDS_INTACT(dt1); EXPECT_GUARDS_INTACT(db1);
}

TEST(LoraUpCpu, MatchesMatmulEveryRankAndDtype) {
  for (int64_t r : {1, 2, 4, 8, 16}) check_against_matmul(DType::kF32, 5, 24, r);
  for (DType dt : {DType::kBF16, DType::kF16}) check_against_matmul(dt, 7, 40, 4);
  check_against_matmul(DType::kF32, 3, 9, 3);  // the reference takes any shape; only CUDA needs fusable ones
}

TEST(LoraUpCpu, BackwardMatchesFiniteDifferences) {
  // L = <g, y>: linear in t and b, so dL/dt = dt and dL/db = dB exactly (f64).
  Engine eng({engine::Backend::kCPU});
  const Device c = Device::kCPU;
  const int64_t n = 4, out = 6, r = 2;
  const ops::LoraUpParams p{n, out, r, 1.5f};
  const auto gv = random_normal(n * out, 6);
  TestTensor t(eng, c, {n, r}, DType::kF64, random_normal(n * r, 7));
  TestTensor b(eng, c, {out, r}, DType::kF64, random_normal(out * r, 8));
  TestTensor y(eng, c, {n, out}, DType::kF64), g(eng, c, {n, out}, DType::kF64, gv);
  TestTensor dt(eng, c, {n, r}, DType::kF64), db(eng, c, {out, r}, DType::kF64, std::vector<double>(size_t(out * r), 0.0));
  auto loss = [&] {
    y.set(std::vector<double>(size_t(n * out), 0.0));
    ops::cpu::lora_up_forward(y, t, b, p);
    return dot(y.values(), gv);
  };
  ops::cpu::lora_up_backward(dt, db, g, t, b, p);
  EXPECT_CLOSE(dt.values(), numeric_grad(loss, t), (Tol{1e-8, 1e-7}));
  EXPECT_CLOSE(db.values(), numeric_grad(loss, b), (Tol{1e-8, 1e-7}));
}

TEST(LoraUpCpu, DbAccumulatesDtIsSet) {
  Engine eng({engine::Backend::kCPU});
  const Device c = Device::kCPU;
  const ops::LoraUpParams p{3, 8, 4, 2.f};
  TestTensor t(eng, c, {3, 4}, DType::kF32, random_normal(12, 1)), b(eng, c, {8, 4}, DType::kF32, random_normal(32, 2));
  TestTensor g(eng, c, {3, 8}, DType::kF32, random_normal(24, 3)), dt(eng, c, {3, 4}, DType::kF32);
  TestTensor db(eng, c, {8, 4}, DType::kF32, std::vector<double>(32, 0.0));
  ops::cpu::lora_up_backward(dt, db, g, t, b, p);
  const auto dt1 = dt.values();
  std::vector<double> twice = db.values();
  for (auto& v : twice) v *= 2;
  ops::cpu::lora_up_backward(dt, db, g, t, b, p);
  EXPECT_CLOSE(db.values(), twice, tol_for(DType::kF32));
  EXPECT_CLOSE(dt.values(), dt1, (Tol{0, 0}));
}

TEST(LoraUpCpu, RejectsBadArgumentsAndKnowsFusableShapes) {
  Engine eng({engine::Backend::kCPU});
  const Device c = Device::kCPU;
  TestTensor y(eng, c, {3, 8}, DType::kF32), t(eng, c, {3, 4}, DType::kF32, random_normal(12, 1));
  TestTensor b(eng, c, {8, 4}, DType::kF32, random_normal(32, 2)), b16(eng, c, {8, 4}, DType::kBF16);
  TestTensor y16(eng, c, {3, 8}, DType::kBF16), db(eng, c, {8, 4}, DType::kF32), db16(eng, c, {8, 4}, DType::kBF16);
  TestTensor dt(eng, c, {3, 4}, DType::kF32), b5(eng, c, {8, 5}, DType::kF32);
  const ops::LoraUpParams p{3, 8, 4, 1.f};
  EXPECT_NO_THROW(ops::cpu::lora_up_forward(y, t, b, p));
  EXPECT_THROW(ops::cpu::lora_up_forward(y, t, b16, p), engine::Error);   // b's dtype
  EXPECT_THROW(ops::cpu::lora_up_forward(y16, t, b, p), engine::Error);   // y's dtype
  EXPECT_THROW(ops::cpu::lora_up_forward(y, t, b5, p), engine::Error);    // b's shape
  EXPECT_THROW(ops::cpu::lora_up_forward(y, t, b, {4, 8, 4, 1.f}), engine::Error);
  EXPECT_NO_THROW(ops::cpu::lora_up_backward(dt, db, y, t, b, p));
  EXPECT_THROW(ops::cpu::lora_up_backward(dt, db16, y, t, b, p), engine::Error);
  EXPECT_THROW(ops::cpu::lora_up_backward(dt, TensorView{}, y, t, b, p), engine::Error);
  EXPECT_THROW(ops::cpu::lora_up_backward(y, db, y, t, b, p), engine::Error);  // dt's shape
  EXPECT_TRUE(ops::lora_up_fusable(2048, 4));
  EXPECT_TRUE(ops::lora_up_fusable(9216, 16));
  EXPECT_FALSE(ops::lora_up_fusable(2048, 3));   // ranks outside {1, 2, 4, 8, 16}: GEMMs
  EXPECT_FALSE(ops::lora_up_fusable(2048, 32));
  EXPECT_FALSE(ops::lora_up_fusable(2044, 4));
  EXPECT_EQ(ops::lora_up_chunks(2304), 9);
  EXPECT_EQ(ops::lora_up_workspace_elems(512, 2304, 4), 9 * 512 * 4 + 16 * 2304 * 4);
}

}  // namespace
