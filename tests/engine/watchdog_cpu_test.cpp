// tests/engine/watchdog_cpu_test.cpp (label cpu): the data-parallel watchdog ends a rank in bounded time
// when a peer exits (seen through the rendezvous sockets) or when no step finishes within the timeout,
// with the default action (message on stderr, _exit(1)) in forked processes; heartbeats keep it quiet
// and stop() silences it. (The NCCL async-error path needs GPUs: tests/multigpu/dp_check.sh.)
#include "engine/watchdog.h"

#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <string>
#include <thread>

#include "engine/check.h"
#include "engine/rendezvous.h"

namespace {

using engine::Watchdog;
using engine::WatchdogOptions;

struct Ended {
  int status = 0;
  std::string err;
  double seconds = 0;
};

// Runs fn in a child whose stderr comes back; waits at most 20 s.
template <typename Fn>
Ended run_child(Fn fn) {
  int p[2];
  EXPECT_EQ(::pipe(p), 0);
  const auto t0 = std::chrono::steady_clock::now();
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::close(p[0]);
    ::dup2(p[1], 2);
    fn();
    _exit(0);
  }
  ::close(p[1]);
  Ended e;
  char buf[1024];
  ssize_t k;
  while ((k = ::read(p[0], buf, sizeof(buf))) > 0) e.err.append(buf, size_t(k));
  ::close(p[0]);
  ::waitpid(pid, &e.status, 0);
  e.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return e;
}

engine::RendezvousOptions ropts(int rank, int port) {
  engine::RendezvousOptions o;
  o.rank = rank;
  o.world_size = 2;
  o.master_port = port;
  o.timeout_s = 10;
  return o;
}

// Ranks 0 and 1 meet; `leaver` exits after a moment, the other runs a watchdog with the default action.
Ended peer_exit_case(int leaver) {
  const int port = engine::pick_free_port();
  const int watcher = 1 - leaver;
  const pid_t peer = ::fork();
  if (peer == 0) {
    {
      engine::Rendezvous r(ropts(leaver, port), "id");
      std::this_thread::sleep_for(std::chrono::milliseconds(400));
    }
    _exit(0);
  }
  const Ended e = run_child([&] {
    engine::Rendezvous r(ropts(watcher, port), "id");
    WatchdogOptions wo;
    wo.poll_s = 0.05;
    Watchdog wd(watcher, &r, nullptr, wo);
    std::this_thread::sleep_for(std::chrono::seconds(15));  // the watchdog must end us long before
  });
  int st = 0;
  ::waitpid(peer, &st, 0);
  return e;
}

TEST(Watchdog, PeerExitEndsTheRankNamingThePeer) {
  const Ended e = peer_exit_case(/*leaver=*/1);
  ASSERT_TRUE(WIFEXITED(e.status));
  EXPECT_EQ(WEXITSTATUS(e.status), 1);
  EXPECT_NE(e.err.find("rank 0: stopping the job (rank 1 exited)"), std::string::npos) << e.err;
  EXPECT_LT(e.seconds, 5.0);
}

TEST(Watchdog, RankZeroExitEndsTheOthers) {
  const Ended e = peer_exit_case(/*leaver=*/0);
  EXPECT_EQ(WEXITSTATUS(e.status), 1);
  EXPECT_NE(e.err.find("rank 1: stopping the job (rank 0 exited)"), std::string::npos) << e.err;
  EXPECT_LT(e.seconds, 5.0);
}

TEST(Watchdog, StepTimeoutEndsTheRank) {
  const Ended e = run_child([] {
    WatchdogOptions wo;
    wo.poll_s = 0.05;
    wo.step_timeout_s = 0.3;
    Watchdog wd(3, nullptr, nullptr, wo);
    std::this_thread::sleep_for(std::chrono::seconds(15));
  });
  EXPECT_EQ(WEXITSTATUS(e.status), 1);
  EXPECT_NE(e.err.find("rank 3: stopping the job (no training progress"), std::string::npos) << e.err;
  EXPECT_NE(e.err.find("training.ddp_timeout"), std::string::npos) << e.err;
  EXPECT_LT(e.seconds, 5.0);
}

TEST(Watchdog, HeartbeatsKeepItQuietAndStopSilencesIt) {
  std::atomic<int> calls{0};
  std::string msg;
  WatchdogOptions wo;
  wo.poll_s = 0.02;
  wo.step_timeout_s = 0.25;
  {
    Watchdog wd(2, nullptr, nullptr, wo, [&](const std::string& m) { msg = m, ++calls; });
    for (int i = 0; i < 30; ++i) {  // 0.6 s of steps, each well within the timeout
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
      wd.heartbeat();
    }
    EXPECT_EQ(calls.load(), 0);
    std::this_thread::sleep_for(std::chrono::milliseconds(600));  // no progress: fires once
    EXPECT_EQ(calls.load(), 1);
    EXPECT_NE(msg.find("rank 2: stopping the job (no training progress"), std::string::npos) << msg;
  }
  Watchdog quiet(0, nullptr, nullptr, wo, [&](const std::string&) { ++calls; });
  quiet.stop();
  std::this_thread::sleep_for(std::chrono::milliseconds(400));
  EXPECT_EQ(calls.load(), 1);
  EXPECT_THROW(Watchdog(0, nullptr, nullptr, WatchdogOptions{0.1, 0}), engine::Error);
}

}  // namespace
