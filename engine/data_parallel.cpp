#include "engine/data_parallel.h"

#include "engine/comm.h"
#include "engine/rendezvous.h"
#include "engine/watchdog.h"

namespace engine {

DataParallel::DataParallel(const DistEnv& env, Engine& eng, const DataParallelOptions& opts) : env_(env) {
  if (env.world_size == 1) return;
  ENGINE_CHECK(eng.is_cuda(), "rank ", env.rank, ": data parallel (WORLD_SIZE=", env.world_size,
               ") needs the CUDA backend and NCCL");
  RendezvousOptions ro;
  ro.rank = env.rank;
  ro.world_size = env.world_size;
  ro.master_addr = env.master_addr;
  ro.master_port = env.master_port;
  ro.fingerprint = opts.fingerprint;
  ro.timeout_s = opts.rendezvous_timeout_s;
  rdv_ = std::make_unique<Rendezvous>(ro, [] { return Communicator::get_unique_id(); });
  WatchdogOptions wo;
  wo.step_timeout_s = opts.step_timeout_s;
  // Watch the peers during the NCCL init too (it waits for every rank); the communicator joins after.
  wd_ = std::make_unique<Watchdog>(env.rank, rdv_.get(), nullptr, wo);
  eng.init_data_parallel(env.rank, env.world_size, rdv_->blob(), opts.rendezvous_timeout_s);
  wd_->watch(eng.comm());
}

DataParallel::~DataParallel() {
  wd_.reset();  // before the sockets it watches
  rdv_.reset();
}

void DataParallel::heartbeat() {
  if (wd_) wd_->heartbeat();
}

void DataParallel::finish(double timeout_s) {
  if (!rdv_) return;
  wd_->stop();
  rdv_->barrier(timeout_s);
}

}  // namespace engine
