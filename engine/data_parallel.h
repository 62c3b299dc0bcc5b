// engine/data_parallel.h: one rank's membership in a data-parallel job, set up in this order:
//   rank 0 makes the NCCL unique id -> rendezvous (engine/rendezvous.h: checks ranks, world size and run
//   fingerprint, hands out the id) -> the watchdog starts (engine/watchdog.h) -> the Engine joins the NCCL
//   communicator (Engine::init_data_parallel; the watchdog watches it from then on).
//   At the end, finish(): the watchdog stops, then a barrier over the sockets, so no rank exits (closing its
//   sockets) while rank 0 still saves. World size 1: nothing at all (no sockets, no thread, no NCCL).
//   Exercised by tests/multigpu/dp_check.sh (GPU); its parts have CPU tests.
#pragma once
#include <cstdint>
#include <memory>

#include "engine/engine.h"
#include "engine/launcher.h"

namespace engine {

class Rendezvous;
class Watchdog;

struct DataParallelOptions {
  uint64_t fingerprint = 0;           // hash of what must agree across ranks (config, data set size)
  double rendezvous_timeout_s = 300;  // ranks must all arrive within it
  double step_timeout_s = 1800;       // training.ddp_timeout: no progress for this long ends the job
};

class DataParallel {
 public:
  DataParallel(const DistEnv& env, Engine& eng, const DataParallelOptions& opts);
  ~DataParallel();
  DataParallel(const DataParallel&) = delete;
  DataParallel& operator=(const DataParallel&) = delete;

  int rank() const { return env_.rank; }
  int world_size() const { return env_.world_size; }
  bool lead() const { return env_.rank == 0; }
  void heartbeat();              // once per optimizer step
  void finish(double timeout_s);  // stop the watchdog, then barrier (throws engine::Error naming a rank)

 private:
  DistEnv env_;
  std::unique_ptr<Rendezvous> rdv_;
  std::unique_ptr<Watchdog> wd_;
};

}  // namespace engine
