// tests/engine/launcher_cpu_test.cpp (label cpu): the data-parallel env contract and the `--nproc`
// supervisor, with /bin/sh children: every rank gets its RANK/WORLD_SIZE/LOCAL_RANK/MASTER_*; all succeed
// -> 0; one fails or is killed -> the others are terminated in bounded time, SIGKILLed when they ignore
// SIGTERM, and the message names the rank.
#include "engine/launcher.h"

#include <gtest/gtest.h>

#include <chrono>
#include <fstream>
#include <map>
#include <sstream>

#include "tests/test_util.h"

namespace {

using engine::DistEnv;
using engine::LaunchOptions;

struct Launched {
  int rc = 0;
  std::string log;
  double seconds = 0;
};

Launched launch(int nproc, const std::string& script, double grace_s = 10) {
  LaunchOptions lo;
  lo.nproc = nproc;
  lo.exe = "/bin/sh";
  lo.argv = {"sh", "-c", script};
  lo.grace_s = grace_s;
  std::ostringstream log;
  const auto t0 = std::chrono::steady_clock::now();
  Launched r;
  r.rc = engine::launch_ranks(lo, log);
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  r.log = log.str();
  return r;
}

TEST(Launcher, EveryRankGetsTheEnvContract) {
  test::TempDir tmp;
  const Launched r = launch(3, "echo \"$RANK $WORLD_SIZE $LOCAL_RANK $MASTER_ADDR $NCCL_NVLS_ENABLE $MASTER_PORT\" > " +
                              tmp.path() + "/rank$RANK");
  EXPECT_EQ(r.rc, 0) << r.log;
  std::string port;
  for (int k = 0; k < 3; ++k) {
    std::ifstream in(tmp.file("rank" + std::to_string(k)));
    std::string rank, world, local, addr, nvls, p;
    in >> rank >> world >> local >> addr >> nvls >> p;
    EXPECT_EQ(rank, std::to_string(k));
    EXPECT_EQ(world, "3");
    EXPECT_EQ(local, std::to_string(k));
    EXPECT_EQ(addr, "127.0.0.1");
    EXPECT_EQ(nvls, "0");
    if (k == 0) port = p;
    EXPECT_EQ(p, port);  // one port for all
    EXPECT_GT(std::stoi(p), 0);
  }
}

TEST(Launcher, FailingRankStopsTheOthersAndIsNamed) {
  const Launched r = launch(3, "if [ \"$RANK\" = 1 ]; then sleep 0.2; exit 3; fi; exec sleep 30");
  EXPECT_EQ(r.rc, 1);
  EXPECT_NE(r.log.find("rank 1 exited with status 3"), std::string::npos) << r.log;
  EXPECT_LT(r.seconds, 5.0) << r.log;  // the sleepers got SIGTERM, not 30 s
}

TEST(Launcher, KilledRankIsNamedWithTheSignal) {
  const Launched r = launch(2, "if [ \"$RANK\" = 0 ]; then sleep 0.2; kill -9 $$; fi; exec sleep 30");
  EXPECT_EQ(r.rc, 1);
  EXPECT_NE(r.log.find("rank 0 killed by signal 9"), std::string::npos) << r.log;
  EXPECT_LT(r.seconds, 5.0) << r.log;
}

TEST(Launcher, RanksIgnoringSigtermAreKilledAfterTheGrace) {
  const Launched r = launch(2, "if [ \"$RANK\" = 1 ]; then sleep 0.2; exit 2; fi; trap '' TERM; exec sleep 30", 0.5);
  EXPECT_EQ(r.rc, 1);
  EXPECT_NE(r.log.find("rank 1 exited with status 2"), std::string::npos) << r.log;
  EXPECT_NE(r.log.find("SIGKILL"), std::string::npos) << r.log;
  EXPECT_LT(r.seconds, 5.0) << r.log;
}

TEST(Launcher, MissingProgramIsAFailure) {
  LaunchOptions lo;
  lo.nproc = 2;
  lo.exe = "/nonexistent/program";
  lo.argv = {"program"};
  std::ostringstream log;
  EXPECT_EQ(engine::launch_ranks(lo, log), 1);
  EXPECT_NE(log.str().find("exited with status 127"), std::string::npos) << log.str();
  lo.nproc = 0;
  EXPECT_THROW(engine::launch_ranks(lo, log), engine::Error);
}

TEST(Launcher, StripOption) {
  using V = std::vector<std::string>;
  EXPECT_EQ(engine::strip_option(V{"prog", "--nproc", "2", "--config", "a.yaml"}, "--nproc"),
            (V{"prog", "--config", "a.yaml"}));
  EXPECT_EQ(engine::strip_option(V{"prog", "--config", "a.yaml", "--nproc=4", "x=1"}, "--nproc"),
            (V{"prog", "--config", "a.yaml", "x=1"}));
  EXPECT_EQ(engine::strip_option(V{"prog", "--nprocs", "2"}, "--nproc"), (V{"prog", "--nprocs", "2"}));
}

DistEnv env_of(const std::map<std::string, std::string>& m) {
  return engine::dist_env_from([&](const char* k) -> const char* {
    auto it = m.find(k);
    return it == m.end() ? nullptr : it->second.c_str();
  });
}

std::string error_of(const std::map<std::string, std::string>& m) {
  try {
    env_of(m);
  } catch (const engine::Error& e) {
    return e.what();
  }
  return "";
}

TEST(DistEnv, ReadsTheContract) {
  const DistEnv one = env_of({});
  EXPECT_EQ(one.world_size, 1);
  EXPECT_EQ(one.rank, 0);
  const DistEnv e = env_of({{"WORLD_SIZE", "4"}, {"RANK", "3"}, {"LOCAL_RANK", "1"}, {"MASTER_ADDR", "10.0.0.5"},
                            {"MASTER_PORT", "29500"}});
  EXPECT_EQ(e.world_size, 4);
  EXPECT_EQ(e.rank, 3);
  EXPECT_EQ(e.local_rank, 1);
  EXPECT_EQ(e.master_addr, "10.0.0.5");
  EXPECT_EQ(e.master_port, 29500);
  const DistEnv d = env_of({{"WORLD_SIZE", "2"}, {"RANK", "1"}, {"MASTER_PORT", "29500"}});
  EXPECT_EQ(d.local_rank, 1);  // defaults to RANK
  EXPECT_EQ(d.master_addr, "127.0.0.1");
}

TEST(DistEnv, ErrorsNameTheVariable) {
  EXPECT_NE(error_of({{"WORLD_SIZE", "two"}}).find("WORLD_SIZE=\"two\""), std::string::npos);
  EXPECT_NE(error_of({{"WORLD_SIZE", "2"}, {"MASTER_PORT", "1"}}).find("RANK is not set"), std::string::npos);
  EXPECT_NE(error_of({{"WORLD_SIZE", "2"}, {"RANK", "2"}, {"MASTER_PORT", "1"}}).find("RANK=\"2\""),
            std::string::npos);
  EXPECT_NE(error_of({{"WORLD_SIZE", "2"}, {"RANK", "0"}}).find("MASTER_PORT is not set"), std::string::npos);
  EXPECT_NE(error_of({{"WORLD_SIZE", "2"}, {"RANK", "0"}, {"MASTER_PORT", "70000"}}).find("MASTER_PORT"),
            std::string::npos);
  EXPECT_NE(error_of({{"RANK", "1"}}).find("WORLD_SIZE is not set"), std::string::npos);
}

TEST(DistEnv, RankEngineOptions) {
  DistEnv e;
  EXPECT_EQ(engine::rank_engine_options(e, engine::Backend::kCPU, 0).backend, engine::Backend::kCPU);
  e.world_size = 2;
  e.rank = e.local_rank = 1;
  const engine::EngineOptions o = engine::rank_engine_options(e, engine::Backend::kAuto, 2);
  EXPECT_EQ(o.backend, engine::Backend::kCUDA);
  EXPECT_EQ(o.device_ordinal, 1);
  auto err = [&](engine::Backend b, int n) {
    try {
      engine::rank_engine_options(e, b, n);
    } catch (const engine::Error& x) {
      return std::string(x.what());
    }
    return std::string();
  };
  EXPECT_NE(err(engine::Backend::kCPU, 2).find("needs CUDA and NCCL"), std::string::npos);
  EXPECT_NE(err(engine::Backend::kAuto, 0).find("no CUDA device"), std::string::npos);
  EXPECT_NE(err(engine::Backend::kAuto, 1).find("LOCAL_RANK=1 but this host has 1 CUDA device(s)"),
            std::string::npos);
}

TEST(DistEnv, CpuEngineRefusesDataParallel) {
  engine::Engine eng({engine::Backend::kCPU});
  EXPECT_NO_THROW(eng.init_data_parallel(0, 1, ""));  // world 1: nothing
  EXPECT_EQ(eng.comm(), nullptr);
  EXPECT_EQ(eng.world_size(), 1);
  try {
    eng.init_data_parallel(0, 2, std::string(128, 'x'));
    ADD_FAILURE() << "the CPU backend joined a data-parallel job";
  } catch (const engine::Error& x) {
    EXPECT_NE(std::string(x.what()).find("needs the CUDA backend and NCCL"), std::string::npos) << x.what();
  }
}

}  // namespace
