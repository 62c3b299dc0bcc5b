// engine/engine.h: the Engine owns every piece of runtime state: the device choice, the compute stream,
// cuBLASLt, and the allocators (later NCCL). Nothing else holds mutable global state; ops receive the
// engine explicitly. Backend kAuto picks CUDA when a device is present and the CPU backend otherwise.
#pragma once
#include <cuda_runtime.h>

#include <memory>
#include <string>

#include "engine/allocator.h"
#include "engine/cublaslt.h"
#include "engine/stream.h"
#include "engine/tensor.h"

namespace engine {

class Communicator;  // engine/comm.h (NCCL stays out of this header)

enum class Backend { kAuto, kCPU, kCUDA };

struct EngineOptions {
  Backend backend = Backend::kAuto;
  int device_ordinal = 0;                      // CUDA device to use
  size_t cublas_workspace_bytes = 32u << 20;   // cuBLASLt split-K / stream-K workspace
};

int cuda_device_count();  // 0 when there is no driver or no device

class Engine {
 public:
  explicit Engine(EngineOptions opts = {});
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  Device device() const { return device_; }
  bool is_cuda() const { return device_ == Device::kCUDA; }
  cudaStream_t stream() const { return stream_ ? stream_->get() : nullptr; }
  // Side streams for independent work that overlaps the compute stream's: the LoRA branch's first pass beside
  // the base GEMMs (0), the next NF4 dequantizations of a layer group beside its first GEMM (1).
  // fork(i): side stream i waits for the compute stream's work so far; join(i): the compute stream waits for
  // side stream i's. Memory a side stream uses must stay allocated until its join() (the caching allocator
  // orders reuse on the compute stream only). CUDA only.
  static constexpr int kSideStreams = 2;
  cudaStream_t side_stream(int i = 0) const;
  void fork(int i = 0);
  void join(int i = 0);
  // synchronize() waits for the compute stream and the side streams.
  CublasLt& blas();
  Allocator& allocator() { return is_cuda() ? static_cast<Allocator&>(*cuda_alloc_) : host_alloc_; }
  HostAllocator& host_allocator() { return host_alloc_; }
  const cudaDeviceProp& props() const { return props_; }

  Tensor empty(Shape s, DType t) { return Tensor::empty(s, t, allocator()); }
  Tensor empty_host(Shape s, DType t) { return Tensor::empty(s, t, host_alloc_); }
  // Copy between any two places (same dtype and element count); on CUDA, async on the compute stream.
  void copy(TensorView dst, TensorView src);
  void zero(TensorView t);  // all bytes 0; on CUDA, async on the compute stream
  void synchronize();
  std::string describe() const;  // one line: backend, device name, memory

  // Data parallel (one process per GPU): joins the NCCL communicator of `world_size` ranks with the unique
  // id rank 0 made (Communicator::get_unique_id, handed out by engine/rendezvous.h). world_size 1 creates
  // nothing. Throws engine::Error on the CPU backend with world_size > 1 (data parallel needs CUDA + NCCL).
  void init_data_parallel(int rank, int world_size, const std::string& unique_id, double timeout_s = 600);
  Communicator* comm() { return comm_.get(); }  // nullptr unless world_size > 1
  int rank() const;        // 0 without a communicator
  int world_size() const;  // 1 without a communicator

 private:
  Device device_ = Device::kCPU;
  cudaDeviceProp props_{};
  HostAllocator host_alloc_;                           // declared first: destroyed last
  std::unique_ptr<CudaCachingAllocator> cuda_alloc_;
  std::unique_ptr<Stream> stream_, side_[kSideStreams];
  std::unique_ptr<Event> fork_ev_[kSideStreams], join_ev_[kSideStreams];
  std::unique_ptr<CublasLt> blas_;
  std::unique_ptr<Communicator> comm_;  // aborted first in ~Engine: a kernel stuck on a dead peer ends
};

// fork(i) now, join(i) at join() or when the scope ends, also by an exception (work on the side stream may
// still use buffers that unwinding frees; the join orders their reuse after it).
class SideScope {
 public:
  SideScope(Engine& eng, int i) : eng_(eng), i_(i) { eng_.fork(i_); }
  ~SideScope() {
    if (!open_) return;
    try {
      eng_.join(i_);
    } catch (...) {  // already unwinding, or the device is gone: nothing better to do here
    }
  }
  SideScope(const SideScope&) = delete;
  SideScope& operator=(const SideScope&) = delete;
  cudaStream_t stream() const { return eng_.side_stream(i_); }
  void join() {
    open_ = false;
    eng_.join(i_);
  }

 private:
  Engine& eng_;
  int i_;
  bool open_ = true;
};

}  // namespace engine
