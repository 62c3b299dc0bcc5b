#include "engine/watchdog.h"

#include <unistd.h>

#include <chrono>
#include <cstdio>

#include "engine/check.h"
#include "engine/comm.h"
#include "engine/rendezvous.h"

namespace engine {
namespace {

int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

}  // namespace

std::string Watchdog::message(int rank, const std::string& cause) {
  return str_cat("rank ", rank, ": stopping the job (", cause, ")");
}

Watchdog::Watchdog(int rank, const Rendezvous* rdv, Communicator* comm, const WatchdogOptions& opts,
                   FailureAction on_failure)
    : rank_(rank), rdv_(rdv), comm_(comm), opts_(opts), on_failure_(std::move(on_failure)) {
  ENGINE_CHECK(opts.poll_s > 0 && opts.step_timeout_s > 0, "watchdog: poll_s ", opts.poll_s, " and step_timeout_s ",
               opts.step_timeout_s, " must be > 0");
  if (!on_failure_) {
    on_failure_ = [this](const std::string& msg) {
      std::fprintf(stderr, "%s\n", msg.c_str());
      std::fflush(stderr);
      alarm(30);  // a bound on ncclCommAbort itself: SIGALRM's default action ends the process
      if (Communicator* c = comm_.load()) c->abort();
      _exit(1);  // no destructors: the main thread may be blocked on the device or inside a collective
    };
  }
  heartbeat();
  thread_ = std::thread([this] { loop(); });
}

Watchdog::~Watchdog() { stop(); }

void Watchdog::heartbeat() { last_beat_ns_.store(now_ns()); }

void Watchdog::stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void Watchdog::loop() {
  const auto period = std::chrono::duration<double>(opts_.poll_s);
  std::unique_lock<std::mutex> lock(mu_);
  while (!cv_.wait_for(lock, period, [this] { return stop_; })) {
    std::string cause;
    if (rdv_) {
      const int peer = rdv_->poll_peer_failure();
      if (peer >= 0) cause = str_cat("rank ", peer, " exited");
    }
    Communicator* comm = comm_.load();
    if (cause.empty() && comm) {
      const std::string err = comm->async_error();
      if (!err.empty()) cause = "NCCL error: " + err;
    }
    if (cause.empty()) {
      const double idle = double(now_ns() - last_beat_ns_.load()) * 1e-9;
      if (idle > opts_.step_timeout_s)
        cause = str_cat("no training progress for ", int64_t(idle), " s, more than training.ddp_timeout = ",
                        opts_.step_timeout_s, " s");
    }
    if (!cause.empty()) {
      stop_ = true;
      lock.unlock();
      on_failure_(message(rank_, cause));
      return;
    }
  }
}

}  // namespace engine
