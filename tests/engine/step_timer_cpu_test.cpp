// tests/engine/step_timer_cpu_test.cpp (label cpu): StepTimer on the CPU backend (wall clock): phases
// summed over micro-batches, the head gap, reset on read, and the mark-order errors.
#include <chrono>
#include <thread>

#include "engine/step_timer.h"
#include "tests/test_util.h"

namespace {

using engine::StepMark;

void sleep_ms(int ms) { std::this_thread::sleep_for(std::chrono::milliseconds(ms)); }

TEST(StepTimerCpu, SumsPhasesOverMicroBatches) {
  engine::Engine eng({engine::Backend::kCPU});
  engine::StepTimer t(eng);
  for (int mb = 0; mb < 2; ++mb) {
    t.mark(StepMark::kForwardStart);
    sleep_ms(30);
    t.mark(StepMark::kForwardEnd);
    sleep_ms(10);
    t.mark(StepMark::kBackwardStart);
    sleep_ms(20);
    t.mark(StepMark::kBackwardEnd);
  }
  t.mark(StepMark::kOptimizerStart);
  sleep_ms(15);
  t.mark(StepMark::kOptimizerEnd);
  const engine::StepTimes s = t.read();
  EXPECT_EQ(s.micro_batches, 2);
  EXPECT_EQ(s.optimizer_steps, 1);
  // sleep_for sleeps at least as long as asked; the upper bounds allow a loaded machine.
  EXPECT_GE(s.forward_s, 0.060);
  EXPECT_GE(s.head_s, 0.020);
  EXPECT_GE(s.backward_s, 0.040);
  EXPECT_GE(s.optimizer_s, 0.015);
  EXPECT_LT(s.forward_s, 0.060 + 0.5);
  EXPECT_GE(s.span_s, s.forward_s + s.head_s + s.backward_s + s.optimizer_s);
  EXPECT_LT(s.forward_s, s.span_s);
  EXPECT_EQ(t.num_marks(), 0);  // read() forgets the step
  const engine::StepTimes empty = t.read();
  EXPECT_EQ(empty.micro_batches, 0);
  EXPECT_EQ(empty.span_s, 0);
}

TEST(StepTimerCpu, OptimizerOnlyAndBackToBackSteps) {
  engine::Engine eng({engine::Backend::kCPU});
  engine::StepTimer t(eng);
  t.mark(StepMark::kOptimizerStart);
  t.mark(StepMark::kOptimizerEnd);
  t.mark(StepMark::kForwardStart);  // a new step may follow an optimizer end without a read
  t.mark(StepMark::kForwardEnd);
  t.mark(StepMark::kBackwardStart);
  t.mark(StepMark::kBackwardEnd);
  const engine::StepTimes s = t.read();
  EXPECT_EQ(s.micro_batches, 1);
  EXPECT_EQ(s.optimizer_steps, 1);
}

TEST(StepTimerCpu, RejectsMarksOutOfOrder) {
  engine::Engine eng({engine::Backend::kCPU});
  engine::StepTimer t(eng);
  EXPECT_THROW(t.mark(StepMark::kForwardEnd), engine::Error);      // nothing started
  EXPECT_THROW(t.mark(StepMark::kBackwardStart), engine::Error);
  EXPECT_THROW(t.mark(StepMark::kOptimizerEnd), engine::Error);
  t.mark(StepMark::kForwardStart);
  EXPECT_THROW(t.mark(StepMark::kForwardStart), engine::Error);    // forward not ended
  EXPECT_THROW(t.mark(StepMark::kOptimizerStart), engine::Error);  // in the middle of a micro-batch
  EXPECT_THROW(t.read(), engine::Error);                           // read mid-phase
  t.mark(StepMark::kForwardEnd);
  EXPECT_THROW(t.mark(StepMark::kBackwardEnd), engine::Error);     // backward not started
  EXPECT_THROW(t.read(), engine::Error);
  t.mark(StepMark::kBackwardStart);
  t.mark(StepMark::kBackwardEnd);
  EXPECT_NO_THROW(t.read());
  try {
    t.mark(StepMark::kBackwardEnd);
    FAIL() << "expected an error";
  } catch (const engine::Error& e) {
    EXPECT_NE(std::string(e.what()).find("backward end"), std::string::npos) << e.what();
  }
}

}  // namespace
