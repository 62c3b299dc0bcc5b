// tests/ops/residual_rmsnorm_cpu_test.cpp (label cpu): the CPU reference against the separate ops (bit for bit)
// and against f64 finite differences; its input checks; the autograd function against the composed tape.
#include "autograd/functions.h"
#include "ops/residual_rmsnorm.h"
#include "tests/ops/residual_rmsnorm_test.h"

namespace {

using namespace test;
using ops::Accum;

class ResidualRmsNormCpu : public ::testing::TestWithParam<ResidualNormCase> {};

TEST_P(ResidualRmsNormCpu, FusedHasTheBitsOfTheSeparateOps) {
  Engine eng({engine::Backend::kCPU});
  const ResidualNormResult f = run_residual_rmsnorm(eng, Device::kCPU, GetParam(), true);
  const ResidualNormResult c = run_residual_rmsnorm(eng, Device::kCPU, GetParam(), false);
  EXPECT_EQ(f.s, c.s);
  EXPECT_EQ(f.y, c.y);
  EXPECT_EQ(f.rstd1, c.rstd1);
  EXPECT_EQ(f.rstd2, c.rstd2);
  EXPECT_EQ(f.dh, c.dh);
  EXPECT_EQ(f.d_o, c.d_o);
  EXPECT_ALL_FINITE(f.d_o);
}

INSTANTIATE_TEST_SUITE_P(
    Cases, ResidualRmsNormCpu,
    ::testing::Values(ResidualNormCase{3, 7, DType::kF64, true, Accum::kSet, Accum::kSet},
                      ResidualNormCase{5, 16, DType::kF32, true, Accum::kAdd, Accum::kAdd},
                      ResidualNormCase{4, 24, DType::kBF16, true, Accum::kSet, Accum::kSet},
                      ResidualNormCase{4, 24, DType::kBF16, false, Accum::kSet, Accum::kAdd},
                      ResidualNormCase{6, 40, DType::kF16, true, Accum::kAdd, Accum::kSet},
                      ResidualNormCase{6, 40, DType::kF16, false, Accum::kSet, Accum::kSet, false}),
    residual_norm_case_name);

TEST(ResidualRmsNormCpu, BackwardMatchesFiniteDifferences) {
  Engine eng({engine::Backend::kCPU});
  const int64_t R = 3, C = 6, n = R * C;
  const ops::RmsNormParams p{R, C, 1e-6f};
  for (bool next : {true, false}) {
    SCOPED_TRACE(next ? "with the entry norm" : "without");
    TestTensor h(eng, Device::kCPU, {R, C}, DType::kF64, random_normal(n, 1)),
        o(eng, Device::kCPU, {R, C}, DType::kF64, random_normal(n, 2, 2.0));
    TestTensor w1(eng, Device::kCPU, {C}, DType::kF64, random_normal(C, 3, 0.5)),
        w2(eng, Device::kCPU, {C}, DType::kF64, random_normal(C, 4, 0.5));
    const std::vector<double> a = random_normal(n, 5), b = random_normal(n, 6);  // loss = s.a + y.b
    TestTensor s(eng, Device::kCPU, {R, C}, DType::kF64), y(eng, Device::kCPU, {R, C}, DType::kF64);
    TestTensor r1(eng, Device::kCPU, {R}, DType::kF64), r2(eng, Device::kCPU, {R}, DType::kF64);
    auto loss = [&] {
      ops::cpu::residual_rmsnorm_forward(s, next ? y.view() : TensorView{}, r1, next ? r2.view() : TensorView{}, h,
                                         o, w1, next ? w2.view() : TensorView{}, p);
      return dot(s.values(), a) + (next ? dot(y.values(), b) : 0.0);
    };
    loss();
    TestTensor ds(eng, Device::kCPU, {R, C}, DType::kF64, a), dy(eng, Device::kCPU, {R, C}, DType::kF64, b);
    TestTensor dh(eng, Device::kCPU, {R, C}, DType::kF64), d_o(eng, Device::kCPU, {R, C}, DType::kF64);
    ops::cpu::residual_rmsnorm_backward(dh, Accum::kSet, d_o, Accum::kSet, ds, next ? dy.view() : TensorView{},
                                        next ? s.view() : TensorView{}, o, w1, next ? w2.view() : TensorView{}, r1,
                                        next ? r2.view() : TensorView{}, p);
    EXPECT_CLOSE(dh.values(), numeric_grad(loss, h), (Tol{1e-7, 1e-6}));
    EXPECT_CLOSE(d_o.values(), numeric_grad(loss, o), (Tol{1e-7, 1e-6}));
  }
}

TEST(ResidualRmsNormCpu, RejectsBadArguments) {
  Engine eng({engine::Backend::kCPU});
  const ops::RmsNormParams p{2, 8, 1e-6f};
  TestTensor h(eng, Device::kCPU, {2, 8}, DType::kBF16, random_normal(16, 1)),
      o(eng, Device::kCPU, {2, 8}, DType::kBF16, random_normal(16, 2)), s(eng, Device::kCPU, {2, 8}, DType::kBF16),
      y(eng, Device::kCPU, {2, 8}, DType::kBF16), h32(eng, Device::kCPU, {2, 8}, DType::kF32, random_normal(16, 3));
  TestTensor w(eng, Device::kCPU, {8}, DType::kF32, random_normal(8, 4)), r1(eng, Device::kCPU, {2}, DType::kF32),
      r2(eng, Device::kCPU, {2}, DType::kF32);
  // y without w2: the entry norm is all or nothing
  EXPECT_THROW(ops::cpu::residual_rmsnorm_forward(s, y, r1, r2, h, o, w, TensorView{}, p), engine::Error);
  // h in another dtype than o
  EXPECT_THROW(ops::cpu::residual_rmsnorm_forward(s, TensorView{}, r1, TensorView{}, h32, o, w, TensorView{}, p),
               engine::Error);
  // rows that do not match
  EXPECT_THROW(ops::cpu::residual_rmsnorm_forward(s, TensorView{}, r1, TensorView{}, h, o, w, TensorView{},
                                                  ops::RmsNormParams{3, 8, 1e-6f}),
               engine::Error);
  // dh aliasing ds
  ops::cpu::residual_rmsnorm_forward(s, y, r1, r2, h, o, w, w, p);
  TestTensor ds(eng, Device::kCPU, {2, 8}, DType::kBF16, random_normal(16, 5)), d_o(eng, Device::kCPU, {2, 8}, DType::kBF16);
  EXPECT_THROW(ops::cpu::residual_rmsnorm_backward(ds, Accum::kSet, d_o, Accum::kSet, ds, y, s, o, w, w, r1, r2, p),
               engine::Error);
  // s given without the entry norm
  EXPECT_THROW(ops::cpu::residual_rmsnorm_backward(TensorView{}, Accum::kSet, d_o, Accum::kSet, ds, TensorView{}, s,
                                                   o, w, TensorView{}, r1, TensorView{}, p),
               engine::Error);
}

// The autograd function against rmsnorm + add (+ rmsnorm) on a tape: z = s + y (or z = s), seeded with dz.
TEST(ResidualRmsNormCpu, AutogradMatchesTheComposedTape) {
  Engine eng({engine::Backend::kCPU});
  const int64_t R = 5, C = 24, n = R * C;
  const DType dt = DType::kBF16;
  auto host = [&](const std::vector<double>& v, DType t, Shape shape) {
    engine::Tensor x = eng.empty(shape, t);
    for (int64_t i = 0; i < x.numel(); ++i) engine::store_f64(x.data(), t, i, v[size_t(i)]);
    return x;
  };
  const engine::Tensor hv = host(random_normal(n, 11), dt, {R, C}), ov = host(random_normal(n, 12, 2.0), dt, {R, C});
  const engine::Tensor w1 = host(random_normal(C, 13, 0.5), DType::kF32, {C}),
                       w2 = host(random_normal(C, 14, 0.5), DType::kF32, {C});
  const engine::Tensor seed = host(random_normal(n, 15), dt, {R, C});
  auto values = [&](const engine::Tensor& t) {
    std::vector<double> v(size_t(t.numel()));
    for (size_t i = 0; i < v.size(); ++i) v[i] = engine::load_f64(t.data(), t.dtype(), int64_t(i));
    return v;
  };
  const std::pair<bool, bool> grads[] = {{true, true}, {false, true}, {true, false}};  // (h, o) need gradients
  for (bool next : {true, false}) {
    for (const auto& [h_grad, o_grad] : grads) {
      SCOPED_TRACE(std::string(next ? "entry norm" : "alone") + (h_grad ? ", h trains" : ", h constant") +
                   (o_grad ? ", o trains" : ", o constant"));
      std::vector<double> got[3], want[3];
      for (int fused = 0; fused < 2; ++fused) {
        autograd::Tape tape(eng);
        autograd::Var h = h_grad ? tape.leaf(hv, "h") : tape.constant(hv, "h"),
                      o = o_grad ? tape.leaf(ov, "o") : tape.constant(ov, "o");
        autograd::Var a = tape.constant(w1, "w1"), b = next ? tape.constant(w2, "w2") : autograd::Var();
        autograd::Var s, y;
        if (fused) {
          const autograd::ResidualNorm r = autograd::residual_rmsnorm(tape, h, o, a, b, 1e-6f);
          s = r.sum;
          y = r.normed;
          EXPECT_EQ(next, y.defined());
        } else {
          s = autograd::add(tape, h, autograd::rmsnorm(tape, o, a, 1e-6f));
          if (next) y = autograd::rmsnorm(tape, s, b, 1e-6f);
        }
        autograd::Var z = next ? autograd::add(tape, s, y) : autograd::scale(tape, s, 1.f);
        tape.backward(z, seed);
        std::vector<double>* out = fused ? got : want;
        out[0] = values(z.value());
        if (o_grad) out[1] = values(o.gref().slot()->grad);
        if (h_grad) out[2] = values(h.gref().slot()->grad);
      }
      EXPECT_EQ(got[0], want[0]);
      EXPECT_EQ(got[1], want[1]);
      EXPECT_EQ(got[2], want[2]);
      EXPECT_EQ(got[2].empty(), !h_grad);
      EXPECT_EQ(got[1].empty(), !o_grad);
    }
  }
}

}  // namespace
