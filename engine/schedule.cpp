#include "engine/schedule.h"

#include <algorithm>
#include <cmath>

#include "engine/check.h"

namespace engine {

LrSchedule parse_lr_schedule(const std::string& name) {
  if (name == "cosine") return LrSchedule::kCosine;
  if (name == "linear") return LrSchedule::kLinear;
  if (name == "constant") return LrSchedule::kConstant;
  if (name == "constant_with_warmup") return LrSchedule::kConstantWithWarmup;
  throw Error("unknown lr_scheduler_type '" + name + "' (cosine, linear, constant, constant_with_warmup)");
}

int64_t warmup_steps(double warmup_ratio, int64_t warmup, int64_t total) {
  if (warmup > 0) return warmup;
  return int64_t(std::ceil(double(total) * warmup_ratio));
}

double lr_factor(LrSchedule kind, int64_t s, int64_t w, int64_t total) {
  if (kind == LrSchedule::kConstant) return 1.0;
  if (s < w) return double(s) / double(std::max<int64_t>(1, w));
  switch (kind) {
    case LrSchedule::kCosine: {
      const double progress = double(s - w) / double(std::max<int64_t>(1, total - w));
      return std::max(0.0, 0.5 * (1.0 + std::cos(M_PI * 2.0 * 0.5 * progress)));
    }
    case LrSchedule::kLinear:
      return std::max(0.0, double(total - s) / double(std::max<int64_t>(1, total - w)));
    default:
      return 1.0;
  }
}

void LossScaler::update(bool found_inf) {
  if (!enabled) return;
  if (found_inf) {
    scale *= 0.5f;
    growth_tracker = 0;
    ++skipped_steps;
    return;
  }
  if (++growth_tracker == growth_interval) {
    scale *= 2.f;
    growth_tracker = 0;
  }
}

}  // namespace engine
