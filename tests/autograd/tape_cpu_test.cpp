// tests/autograd/tape_cpu_test.cpp (label cpu): BackwardCtx::pass, the gradient hand-over of pass-through nodes.
#include "autograd/tape.h"
#include "ops/elementwise.h"
#include "tests/test_util.h"

namespace {

using namespace test;
using autograd::BackwardCtx;
using autograd::Tape;
using autograd::Var;

engine::Tensor filled(Engine& eng, DType dt, int64_t n, double v) {
  engine::Tensor t = eng.empty({n}, dt);
  for (int64_t i = 0; i < n; ++i) engine::store_f64(t.data(), dt, i, v);
  return t;
}

std::vector<double> values(const engine::Tensor& t) {
  std::vector<double> v(size_t(t.numel()));
  for (size_t i = 0; i < v.size(); ++i) v[i] = engine::load_f64(t.data(), t.dtype(), int64_t(i));
  return v;
}

// y = x through a pass-through node; optionally z = y + x as well. Then z's node runs first in backward and
// writes dx, so y's node finds x written and adds (no hand-over); without z, x takes dy's buffer.
TEST(TapeCpu, PassHandsTheBufferOnlyToAnUnwrittenActivation) {
  Engine eng({engine::Backend::kCPU});
  const DType dt = DType::kF32;
  for (bool x_used_later : {false, true}) {
    SCOPED_TRACE(x_used_later ? "x used later" : "x used once");
    Tape tape(eng);
    Var x = tape.leaf(filled(eng, dt, 4, 1.0), "x");
    Var y = tape.output({4}, dt, "y", true);
    ops::accumulate(y.t(), x.t(), 1.f, ops::Accum::kSet, eng);
    bool handed = false;
    autograd::GradRef dx = x, dy = y;
    tape.record("identity", {y}, [dx, dy, &handed](BackwardCtx& g) {
      handed = g.pass(dy, dx);
      if (!handed) ops::accumulate(g.grad(dx), g.grad(dy), 1.f, g.mode(dx), g.engine());
    });
    Var root = y;
    if (x_used_later) {
      root = tape.output({4}, dt, "z", true);
      ops::add(root.t(), y.t(), x.t(), eng);
      autograd::GradRef dz = root;
      tape.record("add", {root}, [dx, dy, dz](BackwardCtx& g) {
        ops::accumulate(g.grad(dy), g.grad(dz), 1.f, g.mode(dy), g.engine());
        ops::accumulate(g.grad(dx), g.grad(dz), 1.f, g.mode(dx), g.engine());
      });
    }
    tape.backward(root, filled(eng, dt, 4, 3.0));
    EXPECT_EQ(handed, !x_used_later);
    EXPECT_EQ(values(x.gref().slot()->grad), std::vector<double>(4, x_used_later ? 6.0 : 3.0));
  }
}

TEST(TapeCpu, PassRefusesWhatCannotTakeTheBuffer) {
  Engine eng({engine::Backend::kCPU});
  Tape tape(eng);
  engine::Tensor pg = filled(eng, DType::kF32, 4, 0.5);
  Var p = tape.param(filled(eng, DType::kF32, 4, 1.0), pg, "p");
  Var small = tape.leaf(filled(eng, DType::kF32, 2, 1.0), "small");
  Var half = tape.leaf(filled(eng, DType::kBF16, 4, 1.0), "half");
  Var frozen = tape.constant(filled(eng, DType::kF32, 4, 1.0), "frozen");
  Var allocated = tape.leaf(filled(eng, DType::kF32, 4, 1.0), "allocated");
  Var fresh = tape.leaf(filled(eng, DType::kF32, 4, 1.0), "fresh");
  Var y = tape.output({4}, DType::kF32, "y", true);
  std::vector<bool> handed;
  const void* dy_buffer = nullptr;
  autograd::GradRef dp = p, ds = small, dh = half, df = frozen, da = allocated, dfresh = fresh, dy = y;
  tape.record("probe", {y}, [=, &handed, &dy_buffer](BackwardCtx& g) {
    dy_buffer = g.grad(dy).data;
    g.grad(da);                        // allocated but not yet written
    handed.push_back(g.pass(dy, dp));  // a parameter's gradient accumulates in its own buffer
    handed.push_back(g.pass(dy, ds));  // element counts differ
    handed.push_back(g.pass(dy, dh));  // dtypes differ
    handed.push_back(g.pass(dy, df));  // needs no gradient
    handed.push_back(g.pass(dy, da));  // has its own buffer already
    handed.push_back(g.pass(dy, dfresh));
    handed.push_back(g.pass(dy, dfresh));  // written now
  });
  tape.backward(y, filled(eng, DType::kF32, 4, 3.0));
  EXPECT_EQ(handed, (std::vector<bool>{false, false, false, false, false, true, false}));
  EXPECT_EQ(p.gref().slot()->grad.data(), pg.data());  // the parameter kept its buffer
  EXPECT_EQ(values(pg), std::vector<double>(4, 0.5));
  EXPECT_NE(allocated.gref().slot()->grad.data(), dy_buffer);
  EXPECT_EQ(fresh.gref().slot()->grad.data(), dy_buffer);  // the leaf kept y's buffer after y's was freed
  EXPECT_EQ(values(fresh.gref().slot()->grad), std::vector<double>(4, 3.0));
}

}  // namespace
