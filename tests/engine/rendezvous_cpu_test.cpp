// tests/engine/rendezvous_cpu_test.cpp (label cpu): the data-parallel rendezvous with real processes on
// loopback (fork): success hands every rank the blob; a wrong world size, a duplicate rank, a fingerprint
// mismatch and a rank that never comes are errors naming the rank on rank 0 and on the ranks that came;
// the liveness channel reports a peer that exited, and barrier() names it.
#include "engine/rendezvous.h"

#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <functional>
#include <string>
#include <thread>

#include "engine/check.h"

namespace {

using engine::Rendezvous;
using engine::RendezvousOptions;

// Runs fn in a child process; its result string comes back through a pipe.
struct Child {
  pid_t pid = -1;
  int fd = -1;
  std::string result() {
    std::string out;
    char buf[4096];
    ssize_t k;
    while ((k = ::read(fd, buf, sizeof(buf))) > 0) out.append(buf, size_t(k));
    ::close(fd);
    int status = 0;
    ::waitpid(pid, &status, 0);
    return out;
  }
};

Child spawn(const std::function<std::string()>& fn) {
  int p[2];
  EXPECT_EQ(::pipe(p), 0);
  Child c;
  c.pid = ::fork();
  if (c.pid == 0) {
    ::close(p[0]);
    std::string r;
    try {
      r = fn();
    } catch (const engine::Error& e) {
      r = std::string("ERR:") + e.what();
    }
    (void)!::write(p[1], r.data(), r.size());
    ::close(p[1]);
    _exit(0);
  }
  ::close(p[1]);
  c.fd = p[0];
  return c;
}

RendezvousOptions opts(int rank, int world, int port, uint64_t fp = 7, double timeout = 10) {
  RendezvousOptions o;
  o.rank = rank;
  o.world_size = world;
  o.master_port = port;
  o.fingerprint = fp;
  o.timeout_s = timeout;
  return o;
}

std::string run_rank(const RendezvousOptions& o, const std::string& blob = "") {
  Rendezvous r(o, blob);
  return "OK:" + r.blob();
}

TEST(Rendezvous, EveryRankGetsTheBlob) {
  const int port = engine::pick_free_port();
  std::string blob(128, '\0');
  for (int i = 0; i < 128; ++i) blob[size_t(i)] = char(i * 7);  // binary, with zero bytes
  std::vector<Child> peers;
  for (int r = 1; r < 4; ++r) peers.push_back(spawn([=] { return run_rank(opts(r, 4, port)); }));
  Child root = spawn([=] { return run_rank(opts(0, 4, port), blob); });
  EXPECT_EQ(root.result(), "OK:" + blob);
  for (Child& c : peers) EXPECT_EQ(c.result(), "OK:" + blob);
}

TEST(Rendezvous, WrongWorldSizeNamesTheRank) {
  const int port = engine::pick_free_port();
  Child peer = spawn([=] { return run_rank(opts(1, 3, port)); });
  Child root = spawn([=] { return run_rank(opts(0, 2, port), "id"); });
  const std::string r0 = root.result(), r1 = peer.result();
  EXPECT_NE(r0.find("ERR:"), std::string::npos) << r0;
  EXPECT_NE(r0.find("rank 1 at 127.0.0.1"), std::string::npos) << r0;
  EXPECT_NE(r0.find("world size 3, rank 0 has 2"), std::string::npos) << r0;
  EXPECT_NE(r1.find("rank 0 at 127.0.0.1:" + std::to_string(port) + " reports"), std::string::npos) << r1;
  EXPECT_NE(r1.find("world size 3"), std::string::npos) << r1;
}

TEST(Rendezvous, DuplicateRankIsRefused) {
  const int port = engine::pick_free_port();
  Child a = spawn([=] { return run_rank(opts(1, 3, port)); });
  Child b = spawn([=] { return run_rank(opts(1, 3, port)); });
  Child root = spawn([=] { return run_rank(opts(0, 3, port), "id"); });
  const std::string r0 = root.result();
  EXPECT_NE(r0.find("rank 1 announced twice"), std::string::npos) << r0;
  const std::string ra = a.result(), rb = b.result();
  EXPECT_NE(ra.find("ERR:"), std::string::npos) << ra;
  EXPECT_NE(rb.find("ERR:"), std::string::npos) << rb;
}

TEST(Rendezvous, FingerprintMismatchIsNamed) {
  const int port = engine::pick_free_port();
  Child peer = spawn([=] { return run_rank(opts(1, 2, port, /*fp=*/0xbeef)); });
  Child root = spawn([=] { return run_rank(opts(0, 2, port, /*fp=*/0xcafe), "id"); });
  const std::string r0 = root.result(), r1 = peer.result();
  EXPECT_NE(r0.find("rank 1 at 127.0.0.1"), std::string::npos) << r0;
  EXPECT_NE(r0.find("fingerprint beef, rank 0 has cafe"), std::string::npos) << r0;
  EXPECT_NE(r1.find("configs or data sets differ"), std::string::npos) << r1;
}

TEST(Rendezvous, MissingRankTimesOutNamingIt) {
  const int port = engine::pick_free_port();
  const auto t0 = std::chrono::steady_clock::now();
  Child peer = spawn([=] { return run_rank(opts(1, 3, port, 7, 1.0)); });
  Child root = spawn([=] { return run_rank(opts(0, 3, port, 7, 1.0), "id"); });  // rank 2 never comes
  const std::string r0 = root.result(), r1 = peer.result();
  EXPECT_NE(r0.find("timed out after 1 s"), std::string::npos) << r0;
  EXPECT_NE(r0.find("waiting for rank(s) 2 of world size 3"), std::string::npos) << r0;
  EXPECT_NE(r1.find("waiting for rank(s) 2"), std::string::npos) << r1;  // rank 0 told it why
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), 8.0);
}

TEST(Rendezvous, NoRankZeroIsAConnectTimeout) {
  const int port = engine::pick_free_port();
  Child peer = spawn([=] { return run_rank(opts(1, 2, port, 7, 0.5)); });
  const std::string r1 = peer.result();
  EXPECT_NE(r1.find("rank 1 could not connect to rank 0 at 127.0.0.1:" + std::to_string(port)), std::string::npos)
      << r1;
}

TEST(Rendezvous, BadOptionsAreErrors) {
  EXPECT_THROW(Rendezvous(opts(2, 2, 1234), ""), engine::Error);  // rank outside [0, world)
  EXPECT_THROW(Rendezvous(opts(1, 2, 0), ""), engine::Error);     // no port
  Rendezvous single(opts(0, 1, 0), "blob");                        // world 1: nothing to do
  EXPECT_EQ(single.blob(), "blob");
  EXPECT_EQ(single.poll_peer_failure(), -1);
  single.barrier(1);
}

TEST(Rendezvous, LivenessAndBarrierSeeAPeerExit) {
  const int port = engine::pick_free_port();
  // Rank 1: joins, passes one barrier, then exits (its socket closes).
  Child peer = spawn([=] {
    Rendezvous r(opts(1, 2, port), "");
    r.barrier(10);
    return std::string("OK");
  });
  // Rank 0 (a child too, so the test process keeps no sockets): barrier, then waits for the failure.
  Child root = spawn([=] {
    Rendezvous r(opts(0, 2, port), "id");
    r.barrier(10);
    const auto t0 = std::chrono::steady_clock::now();
    int failed = -1;
    while (failed < 0 && std::chrono::steady_clock::now() - t0 < std::chrono::seconds(10)) {
      failed = r.poll_peer_failure();
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    std::string out = "failed=" + std::to_string(failed);
    try {
      r.barrier(5);
    } catch (const engine::Error& e) {
      out += std::string(" barrier:") + e.what();
    }
    return out;
  });
  EXPECT_EQ(peer.result(), "OK");
  const std::string r0 = root.result();
  EXPECT_NE(r0.find("failed=1"), std::string::npos) << r0;
  EXPECT_NE(r0.find("barrier: rank 0: rank 1 exited"), std::string::npos) << r0;
}

TEST(Rendezvous, LivePeersAreNotReportedAndPendingBytesAreNotConsumed) {
  const int port = engine::pick_free_port();
  Child peer = spawn([=] {
    Rendezvous r(opts(1, 2, port), "");
    r.barrier(10);  // its byte reaches rank 0 while rank 0 is polling
    return std::string("OK");
  });
  Child root = spawn([=] {
    Rendezvous r(opts(0, 2, port), "id");
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    const int before = r.poll_peer_failure();  // rank 1 is alive (its barrier byte is pending: peeked only)
    r.barrier(10);
    return "before=" + std::to_string(before);
  });
  EXPECT_EQ(root.result(), "before=-1");
  EXPECT_EQ(peer.result(), "OK");
}

TEST(Rendezvous, Fnv1aKnownValues) {
  EXPECT_EQ(engine::fnv1a64("", 0), 0xcbf29ce484222325ull);
  EXPECT_EQ(engine::fnv1a64("a", 1), 0xaf63dc4c8601ec8cull);
}

}  // namespace
