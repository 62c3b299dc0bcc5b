#include "engine/comm.h"

#include <chrono>
#include <cstring>
#include <thread>

#include "engine/check.h"

#ifdef ENGINE_HAVE_NCCL
#include <nccl.h>
#endif

namespace engine {

#ifdef ENGINE_HAVE_NCCL
namespace {

ncclComm_t as_comm(void* p) { return static_cast<ncclComm_t>(p); }

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

}  // namespace

std::string Communicator::get_unique_id() {
  ncclUniqueId id;
  NCCL_CHECK(ncclGetUniqueId(&id));
  return std::string(id.internal, sizeof(id.internal));
}

Communicator::Communicator(int rank, int world_size, const std::string& unique_id, double timeout_s)
    : rank_(rank), world_(world_size) {
  ncclUniqueId id;
  ENGINE_CHECK(unique_id.size() == sizeof(id.internal), "nccl: rank ", rank, ": unique id of ", unique_id.size(),
               " bytes, expected ", sizeof(id.internal));
  ENGINE_CHECK(world_size >= 2 && rank >= 0 && rank < world_size, "nccl: rank ", rank, " of world size ", world_size);
  std::memcpy(id.internal, unique_id.data(), sizeof(id.internal));
  CUDA_CHECK(cudaGetDevice(&device_));
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;  // every call returns at once (or ncclInProgress): abort() can always get in
  ncclComm_t comm = nullptr;
  const ncclResult_t r = ncclCommInitRankConfig(&comm, world_size, id, rank, &config);
  comm_ = comm;
  if (r != ncclSuccess && r != ncclInProgress) {
    if (comm) ncclCommAbort(comm);
    comm_ = nullptr;
    throw Error(str_cat("nccl: rank ", rank, ": ncclCommInitRankConfig failed: ", ncclGetErrorString(r), " (",
                        ncclGetLastError(nullptr), ")"));
  }
  std::lock_guard<std::mutex> lock(mu_);
  try {
    wait_ready_locked("ncclCommInitRankConfig", timeout_s);
  } catch (...) {
    ncclCommAbort(comm);
    comm_ = nullptr;
    aborted_ = true;
    throw;
  }
}

Communicator::~Communicator() { abort(); }

void Communicator::wait_ready_locked(const char* what, double timeout_s) {
  // Called with mu_ held; released between polls so that abort() can interrupt a wait on a dead peer.
  const double deadline = now_s() + timeout_s;
  while (true) {
    ENGINE_CHECK(!aborted_ && comm_ != nullptr, "nccl: rank ", rank_, ": ", what, " on an aborted communicator");
    ncclResult_t state = ncclSuccess;
    NCCL_CHECK(ncclCommGetAsyncError(as_comm(comm_), &state));
    if (state == ncclSuccess) return;
    if (state != ncclInProgress)
      throw Error(str_cat("nccl: rank ", rank_, ": ", what, ": ", ncclGetErrorString(state), " (",
                          ncclGetLastError(as_comm(comm_)), ")"));
    if (now_s() > deadline)
      throw Error(str_cat("nccl: rank ", rank_, ": ", what, " did not finish within ", timeout_s, " s"));
    mu_.unlock();
    std::this_thread::sleep_for(std::chrono::microseconds(50));
    mu_.lock();
  }
}

void Communicator::all_reduce_sum_f32(const std::vector<F32Span>& buffers, cudaStream_t stream) {
  std::lock_guard<std::mutex> lock(mu_);
  ENGINE_CHECK(!aborted_ && comm_ != nullptr, "nccl: rank ", rank_, ": all-reduce on an aborted communicator");
  ncclComm_t comm = as_comm(comm_);
  NCCL_CHECK(ncclGroupStart());
  for (const F32Span& b : buffers) {
    if (b.count == 0) continue;
    const ncclResult_t r = ncclAllReduce(b.data, b.data, b.count, ncclFloat32, ncclSum, comm, stream);
    ENGINE_CHECK(r == ncclSuccess || r == ncclInProgress, "nccl: rank ", rank_, ": ncclAllReduce of ", b.count,
                 " floats: ", ncclGetErrorString(r));
  }
  const ncclResult_t r = ncclGroupEnd();
  if (r != ncclSuccess && r != ncclInProgress)
    throw Error(str_cat("nccl: rank ", rank_, ": ncclGroupEnd (all-reduce): ", ncclGetErrorString(r), " (",
                        ncclGetLastError(comm), ")"));
  // Non-blocking: the group may still be enqueueing; nothing may go on the stream before it has (NCCL
  // docs). No timeout here: a dead peer is the watchdog's to detect.
  wait_ready_locked("all-reduce", 1e30);
}

std::string Communicator::async_error() {
  std::lock_guard<std::mutex> lock(mu_);
  if (aborted_ || comm_ == nullptr) return "";
  ncclResult_t state = ncclSuccess;
  const ncclResult_t r = ncclCommGetAsyncError(as_comm(comm_), &state);
  if (r != ncclSuccess) return str_cat("ncclCommGetAsyncError: ", ncclGetErrorString(r));
  if (state == ncclSuccess || state == ncclInProgress) return "";
  return str_cat(ncclGetErrorString(state), " (", ncclGetLastError(as_comm(comm_)), ")");
}

void Communicator::abort() {
  std::lock_guard<std::mutex> lock(mu_);
  if (aborted_ || comm_ == nullptr) return;
  aborted_ = true;
  cudaSetDevice(device_);  // the watchdog thread's current device may be another
  ncclCommAbort(as_comm(comm_));
  comm_ = nullptr;
}

#else  // built without NCCL

namespace {
[[noreturn]] void no_nccl() {
  throw Error("data parallel needs NCCL, and this build has none (nccl.h / libnccl not found at configure time)");
}
}  // namespace

std::string Communicator::get_unique_id() { no_nccl(); }
Communicator::Communicator(int, int, const std::string&, double) { no_nccl(); }
Communicator::~Communicator() = default;
void Communicator::wait_ready_locked(const char*, double) { no_nccl(); }
void Communicator::all_reduce_sum_f32(const std::vector<F32Span>&, cudaStream_t) { no_nccl(); }
std::string Communicator::async_error() { return ""; }
void Communicator::abort() {}

#endif

}  // namespace engine
