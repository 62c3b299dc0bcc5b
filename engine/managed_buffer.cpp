#include "engine/managed_buffer.h"

#include "engine/check.h"

namespace engine {
namespace {

void prefetch(void* p, size_t bytes, bool to_host, int device, cudaStream_t s) {
#if CUDART_VERSION >= 12020
  cudaMemLocation loc{};
  loc.type = to_host ? cudaMemLocationTypeHost : cudaMemLocationTypeDevice;
  loc.id = to_host ? 0 : device;
#if CUDART_VERSION >= 13000
  CUDA_CHECK(cudaMemPrefetchAsync(p, bytes, loc, 0, s));
#else
  CUDA_CHECK(cudaMemPrefetchAsync_v2(p, bytes, loc, 0, s));
#endif
#else
  CUDA_CHECK(cudaMemPrefetchAsync(p, bytes, to_host ? cudaCpuDeviceId : device, s));
#endif
}

}  // namespace

ManagedBuffer::ManagedBuffer(size_t bytes, int device) : bytes_(bytes), device_(device) {
  size_t free_b = 0, total_b = 0;
  CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
  ENGINE_CHECK(bytes <= free_b, "paged optimizer state needs ", bytes, " bytes of managed memory but only ", free_b,
               " bytes are free on the GPU; use optim: adamw (unpaged) or a smaller LoRA rank");
  int concurrent = 0;
  CUDA_CHECK(cudaDeviceGetAttribute(&concurrent, cudaDevAttrConcurrentManagedAccess, device));
  concurrent_ = concurrent != 0;
  // cudaMemAttachGlobal: kernels on any stream may touch it (bitsandbytes attaches to the host first; the
  // difference is only the initial residency).
  CUDA_CHECK(cudaMallocManaged(&ptr_, bytes == 0 ? 1 : bytes, cudaMemAttachGlobal));
}

ManagedBuffer::~ManagedBuffer() {
  if (ptr_) cudaFree(ptr_);
}

void ManagedBuffer::prefetch_to_device(cudaStream_t stream) {
  if (concurrent_ && bytes_ > 0) prefetch(ptr_, bytes_, false, device_, stream);
}

void ManagedBuffer::evict_to_host(cudaStream_t stream) {
  if (concurrent_ && bytes_ > 0) prefetch(ptr_, bytes_, true, device_, stream);
}

}  // namespace engine
