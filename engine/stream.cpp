#include "engine/stream.h"

#include "engine/check.h"

namespace engine {

Stream::Stream() { CUDA_CHECK(cudaStreamCreateWithFlags(&s_, cudaStreamNonBlocking)); }
Stream::~Stream() { if (s_) cudaStreamDestroy(s_); }
void Stream::synchronize() const { CUDA_CHECK(cudaStreamSynchronize(s_)); }

Event::Event(bool timing) {
  CUDA_CHECK(cudaEventCreateWithFlags(&e_, timing ? cudaEventDefault : cudaEventDisableTiming));
}
Event::~Event() { if (e_) cudaEventDestroy(e_); }
void Event::record(cudaStream_t s) { CUDA_CHECK(cudaEventRecord(e_, s)); }
void Event::synchronize() const { CUDA_CHECK(cudaEventSynchronize(e_)); }
float Event::elapsed_ms(const Event& start, const Event& stop) {
  float ms = 0;
  CUDA_CHECK(cudaEventElapsedTime(&ms, start.e_, stop.e_));
  return ms;
}

}  // namespace engine
