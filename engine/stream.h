// engine/stream.h: RAII CUDA stream and event, and an NVTX-free scope timer helper.
#pragma once
#include <cuda_runtime.h>

namespace engine {

class Stream {
 public:
  Stream();   // non-blocking stream on the current device
  ~Stream();
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;
  cudaStream_t get() const { return s_; }
  void synchronize() const;

 private:
  cudaStream_t s_ = nullptr;
};

class Event {
 public:
  explicit Event(bool timing = true);
  ~Event();
  Event(const Event&) = delete;
  Event& operator=(const Event&) = delete;
  void record(cudaStream_t s);
  void synchronize() const;
  cudaEvent_t get() const { return e_; }
  // Milliseconds between two recorded events (both must have timing enabled).
  static float elapsed_ms(const Event& start, const Event& stop);

 private:
  cudaEvent_t e_ = nullptr;
};

}  // namespace engine
