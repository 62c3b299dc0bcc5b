// engine/allocator.h: host and CUDA allocators with one interface, and their byte statistics.
//   CudaCachingAllocator keeps freed blocks in a size-ordered free list and hands them out again, so a
//   training step whose allocation pattern repeats reaches a steady state with no cudaMalloc/cudaFree
//   (the idea of PyTorch's CUDACachingAllocator, much simplified: no block splitting, one stream).
//   Stream semantics: blocks are reused in program order on the engine's compute stream; a block freed
//   while another stream still reads it must be kept alive by the caller until that stream is joined.
#pragma once
#include <cstddef>
#include <cstdint>
#include <map>
#include <mutex>
#include <unordered_map>

#include "engine/tensor.h"

namespace engine {

struct AllocatorStats {
  size_t current_bytes = 0;   // handed out and not yet returned
  size_t peak_bytes = 0;      // max of current_bytes since the last reset_peak()
  size_t reserved_bytes = 0;  // held from the system (handed out + cached)
  int64_t num_allocs = 0;     // allocate() calls
  int64_t num_system_allocs = 0;  // cudaMalloc / aligned_alloc calls (0 new ones in steady state)
};

class Allocator {
 public:
  virtual ~Allocator() = default;
  virtual void* allocate(size_t bytes) = 0;
  virtual void deallocate(void* p) = 0;
  virtual Device device() const = 0;
  AllocatorStats stats() const { std::lock_guard<std::mutex> l(mu_); return stats_; }
  void reset_peak() { std::lock_guard<std::mutex> l(mu_); stats_.peak_bytes = stats_.current_bytes; }

 protected:
  mutable std::mutex mu_;
  AllocatorStats stats_;
};

class HostAllocator final : public Allocator {
 public:
  ~HostAllocator() override;
  void* allocate(size_t bytes) override;
  void deallocate(void* p) override;
  Device device() const override { return Device::kCPU; }

 private:
  std::unordered_map<void*, size_t> live_;
};

class CudaCachingAllocator final : public Allocator {
 public:
  CudaCachingAllocator() = default;
  ~CudaCachingAllocator() override;
  CudaCachingAllocator(const CudaCachingAllocator&) = delete;
  CudaCachingAllocator& operator=(const CudaCachingAllocator&) = delete;
  void* allocate(size_t bytes) override;
  void deallocate(void* p) override;
  Device device() const override { return Device::kCUDA; }
  void release_cached();  // cudaFree every cached block (e.g. before a large managed allocation)

 private:
  static size_t round_size(size_t bytes);
  std::multimap<size_t, void*> free_;           // cached blocks by size
  std::unordered_map<void*, size_t> live_;      // handed-out blocks
};

}  // namespace engine
