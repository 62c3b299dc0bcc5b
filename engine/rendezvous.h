// engine/rendezvous.h: the start of a data-parallel job over TCP (POSIX sockets, CPU only).
//   Rank 0 listens on MASTER_PORT; ranks 1..W-1 connect to MASTER_ADDR:MASTER_PORT (retrying until the
//   timeout) and announce {rank, world size, run fingerprint}. Rank 0 checks that every rank came, each
//   rank id once, with its world size and its fingerprint (a hash of the resolved config and the data set),
//   then sends every rank the blob (the 128-byte ncclUniqueId; opaque bytes here). Any mismatch or a
//   timeout is an engine::Error naming the rank, its address and what differed, on rank 0 and on the
//   ranks that connected (rank 0 sends them the reason).
//   The connections stay open for the whole run as a liveness channel: poll_peer_failure() (non-blocking)
//   sees a peer's socket close (rank 0 watches every rank, the others watch rank 0), and barrier() runs
//   over them (start and end of a run only: gradients travel over NCCL, never here).
//   Tests: tests/engine/rendezvous_cpu_test.cpp.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace engine {

struct RendezvousOptions {
  int rank = 0, world_size = 1;
  std::string master_addr = "127.0.0.1";  // IPv4 address or host name of rank 0
  int master_port = 0;                    // rank 0 listens on it (every interface), the others connect
  uint64_t fingerprint = 0;               // must be equal on every rank
  double timeout_s = 300;                 // for the whole rendezvous, connection retries included
};

class Rendezvous {
 public:
  // Runs the rendezvous; blocks until every rank has the blob or throws engine::Error. `blob` is what rank
  // 0 hands out (ignored on the other ranks). world_size 1 does nothing.
  Rendezvous(const RendezvousOptions& opts, const std::string& blob)
      : Rendezvous(opts, [blob] { return blob; }) {}
  // The same, with rank 0 making the blob only once it listens: NCCL's id opens a socket on an ephemeral
  // port, which must not take MASTER_PORT (picked free, but not held, by the launcher) first.
  Rendezvous(const RendezvousOptions& opts, const std::function<std::string()>& make_blob);
  ~Rendezvous();
  Rendezvous(const Rendezvous&) = delete;
  Rendezvous& operator=(const Rendezvous&) = delete;

  const std::string& blob() const { return blob_; }
  int rank() const { return opts_.rank; }
  int world_size() const { return opts_.world_size; }

  // The rank whose connection closed (it exited or crashed), or -1 while every watched peer is there.
  // Non-blocking, consumes nothing (safe beside barrier() on another thread).
  int poll_peer_failure() const;
  // Every rank waits for every other (rank 0 gathers one byte from each rank, then releases them all).
  // Throws engine::Error naming the rank that exited or that did not arrive within timeout_s.
  void barrier(double timeout_s);

 private:
  RendezvousOptions opts_;
  std::string blob_;
  std::vector<int> fds_;  // rank 0: fds_[r] = connection of rank r (fds_[0] = -1); others: fds_[0] = rank 0
};

// FNV-1a (64-bit) of bytes: the run fingerprint and the parameter hash of tests/multigpu/dp_check.sh.
uint64_t fnv1a64(const void* data, size_t n, uint64_t h = 0xcbf29ce484222325ull);

// A TCP port that is free on 127.0.0.1 now (bind to port 0, read it back, close).
int pick_free_port();

}  // namespace engine
