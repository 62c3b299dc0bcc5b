// engine/schedule.h: the pieces of transformers' Trainer loop that are pure arithmetic (SPEC.md §5.3, §5.8):
// learning-rate schedules, warmup steps, and torch's dynamic loss scaler (GradScaler).
#pragma once
#include <cstdint>
#include <string>

namespace engine {

enum class LrSchedule { kCosine, kLinear, kConstant, kConstantWithWarmup };
LrSchedule parse_lr_schedule(const std::string& name);  // transformers' lr_scheduler_type names

// transformers 4.x: warmup_steps if > 0, else ceil(total * warmup_ratio).
int64_t warmup_steps(double warmup_ratio, int64_t warmup_steps, int64_t total_steps);

// LambdaLR's factor at optimizer step s (0-based count of non-skipped steps), in double like Python.
//   cosine: s/max(1,W) during warmup, then max(0, 0.5*(1 + cos(pi * (s-W)/max(1, total-W))))
//   linear: s/max(1,W), then max(0, (total-s)/max(1, total-W));  constant: 1;  constant_with_warmup: warmup then 1
double lr_factor(LrSchedule kind, int64_t step, int64_t warmup, int64_t total);

// torch.amp.GradScaler with accelerate's defaults: init 65536, x2 after 2000 clean steps, x0.5 and skip on
// inf/NaN. bf16/f32 training disables it (scale 1, never skips).
struct LossScaler {
  bool enabled = false;
  float scale = 65536.f;
  int64_t growth_tracker = 0;
  int64_t growth_interval = 2000;
  int64_t skipped_steps = 0;  // reported and logged
  float current() const { return enabled ? scale : 1.f; }
  void update(bool found_inf);  // after each optimizer step
};

}  // namespace engine
