// models/optimizer.h: one optimizer step over flat f32 parameters, in the order of transformers' Trainer
// with bitsandbytes' AdamW (SPEC.md §5.1, §5.3-§5.6, §5.8):
//   sumsq = ||g||^2 (loss-scaled grads) -> norm = sqrt(sumsq)/S, coef = min(1, max_norm/(norm+1e-6)),
//   found_inf; AdamW with grad scale coef/S, skipped on device when found_inf; then the one host read of
//   the step (found_inf, norm) decides the loss scaler and whether the schedule advances.
//   The state (m, v) lives in one managed allocation when paged (prefetched before each step).
#pragma once
#include <memory>
#include <string>

#include "engine/engine.h"
#include "engine/managed_buffer.h"
#include "engine/schedule.h"
#include "engine/step_timer.h"

namespace models {

struct OptimizerConfig {
  double lr = 5e-4;                  // peak learning rate
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8;
  double weight_decay = 0.0;
  double max_grad_norm = 1.0;        // <= 0: no clipping
  engine::LrSchedule schedule = engine::LrSchedule::kCosine;
  int64_t warmup_steps = 0, total_steps = 1;
  bool paged = false;                // m and v in CUDA managed memory (ignored on the CPU backend)
  bool loss_scaling = false;         // fp16: torch's dynamic GradScaler
};

struct StepResult {
  bool skipped = false;  // inf/NaN gradients: no update, schedule not advanced
  float grad_norm = 0;   // pre-clip global norm of the unscaled gradients
  double lr = 0;         // the learning rate this step used
};

class Optimizer {
 public:
  Optimizer(engine::Engine& eng, engine::Tensor params, engine::Tensor grads, const OptimizerConfig& cfg);

  float loss_scale() const { return scaler_.current(); }
  int64_t steps_taken() const { return opt_steps_; }  // non-skipped steps (AdamW's and the schedule's t)
  int64_t skipped_steps() const { return scaler_.skipped_steps; }
  // Unscale, clip, check, update, zero the gradients. Synchronizes once (reads found_inf and the norm).
  // timer (optional): marks optimizer start/end around the device work, before the host read.
  StepResult step(engine::StepTimer* timer = nullptr);

  // Checkpoint: optimizer.safetensors (exp_avg, exp_avg_sq) + the counters as JSON text.
  void save(const std::string& dir) const;
  void load(const std::string& dir);
  std::string state_json() const;
  void load_state_json(const std::string& json_text, const std::string& source);

  // Forces the paged state to host residency (tests; a no-op when unpaged).
  void evict_state();

 private:
  engine::Engine& eng_;
  engine::Tensor params_, grads_, m_, v_;
  OptimizerConfig cfg_;
  std::unique_ptr<engine::ManagedBuffer> paged_;
  engine::Tensor sumsq_, gscale_, norm_, found_inf_, norm_ws_, host_f_, host_i_;
  engine::LossScaler scaler_;
  int64_t opt_steps_ = 0;
};

}  // namespace models
