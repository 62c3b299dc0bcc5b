// tests/engine/schedule_cpu_test.cpp (label cpu): LR schedules, warmup and the loss scaler against
// hand-computed values (SPEC.md §5.3, §5.8).
#include <cmath>

#include "engine/schedule.h"
#include "tests/test_util.h"

namespace {

using namespace engine;

TEST(Schedule, NotebookCosineWithWarmup) {
  // max_steps 15, warmup_ratio 0.03 -> W = ceil(0.45) = 1: lr_0 = 0, lr_k = 0.5(1 + cos(pi (k-1)/14)).
  const int64_t W = warmup_steps(0.03, 0, 15);
  EXPECT_EQ(W, 1);
  EXPECT_EQ(lr_factor(LrSchedule::kCosine, 0, W, 15), 0.0);
  EXPECT_DOUBLE_EQ(lr_factor(LrSchedule::kCosine, 1, W, 15), 1.0);
  for (int k = 1; k < 15; ++k)
    EXPECT_NEAR(lr_factor(LrSchedule::kCosine, k, W, 15), 0.5 * (1 + std::cos(M_PI * (k - 1) / 14.0)), 1e-15);
  EXPECT_NEAR(lr_factor(LrSchedule::kCosine, 8, W, 15), 0.5 * (1 + std::cos(M_PI * 0.5)), 1e-15);
  EXPECT_EQ(warmup_steps(0.03, 5, 15), 5);  // explicit warmup_steps wins
  EXPECT_EQ(warmup_steps(0.1, 0, 100), 10);
}

TEST(Schedule, LinearAndConstant) {
  EXPECT_DOUBLE_EQ(lr_factor(LrSchedule::kLinear, 2, 4, 10), 0.5);
  EXPECT_DOUBLE_EQ(lr_factor(LrSchedule::kLinear, 4, 4, 10), 1.0);
  EXPECT_DOUBLE_EQ(lr_factor(LrSchedule::kLinear, 7, 4, 10), 0.5);
  EXPECT_DOUBLE_EQ(lr_factor(LrSchedule::kLinear, 10, 4, 10), 0.0);
  EXPECT_DOUBLE_EQ(lr_factor(LrSchedule::kConstant, 0, 4, 10), 1.0);
  EXPECT_DOUBLE_EQ(lr_factor(LrSchedule::kConstantWithWarmup, 1, 4, 10), 0.25);
  EXPECT_DOUBLE_EQ(lr_factor(LrSchedule::kConstantWithWarmup, 9, 4, 10), 1.0);
  EXPECT_THROW(parse_lr_schedule("cosine_with_restarts"), Error);
}

TEST(LossScaler, BacksOffAndGrowsLikeGradScaler) {
  LossScaler s;
  s.enabled = true;
  s.growth_interval = 3;
  EXPECT_EQ(s.current(), 65536.f);
  s.update(true);
  EXPECT_EQ(s.current(), 32768.f);
  EXPECT_EQ(s.skipped_steps, 1);
  s.update(false); s.update(false);
  EXPECT_EQ(s.current(), 32768.f);
  s.update(false);
  EXPECT_EQ(s.current(), 65536.f);  // three clean steps
  s.update(false); s.update(true); s.update(false); s.update(false);
  EXPECT_EQ(s.current(), 32768.f);  // the overflow reset the tracker
  LossScaler off;
  off.update(true);
  EXPECT_EQ(off.current(), 1.f);
  EXPECT_EQ(off.skipped_steps, 0);
}

}  // namespace
