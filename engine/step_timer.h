// engine/step_timer.h: where a training step's time goes, without host syncs inside the step.
//   The model and the optimizer call mark() at phase boundaries; on CUDA each mark records an event on the
//   engine's stream (no sync), on the CPU backend it reads the wall clock. read(), once after the step
//   (the optimizer already synchronizes there), waits for the last event and sums the phases over the
//   step's micro-batches:
//     forward   = ForwardStart -> ForwardEnd      (embedding, every layer, final norm)
//     head      = ForwardEnd -> BackwardStart     (fused LM head + softcap + CE, its own forward and backward)
//     backward  = BackwardStart -> BackwardEnd    (the tape, recomputation included)
//     optimizer = OptimizerStart -> OptimizerEnd  (norm, clip, AdamW, zeroing the gradients)
//     span      = first mark -> last mark         (GPU timeline: includes idle gaps between the phases)
//   Marks must come in that order (any number of micro-batches, then the optimizer); anything else is an
//   engine::Error. Events come from a pool that grows to one step's marks and is reused.
#pragma once
#include <chrono>
#include <cstdint>
#include <memory>
#include <vector>

#include "engine/engine.h"
#include "engine/stream.h"

namespace engine {

enum class StepMark : uint8_t {
  kForwardStart, kForwardEnd, kBackwardStart, kBackwardEnd, kOptimizerStart, kOptimizerEnd
};
const char* step_mark_name(StepMark m);

struct StepTimes {
  double forward_s = 0, head_s = 0, backward_s = 0, optimizer_s = 0;  // summed over micro-batches
  double span_s = 0;                                                  // first mark -> last mark
  int64_t micro_batches = 0;                                          // ForwardStart marks
  int64_t optimizer_steps = 0;                                        // OptimizerStart marks
};

class StepTimer {
 public:
  explicit StepTimer(Engine& eng) : eng_(eng) {}
  StepTimer(const StepTimer&) = delete;
  StepTimer& operator=(const StepTimer&) = delete;

  void mark(StepMark m);
  // Waits for the last mark, returns the phase times and forgets the marks. No marks: all zero.
  StepTimes read();
  int64_t num_marks() const { return int64_t(kinds_.size()); }

 private:
  Engine& eng_;
  std::vector<StepMark> kinds_;
  std::vector<std::unique_ptr<Event>> events_;                   // CUDA: pool, events_[i] is mark i
  std::vector<std::chrono::steady_clock::time_point> wall_;     // CPU backend
};

}  // namespace engine
