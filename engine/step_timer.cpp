#include "engine/step_timer.h"

namespace engine {

const char* step_mark_name(StepMark m) {
  switch (m) {
    case StepMark::kForwardStart: return "forward start";
    case StepMark::kForwardEnd: return "forward end";
    case StepMark::kBackwardStart: return "backward start";
    case StepMark::kBackwardEnd: return "backward end";
    case StepMark::kOptimizerStart: return "optimizer start";
    case StepMark::kOptimizerEnd: return "optimizer end";
  }
  return "?";
}

namespace {

// A mark that starts a phase may follow only a finished one; an end follows its own start.
bool allowed_after(StepMark m, const StepMark* prev) {
  const bool boundary = prev == nullptr || *prev == StepMark::kBackwardEnd || *prev == StepMark::kOptimizerEnd;
  switch (m) {
    case StepMark::kForwardStart:
    case StepMark::kOptimizerStart: return boundary;
    case StepMark::kForwardEnd: return prev && *prev == StepMark::kForwardStart;
    case StepMark::kBackwardStart: return prev && *prev == StepMark::kForwardEnd;
    case StepMark::kBackwardEnd: return prev && *prev == StepMark::kBackwardStart;
    case StepMark::kOptimizerEnd: return prev && *prev == StepMark::kOptimizerStart;
  }
  return false;
}

}  // namespace

void StepTimer::mark(StepMark m) {
  const StepMark* prev = kinds_.empty() ? nullptr : &kinds_.back();
  ENGINE_CHECK(allowed_after(m, prev), "StepTimer: mark '", step_mark_name(m), "' cannot follow ",
               prev ? step_mark_name(*prev) : "nothing");
  const size_t i = kinds_.size();
  kinds_.push_back(m);
  if (eng_.is_cuda()) {
    if (events_.size() <= i) events_.push_back(std::make_unique<Event>(/*timing=*/true));
    events_[i]->record(eng_.stream());
  } else {
    wall_.push_back(std::chrono::steady_clock::now());
  }
}

StepTimes StepTimer::read() {
  StepTimes t;
  const size_t n = kinds_.size();
  if (n == 0) return t;
  ENGINE_CHECK(kinds_.back() == StepMark::kBackwardEnd || kinds_.back() == StepMark::kOptimizerEnd,
               "StepTimer: read() in the middle of a phase (last mark: ", step_mark_name(kinds_.back()), ")");
  if (eng_.is_cuda()) events_[n - 1]->synchronize();  // events complete in stream order
  auto seconds = [&](size_t a, size_t b) {
    if (eng_.is_cuda()) return double(Event::elapsed_ms(*events_[a], *events_[b])) * 1e-3;
    return std::chrono::duration<double>(wall_[b] - wall_[a]).count();
  };
  for (size_t i = 0; i < n; ++i) {
    switch (kinds_[i]) {
      case StepMark::kForwardStart: ++t.micro_batches; break;
      case StepMark::kForwardEnd: t.forward_s += seconds(i - 1, i); break;
      case StepMark::kBackwardStart: t.head_s += seconds(i - 1, i); break;
      case StepMark::kBackwardEnd: t.backward_s += seconds(i - 1, i); break;
      case StepMark::kOptimizerStart: ++t.optimizer_steps; break;
      case StepMark::kOptimizerEnd: t.optimizer_s += seconds(i - 1, i); break;
    }
  }
  t.span_s = seconds(0, n - 1);
  kinds_.clear();
  wall_.clear();
  return t;
}

}  // namespace engine
