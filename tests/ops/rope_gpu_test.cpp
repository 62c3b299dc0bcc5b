// tests/ops/rope_gpu_test.cpp (label gpu): CUDA RoPE forward/backward against the CPU reference.
#include "ops/rope.h"
#include "tests/test_util.h"

namespace {

using namespace test;

enum class Pos { kArange, kPacked, kScattered };

// kArange: 0..N-1 (one unpadded sequence, or right padding: HF does not correct positions for padding).
// kPacked: sequences of lengths 100, 37, 300, 75, ... packed back to back, positions restarting at each.
// kScattered: arbitrary positions up to 8191 (angles up to 8191 rad on the k = 0 pair).
std::vector<double> make_positions(int64_t n, Pos kind) {
  std::vector<double> v(n);
  const int64_t lengths[] = {100, 37, 300, 75};
  const auto u = random_uniform(n, 31, 0, 8192);
  for (int64_t i = 0, start = 0, seg = 0; i < n; ++i) {
    if (kind == Pos::kPacked && i - start == lengths[seg % 4]) start = i, ++seg;
    v[i] = kind == Pos::kArange ? double(i) : kind == Pos::kPacked ? double(i - start) : double(int64_t(u[i]));
  }
  return v;
}

struct RopeCase {
  int64_t tokens, heads, head_dim;
  DType dtype;
  Pos pos;
};

class RopeGpu : public ::testing::TestWithParam<RopeCase> {};

TEST_P(RopeGpu, ForwardAndBackwardMatchCpu) {
  REQUIRE_CUDA();
  const auto [N, H, d, dt, kind] = GetParam();
  Engine eng;
  const ops::RopeParams p{N, H, d, 10000.f};
  const int64_t n = N * H * d;
  const auto xv = random_normal(n, 11), gv = random_normal(n, 12), pv = make_positions(N, kind);
  struct Out { std::vector<double> y, dx, dx2, y_inplace; };
  auto run = [&](Device dev) {
    Out o;
    TestTensor x(eng, dev, {N, H, d}, dt, xv), dy(eng, dev, {N, H, d}, dt, gv), pos(eng, dev, {N}, DType::kI32, pv);
    TestTensor y(eng, dev, {N, H, d}, dt), dx(eng, dev, {N, H, d}, dt);
    ops::rope_forward(y, x, pos, p, eng);
    ops::rope_backward(dx, ops::Accum::kSet, dy, pos, p, eng);
    o.y = y.values(); o.dx = dx.values();
    ops::rope_backward(dx, ops::Accum::kAdd, dy, pos, p, eng);
    o.dx2 = dx.values();
    ops::rope_forward(x, x, pos, p, eng);  // in place
    o.y_inplace = x.values();
    EXPECT_GUARDS_INTACT(y); EXPECT_GUARDS_INTACT(dx); EXPECT_GUARDS_INTACT(x);
    return o;
  };
  const Out ref = run(Device::kCPU), got = run(Device::kCUDA);
  EXPECT_ALL_FINITE(got.y); EXPECT_ALL_FINITE(got.dx); EXPECT_ALL_FINITE(got.dx2);
  // cos/sin: CUDA's cosf/sinf vs the C library's agree to ~1 f32 ulp; rounded to f16/bf16 they can differ by an
  // ulp of the dtype in rare elements, which tol_for's two ulps cover.
  EXPECT_CLOSE(got.y, ref.y, tol_for(dt));
  EXPECT_CLOSE(got.dx, ref.dx, tol_for(dt));
  EXPECT_CLOSE(got.dx2, ref.dx2, tol_for(dt));
  std::vector<double> twice = got.dx;
  for (auto& v : twice) v *= 2;
  EXPECT_CLOSE(got.dx2, twice, tol_for(dt));  // kAdd of the same gradient doubles it
  EXPECT_CLOSE(got.y_inplace, got.y, (Tol{0, 0}));  // in place is the same kernel on the same values
}

std::string case_name(const ::testing::TestParamInfo<RopeCase>& i) {
  const char* pos[] = {"arange", "packed", "scattered"};
  return "n" + std::to_string(i.param.tokens) + "_h" + std::to_string(i.param.heads) + "_d" +
         std::to_string(i.param.head_dim) + "_" + engine::dtype_name(i.param.dtype) + "_" + pos[int(i.param.pos)];
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, RopeGpu,
    ::testing::Values(RopeCase{7, 3, 6, DType::kF32, Pos::kScattered},       // scalar path, odd everything
                      RopeCase{5, 1, 10, DType::kBF16, Pos::kScattered},     // d/2 = 5: scalar path
                      RopeCase{9, 3, 64, DType::kF16, Pos::kScattered},
                      RopeCase{33, 2, 128, DType::kF32, Pos::kPacked},
                      RopeCase{17, 5, 256, DType::kBF16, Pos::kScattered},   // vector path, partial head chunk
                      RopeCase{512, 8, 256, DType::kBF16, Pos::kArange},     // Gemma-2-2B q, T = 512
                      RopeCase{512, 4, 256, DType::kBF16, Pos::kPacked},     // Gemma-2-2B k
                      RopeCase{512, 8, 256, DType::kF16, Pos::kPacked},
                      RopeCase{512, 4, 256, DType::kF16, Pos::kArange},
                      RopeCase{512, 8, 256, DType::kF32, Pos::kScattered}),
    case_name);

TEST(RopeGpuLayout, UnalignedViewTakesTheScalarPathWithSameResult) {
  // x and y one element past a 16-byte boundary force the one-element-per-thread kernel; it must give the
  // vector kernel's bits.
  REQUIRE_CUDA();
  Engine eng;
  const int64_t N = 64, H = 4, d = 256, n = N * H * d;
  const ops::RopeParams p{N, H, d, 10000.f};
  const auto xv = random_normal(n, 13);
  TestTensor pos(eng, Device::kCUDA, {N}, DType::kI32, make_positions(N, Pos::kScattered));
  TestTensor x(eng, Device::kCUDA, {n}, DType::kBF16, xv), y(eng, Device::kCUDA, {n}, DType::kBF16);
  std::vector<double> xpad(n + 1, 0.5);
  std::copy(xv.begin(), xv.end(), xpad.begin() + 1);
  TestTensor xu(eng, Device::kCUDA, {n + 1}, DType::kBF16, xpad), yu(eng, Device::kCUDA, {n + 1}, DType::kBF16);
  auto shifted = [&](const TestTensor& t) {
    TensorView v = t.view();
    v.data = static_cast<char*>(v.data) + 2;
    v.shape = Shape{n};
    return v;
  };
  ops::rope_forward(y, x, pos, p, eng);
  ops::rope_forward(shifted(yu), shifted(xu), pos, p, eng);
  std::vector<double> got = yu.values();
  got.erase(got.begin());  // element 0 is outside the shifted view: still poisoned
  EXPECT_CLOSE(got, y.values(), (Tol{0, 0}));
  EXPECT_GUARDS_INTACT(yu);
}

}  // namespace
