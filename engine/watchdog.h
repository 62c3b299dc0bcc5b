// engine/watchdog.h: the per-rank watchdog of a data-parallel job. A thread wakes every poll_s and checks
//   - the rendezvous liveness channel (engine/rendezvous.h): a peer's socket closed = that rank exited;
//   - ncclCommGetAsyncError: an asynchronous NCCL error (a network failure never completes an operation);
//   - progress: no heartbeat() for step_timeout_s (training.ddp_timeout, 1800 s as HF's ddp_timeout).
//   On the first failure it calls on_failure(message) once; the default prints
//   "rank R: stopping the job (<cause>)" to stderr, ncclCommAbort's (so no kernel spins on a dead peer)
//   and _exit(1)s: the launcher (engine/launcher.h) or the other ranks' watchdogs then end the job.
//   Tests: tests/engine/watchdog_cpu_test.cpp (rendezvous and timeout causes, in forked processes).
#pragma once
#include <atomic>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <string>
#include <thread>

namespace engine {

class Communicator;
class Rendezvous;

struct WatchdogOptions {
  double poll_s = 0.1;
  double step_timeout_s = 1800;
};

class Watchdog {
 public:
  using FailureAction = std::function<void(const std::string& message)>;
  // rdv and comm may be null (nothing to watch there); they must outlive the watchdog. on_failure empty =
  // the default above.
  Watchdog(int rank, const Rendezvous* rdv, Communicator* comm, const WatchdogOptions& opts,
           FailureAction on_failure = {});
  ~Watchdog();  // stop()
  Watchdog(const Watchdog&) = delete;
  Watchdog& operator=(const Watchdog&) = delete;

  // Starts watching `comm` too (it is created after the watchdog: the NCCL init waits for every rank).
  void watch(Communicator* comm) { comm_.store(comm); }
  void heartbeat();  // progress was made (the trainer calls it once per optimizer step)
  // Joins the thread: no further checks. Call before the final barrier, since peers that pass it may close
  // their sockets at once.
  void stop();

  // The default action's message for a cause, e.g. "rank 0: stopping the job (rank 1 exited)".
  static std::string message(int rank, const std::string& cause);

 private:
  void loop();
  int rank_;
  const Rendezvous* rdv_;
  std::atomic<Communicator*> comm_;
  WatchdogOptions opts_;
  FailureAction on_failure_;
  std::atomic<int64_t> last_beat_ns_{0};
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  std::thread thread_;
};

}  // namespace engine
