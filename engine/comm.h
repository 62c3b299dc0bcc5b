// engine/comm.h: Communicator, the NCCL communicator of one data-parallel rank (one process per GPU).
//   Created non-blocking (ncclConfig_t.blocking = 0) so that the watchdog (engine/watchdog.h) can
//   ncclCommAbort it from its own thread when a peer dies or NCCL reports an asynchronous error: a blocking
//   communicator can hang forever inside NCCL (NCCL user guide, "Fault Tolerance"). Every NCCL call goes
//   through one mutex, so abort() never runs while another thread is inside NCCL, and after abort() no call
//   reaches the freed communicator.
//   The Engine owns it (Engine::init_data_parallel); world size 1 never creates one. Built without NCCL,
//   every function throws engine::Error. Verified on GPUs by tests/multigpu/dp_check.sh (no CPU path).
#pragma once
#include <cuda_runtime.h>

#include <cstddef>
#include <mutex>
#include <string>
#include <vector>

namespace engine {

// One f32 buffer on the rank's device, summed in place across ranks.
struct F32Span {
  float* data = nullptr;
  size_t count = 0;
};

class Communicator {
 public:
  // ncclGetUniqueId: 128 opaque bytes that rank 0 hands to the others (engine/rendezvous.h). Needs no
  // communicator; call it on rank 0 after choosing the device.
  static std::string get_unique_id();

  // ncclCommInitRankConfig (non-blocking), then waits for the init to finish, polling at most timeout_s.
  // The current CUDA device is this rank's. Throws engine::Error on failure or timeout (naming the rank).
  Communicator(int rank, int world_size, const std::string& unique_id, double timeout_s = 600);
  ~Communicator();  // ncclCommAbort: never waits for peers (the run ends with a barrier over the sockets)
  Communicator(const Communicator&) = delete;
  Communicator& operator=(const Communicator&) = delete;

  int rank() const { return rank_; }
  int world_size() const { return world_; }

  // In-place sum over all ranks of each buffer, enqueued on `stream` as one NCCL group (one launch). Every
  // rank receives identical bytes (NCCL: "receive identical results"), so ranks that apply the same update
  // to the result stay bit-identical. Returns once enqueued (no stream synchronization).
  void all_reduce_sum_f32(const std::vector<F32Span>& buffers, cudaStream_t stream);
  void all_reduce_sum_f32(float* data, size_t count, cudaStream_t stream) {
    all_reduce_sum_f32({F32Span{data, count}}, stream);
  }

  // ncclCommGetAsyncError: "" while healthy (or busy), else the NCCL error text. Thread-safe.
  std::string async_error();
  // ncclCommAbort (idempotent, thread-safe): stops uncompleted NCCL kernels and frees the communicator.
  void abort();

 private:
  void wait_ready_locked(const char* what, double timeout_s);  // polls while ncclInProgress
  int rank_ = 0, world_ = 1, device_ = 0;
  void* comm_ = nullptr;  // ncclComm_t (nccl.h stays out of this header)
  bool aborted_ = false;
  std::mutex mu_;
};

}  // namespace engine
