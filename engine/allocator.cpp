#include "engine/allocator.h"

#include <cuda_runtime.h>

#include <cstdlib>

namespace engine {

Tensor Tensor::empty(Shape shape, DType dtype, Allocator& alloc) {
  TensorView v;
  v.dtype = dtype;
  v.shape = shape;
  v.device = alloc.device();
  const size_t bytes = v.nbytes();
  v.data = alloc.allocate(bytes == 0 ? 1 : bytes);
  Allocator* a = &alloc;
  return Tensor(v, std::shared_ptr<void>(v.data, [a](void* p) { a->deallocate(p); }));
}

// ---- host ----------------------------------------------------------------------------------------
HostAllocator::~HostAllocator() {
  for (auto& kv : live_) std::free(kv.first);
}

void* HostAllocator::allocate(size_t bytes) {
  const size_t rounded = (bytes + 63) / 64 * 64;
  void* p = std::aligned_alloc(64, rounded);
  ENGINE_CHECK(p != nullptr, "host allocation of ", bytes, " bytes failed");
  std::lock_guard<std::mutex> l(mu_);
  live_[p] = rounded;
  stats_.current_bytes += rounded;
  stats_.reserved_bytes += rounded;
  stats_.peak_bytes = std::max(stats_.peak_bytes, stats_.current_bytes);
  ++stats_.num_allocs;
  ++stats_.num_system_allocs;
  return p;
}

void HostAllocator::deallocate(void* p) {
  std::lock_guard<std::mutex> l(mu_);
  auto it = live_.find(p);
  if (it == live_.end()) return;
  stats_.current_bytes -= it->second;
  stats_.reserved_bytes -= it->second;
  live_.erase(it);
  std::free(p);
}

// ---- CUDA ----------------------------------------------------------------------------------------
CudaCachingAllocator::~CudaCachingAllocator() {
  // Blocks still handed out belong to tensors that outlive the engine: a caller bug, but not worth a crash.
  release_cached();
}

size_t CudaCachingAllocator::round_size(size_t bytes) {
  // 512 B granularity keeps every block aligned for 16-byte vector loads and cuBLASLt.
  return (bytes + 511) / 512 * 512;
}

void* CudaCachingAllocator::allocate(size_t bytes) {
  const size_t size = round_size(bytes);
  std::lock_guard<std::mutex> l(mu_);
  ++stats_.num_allocs;
  // Best fit among cached blocks, but never waste more than a quarter of the block on a small request.
  auto it = free_.lower_bound(size);
  void* p = nullptr;
  size_t got = 0;
  if (it != free_.end() && it->first <= size + size / 4) {
    p = it->second;
    got = it->first;
    free_.erase(it);
  } else {
    cudaError_t e = cudaMalloc(&p, size);
    if (e == cudaErrorMemoryAllocation) {  // out of memory: give the cache back and try once more
      (void)cudaGetLastError();
      for (auto& kv : free_) { CUDA_CHECK(cudaFree(kv.second)); stats_.reserved_bytes -= kv.first; }
      free_.clear();
      e = cudaMalloc(&p, size);
    }
    if (e != cudaSuccess) {
      (void)cudaGetLastError();
      throw Error(str_cat("CUDA out of memory: could not allocate ", size, " bytes (",
                          stats_.current_bytes, " bytes in use, ", stats_.reserved_bytes, " reserved)"));
    }
    got = size;
    stats_.reserved_bytes += size;
    ++stats_.num_system_allocs;
  }
  live_[p] = got;
  stats_.current_bytes += got;
  stats_.peak_bytes = std::max(stats_.peak_bytes, stats_.current_bytes);
  return p;
}

void CudaCachingAllocator::deallocate(void* p) {
  std::lock_guard<std::mutex> l(mu_);
  auto it = live_.find(p);
  if (it == live_.end()) return;
  stats_.current_bytes -= it->second;
  free_.emplace(it->second, p);
  live_.erase(it);
}

void CudaCachingAllocator::release_cached() {
  std::lock_guard<std::mutex> l(mu_);
  for (auto& kv : free_) {
    cudaFree(kv.second);  // no CUDA_CHECK: also runs from the destructor at exit
    stats_.reserved_bytes -= kv.first;
  }
  free_.clear();
}

}  // namespace engine
