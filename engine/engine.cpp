#include "engine/engine.h"

#include <cstring>

#include "engine/comm.h"

namespace engine {

int cuda_device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    (void)cudaGetLastError();  // no driver / no device is not an error for the CPU backend
    return 0;
  }
  return n;
}

Engine::Engine(EngineOptions opts) {
  const int n = (opts.backend == Backend::kCPU) ? 0 : cuda_device_count();
  if (opts.backend == Backend::kCUDA)
    ENGINE_CHECK(n > opts.device_ordinal, "CUDA backend requested but ", n, " CUDA device(s) found");
  if (n > opts.device_ordinal) {
    device_ = Device::kCUDA;
    CUDA_CHECK(cudaSetDevice(opts.device_ordinal));
    CUDA_CHECK(cudaGetDeviceProperties(&props_, opts.device_ordinal));
    cuda_alloc_ = std::make_unique<CudaCachingAllocator>();
    stream_ = std::make_unique<Stream>();
    for (int i = 0; i < kSideStreams; ++i) {
      side_[i] = std::make_unique<Stream>();
      fork_ev_[i] = std::make_unique<Event>(false);
      join_ev_[i] = std::make_unique<Event>(false);
    }
    blas_ = std::make_unique<CublasLt>(opts.cublas_workspace_bytes, *cuda_alloc_);
  }
}

Engine::~Engine() {
  comm_.reset();  // ncclCommAbort before the stream sync below, which an NCCL kernel could otherwise block
  if (is_cuda()) {
    for (int i = 0; i < kSideStreams; ++i) cudaStreamSynchronize(side_stream(i));
    cudaStreamSynchronize(stream());
  }
  blas_.reset();
  for (int i = 0; i < kSideStreams; ++i) {
    join_ev_[i].reset();
    fork_ev_[i].reset();
    side_[i].reset();
  }
  stream_.reset();
  cuda_alloc_.reset();
}

void Engine::init_data_parallel(int rank, int world_size, const std::string& unique_id, double timeout_s) {
  ENGINE_CHECK(comm_ == nullptr, "init_data_parallel: rank ", rank, ": already initialised");
  if (world_size == 1) return;
  ENGINE_CHECK(is_cuda(), "data parallel (world size ", world_size, ") needs the CUDA backend and NCCL; rank ", rank,
               " runs on the CPU backend");
  comm_ = std::make_unique<Communicator>(rank, world_size, unique_id, timeout_s);
}

int Engine::rank() const { return comm_ ? comm_->rank() : 0; }
int Engine::world_size() const { return comm_ ? comm_->world_size() : 1; }

CublasLt& Engine::blas() {
  ENGINE_CHECK(blas_ != nullptr, "cuBLASLt requested on the CPU backend");
  return *blas_;
}

void Engine::copy(TensorView dst, TensorView src) {
  ENGINE_CHECK(dst.dtype == src.dtype && dst.numel() == src.numel(), "copy: ", src.str(), " -> ", dst.str(),
               ": dtype or element count differs");
  if (src.nbytes() == 0) return;
  if (dst.device == Device::kCPU && src.device == Device::kCPU) {
    std::memcpy(dst.data, src.data, src.nbytes());
    return;
  }
  ENGINE_CHECK(is_cuda(), "copy to/from CUDA memory on the CPU backend");
  CUDA_CHECK(cudaMemcpyAsync(dst.data, src.data, src.nbytes(), cudaMemcpyDefault, stream()));
}

void Engine::zero(TensorView t) {
  if (!t.defined() || t.nbytes() == 0) return;
  if (t.device == Device::kCPU) { std::memset(t.data, 0, t.nbytes()); return; }
  CUDA_CHECK(cudaMemsetAsync(t.data, 0, t.nbytes(), stream()));
}

cudaStream_t Engine::side_stream(int i) const {
  ENGINE_CHECK(i >= 0 && i < kSideStreams, "side_stream: ", i, " is not one of the ", kSideStreams, " side streams");
  return side_[i] ? side_[i]->get() : nullptr;
}

void Engine::fork(int i) {
  ENGINE_CHECK(is_cuda(), "fork: side streams are CUDA-only");
  const cudaStream_t s = side_stream(i);
  fork_ev_[i]->record(stream());
  CUDA_CHECK(cudaStreamWaitEvent(s, fork_ev_[i]->get(), 0));
}

void Engine::join(int i) {
  ENGINE_CHECK(is_cuda(), "join: side streams are CUDA-only");
  const cudaStream_t s = side_stream(i);  // checks i
  join_ev_[i]->record(s);
  CUDA_CHECK(cudaStreamWaitEvent(stream(), join_ev_[i]->get(), 0));
}

void Engine::synchronize() {
  if (!is_cuda()) return;
  for (int i = 0; i < kSideStreams; ++i) CUDA_CHECK(cudaStreamSynchronize(side_stream(i)));
  CUDA_CHECK(cudaStreamSynchronize(stream()));
}

std::string Engine::describe() const {
  if (!is_cuda()) return "CPU backend (no CUDA device found)";
  size_t free_b = 0, total_b = 0;
  cudaMemGetInfo(&free_b, &total_b);
  return str_cat("CUDA backend: ", props_.name, " (sm_", props_.major, props_.minor, ", ",
                 props_.multiProcessorCount, " SMs, ", total_b / double(1 << 30), " GiB)");
}

}  // namespace engine
