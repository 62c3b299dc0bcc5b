// engine/managed_buffer.h: one flat CUDA unified-memory allocation, for the paged optimizer state
// (SPEC.md §5.6). The driver may evict its pages to host memory under pressure, so training survives when
// activations need the room; prefetch_to_device() before the optimizer step brings them back in bulk.
//   Never asks for more managed memory than cudaMemGetInfo reports free (oversubscribing can hang a GPU).
//   evict_to_host() forces host residency (the test switch that proves paging changes no value).
#pragma once
#include <cuda_runtime.h>

#include <cstddef>

namespace engine {

class ManagedBuffer {
 public:
  ManagedBuffer(size_t bytes, int device);
  ~ManagedBuffer();
  ManagedBuffer(const ManagedBuffer&) = delete;
  ManagedBuffer& operator=(const ManagedBuffer&) = delete;

  void* data() const { return ptr_; }
  size_t bytes() const { return bytes_; }
  bool can_prefetch() const { return concurrent_; }  // prefetch is a no-op where the device cannot
  void prefetch_to_device(cudaStream_t stream);
  void evict_to_host(cudaStream_t stream);

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
  int device_ = 0;
  bool concurrent_ = false;
};

}  // namespace engine
