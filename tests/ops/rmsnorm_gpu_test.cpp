// tests/ops/rmsnorm_gpu_test.cpp (label gpu): CUDA forward/backward against the CPU reference.
#include "ops/rmsnorm.h"
#include "tests/test_util.h"

namespace {

using namespace test;

struct RmsNormCase {
  int64_t rows, cols;
  DType dtype;
};

class RmsNormGpu : public ::testing::TestWithParam<RmsNormCase> {};

TEST_P(RmsNormGpu, ForwardAndBackwardMatchCpu) {
  REQUIRE_CUDA();
  const auto [rows, cols, dt] = GetParam();
  Engine eng;
  const ops::RmsNormParams p{rows, cols, 1e-6f};
  const auto xv = random_normal(rows * cols, 11), wv = random_normal(cols, 12, 0.5),
             gv = random_normal(rows * cols, 13);
  auto run = [&](Device dev, std::vector<double>* y_out, std::vector<double>* dx_out, std::vector<double>* dw_out,
                 bool twice) {
    TestTensor x(eng, dev, {rows, cols}, dt, xv), w(eng, dev, {cols}, DType::kF32, wv),
        dy(eng, dev, {rows, cols}, dt, gv);
    TestTensor y(eng, dev, {rows, cols}, dt), rstd(eng, dev, {rows}, DType::kF32), dx(eng, dev, {rows, cols}, dt);
    TestTensor dw(eng, dev, {cols}, DType::kF32, std::vector<double>(cols, 0.0));
    ops::rmsnorm_forward(y, rstd, x, w, p, eng);
    ops::rmsnorm_backward(dx, ops::Accum::kSet, dw, dy, x, w, rstd, p, eng);
    if (twice) ops::rmsnorm_backward(dx, ops::Accum::kAdd, dw, dy, x, w, rstd, p, eng);
    *y_out = y.values(); *dx_out = dx.values(); *dw_out = dw.values();
    EXPECT_GUARDS_INTACT(y); EXPECT_GUARDS_INTACT(dx); EXPECT_GUARDS_INTACT(dw); EXPECT_GUARDS_INTACT(rstd);
  };
  std::vector<double> y_ref, dx_ref, dw_ref, y, dx, dw;
  run(Device::kCPU, &y_ref, &dx_ref, &dw_ref, false);
  run(Device::kCUDA, &y, &dx, &dw, false);
  EXPECT_ALL_FINITE(y); EXPECT_ALL_FINITE(dx); EXPECT_ALL_FINITE(dw);
  EXPECT_CLOSE(y, y_ref, tol_for(dt));
  EXPECT_CLOSE(dx, dx_ref, tol_for(dt));
  // dw sums rows*cols products in f32 with atomics: relative error grows like sqrt(rows) ulps.
  EXPECT_CLOSE(dw, dw_ref, (Tol{1e-3, 1e-3}));
  // Accumulate twice: dx (kAdd) and dw (+=) double.
  std::vector<double> y2, dx2, dw2;
  run(Device::kCUDA, &y2, &dx2, &dw2, true);
  for (auto& v : dx) v *= 2;
  for (auto& v : dw) v *= 2;
  EXPECT_CLOSE(dx2, dx, tol_for(dt));
  EXPECT_CLOSE(dw2, dw, (Tol{1e-4, 1e-4}));
  // dx only (frozen weight: the warp-per-row kernel when cols % 8 == 0): set, then add.
  TestTensor x(eng, Device::kCUDA, {rows, cols}, dt, xv), w(eng, Device::kCUDA, {cols}, DType::kF32, wv);
  TestTensor g(eng, Device::kCUDA, {rows, cols}, dt, gv), yy(eng, Device::kCUDA, {rows, cols}, dt);
  TestTensor rstd(eng, Device::kCUDA, {rows}, DType::kF32), dxo(eng, Device::kCUDA, {rows, cols}, dt);
  ops::rmsnorm_forward(yy, rstd, x, w, p, eng);
  ops::rmsnorm_backward(dxo, ops::Accum::kSet, TensorView{}, g, x, w, rstd, p, eng);
  EXPECT_CLOSE(dxo.values(), dx_ref, tol_for(dt));
  ops::rmsnorm_backward(dxo, ops::Accum::kAdd, TensorView{}, g, x, w, rstd, p, eng);
  EXPECT_CLOSE(dxo.values(), dx, tol_for(dt));  // dx was doubled above
  EXPECT_GUARDS_INTACT(dxo);
}

std::string case_name(const ::testing::TestParamInfo<RmsNormCase>& i) {
  return "r" + std::to_string(i.param.rows) + "_c" + std::to_string(i.param.cols) + "_" +
         engine::dtype_name(i.param.dtype);
}

INSTANTIATE_TEST_SUITE_P(Shapes, RmsNormGpu,
                         ::testing::Values(RmsNormCase{1, 8, DType::kF32}, RmsNormCase{7, 45, DType::kF32},
                                           RmsNormCase{5, 33, DType::kF16}, RmsNormCase{3, 4097, DType::kBF16},
                                           RmsNormCase{64, 2304, DType::kBF16}, RmsNormCase{64, 2304, DType::kF16},
                                           RmsNormCase{512, 2304, DType::kF32}, RmsNormCase{9, 4096, DType::kBF16},
                                           RmsNormCase{6, 4104, DType::kBF16}, RmsNormCase{5, 256, DType::kF16},
                                           RmsNormCase{3, 776, DType::kBF16}),
                         case_name);

}  // namespace
