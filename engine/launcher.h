// engine/launcher.h: how the processes of a data-parallel job start (one process per GPU).
//   The env contract (torchrun's names, so mpirun/torchrun-like launchers and several hosts work):
//   RANK, WORLD_SIZE, LOCAL_RANK (the GPU on this host; default RANK), MASTER_ADDR (default 127.0.0.1),
//   MASTER_PORT. No WORLD_SIZE = one process.
//   `--nproc N` (launch_ranks): picks a free port on 127.0.0.1, fork+execs the program N times with the
//   contract set (LOCAL_RANK = RANK; NCCL_NVLS_ENABLE=0 unless set), forwards SIGINT/SIGTERM, and waits.
//   When a rank exits non-zero or by a signal, the others get SIGTERM, then SIGKILL after grace_s; the
//   launcher reports "rank K exited with status S" (or "rank K killed by signal N (NAME)") and returns 1.
//   No global state: the signals are blocked in the launcher and taken with sigtimedwait.
//   Tests: tests/engine/launcher_cpu_test.cpp.
#pragma once
#include <functional>
#include <ostream>
#include <string>
#include <vector>

#include "engine/engine.h"

namespace engine {

struct DistEnv {
  int rank = 0, world_size = 1, local_rank = 0;
  std::string master_addr = "127.0.0.1";
  int master_port = 0;
};

// Reads the env contract through `get` (getenv by default). Throws engine::Error naming the variable and
// its value when one is malformed or missing (RANK and MASTER_PORT are required when WORLD_SIZE > 1).
DistEnv dist_env_from(const std::function<const char*(const char*)>& get = nullptr);

// The engine options of a rank: one process keeps `backend`; a rank of world size > 1 takes CUDA device
// LOCAL_RANK. Throws engine::Error for world size > 1 on the CPU backend (forced or no device: data parallel
// needs CUDA + NCCL) and when LOCAL_RANK >= device_count (naming the count). Callers prefix the rank.
EngineOptions rank_engine_options(const DistEnv& env, Backend backend, int device_count);

struct LaunchOptions {
  int nproc = 1;
  std::string exe;                // the program (train_gemma passes /proc/self/exe)
  std::vector<std::string> argv;  // its argv, argv[0] included
  double grace_s = 10;            // SIGTERM -> SIGKILL
  int master_port = 0;            // 0 = pick_free_port()
};

// Runs the ranks and supervises them (above). Returns 0 when every rank exited 0, 1 after a failure,
// 128 + signal after a forwarded SIGINT/SIGTERM. Messages go to `log`.
int launch_ranks(const LaunchOptions& opts, std::ostream& log);

// argv without `name` and its value ("--nproc 2" or "--nproc=2"): what each rank runs.
std::vector<std::string> strip_option(const std::vector<std::string>& argv, const std::string& name);

}  // namespace engine
