// tests/engine/step_timer_gpu_test.cpp (label gpu): StepTimer with CUDA events: device work between marks
// is measured without a host sync in between, and read() waits for it.
#include <chrono>

#include "engine/step_timer.h"
#include "tests/test_util.h"

namespace {

using engine::StepMark;

TEST(StepTimerGpu, MeasuresDeviceWorkAsynchronously) {
  REQUIRE_CUDA();
  engine::Engine eng;
  engine::Tensor big = eng.empty({int64_t(1) << 30}, engine::DType::kU8);  // 1 GiB
  engine::StepTimer t(eng);
  eng.synchronize();
  const auto h0 = std::chrono::steady_clock::now();
  t.mark(StepMark::kForwardStart);
  for (int i = 0; i < 20; ++i) eng.zero(big);  // ~20 GiB of writes: several ms on any card
  t.mark(StepMark::kForwardEnd);
  t.mark(StepMark::kBackwardStart);
  t.mark(StepMark::kBackwardEnd);
  t.mark(StepMark::kOptimizerStart);
  eng.zero(big);
  t.mark(StepMark::kOptimizerEnd);
  const double host_enqueue = std::chrono::duration<double>(std::chrono::steady_clock::now() - h0).count();
  const engine::StepTimes s = t.read();
  EXPECT_GT(s.forward_s, 1e-3);
  EXPECT_GT(s.optimizer_s, s.forward_s / 40);
  EXPECT_LT(s.optimizer_s, s.forward_s);
  EXPECT_GE(s.head_s, 0);
  EXPECT_LT(s.head_s, 1e-3);  // two back-to-back events
  EXPECT_GE(s.span_s + 1e-6, s.forward_s + s.head_s + s.backward_s + s.optimizer_s);
  // The marks did not wait for the GPU: enqueueing took less than the work itself.
  EXPECT_LT(host_enqueue, s.forward_s);
  EXPECT_EQ(s.micro_batches, 1);
}

TEST(StepTimerGpu, ReusesItsEventsAcrossSteps) {
  REQUIRE_CUDA();
  engine::Engine eng;
  engine::StepTimer t(eng);
  for (int step = 0; step < 3; ++step) {
    for (int mb = 0; mb < 1 + step; ++mb) {
      t.mark(StepMark::kForwardStart);
      t.mark(StepMark::kForwardEnd);
      t.mark(StepMark::kBackwardStart);
      t.mark(StepMark::kBackwardEnd);
    }
    t.mark(StepMark::kOptimizerStart);
    t.mark(StepMark::kOptimizerEnd);
    EXPECT_EQ(t.read().micro_batches, 1 + step);
  }
}

}  // namespace
