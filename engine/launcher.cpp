#include "engine/launcher.h"

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "engine/check.h"
#include "engine/rendezvous.h"

namespace engine {
namespace {

int parse_int(const char* name, const char* value, int lo, int hi) {
  char* end = nullptr;
  errno = 0;
  const long v = std::strtol(value, &end, 10);
  if (errno != 0 || end == value || *end != '\0' || v < lo || v > hi)
    throw Error(str_cat("environment: ", name, "=\"", value, "\" must be an integer in [", lo, ", ", hi, "]"));
  return int(v);
}

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

std::string describe_exit(int rank, int status) {
  if (WIFSIGNALED(status)) {
    const int sig = WTERMSIG(status);
    const char* name = strsignal(sig);
    return str_cat("rank ", rank, " killed by signal ", sig, " (", name ? name : "?", ")");
  }
  return str_cat("rank ", rank, " exited with status ", WEXITSTATUS(status));
}

}  // namespace

DistEnv dist_env_from(const std::function<const char*(const char*)>& get_fn) {
  auto get = [&](const char* name) -> const char* {
    const char* v = get_fn ? get_fn(name) : std::getenv(name);
    return v && *v ? v : nullptr;
  };
  DistEnv e;
  const char* world = get("WORLD_SIZE");
  if (!world) {
    const char* rank = get("RANK");
    ENGINE_CHECK(rank == nullptr || std::strcmp(rank, "0") == 0, "environment: RANK=", rank ? rank : "",
                 " but WORLD_SIZE is not set");
    return e;
  }
  e.world_size = parse_int("WORLD_SIZE", world, 1, 1 << 16);
  if (e.world_size == 1) return e;
  const char* rank = get("RANK");
  ENGINE_CHECK(rank != nullptr, "environment: WORLD_SIZE=", e.world_size, " but RANK is not set");
  e.rank = parse_int("RANK", rank, 0, e.world_size - 1);
  const char* local = get("LOCAL_RANK");
  e.local_rank = local ? parse_int("LOCAL_RANK", local, 0, 1 << 16) : e.rank;
  if (const char* addr = get("MASTER_ADDR")) e.master_addr = addr;
  const char* port = get("MASTER_PORT");
  ENGINE_CHECK(port != nullptr, "environment: WORLD_SIZE=", e.world_size, " but MASTER_PORT is not set");
  e.master_port = parse_int("MASTER_PORT", port, 1, 65535);
  return e;
}

EngineOptions rank_engine_options(const DistEnv& env, Backend backend, int device_count) {
  EngineOptions o;
  o.backend = backend;
  if (env.world_size == 1) return o;
  ENGINE_CHECK(backend != Backend::kCPU && device_count > 0, "data parallel (WORLD_SIZE=",
               env.world_size, ") needs CUDA and NCCL, ",
               backend == Backend::kCPU ? "but the CPU backend was requested (--cpu)"
                                        : "but no CUDA device was found",
               "; the CPU backend trains in one process");
  ENGINE_CHECK(env.local_rank < device_count, "LOCAL_RANK=", env.local_rank, " but this host has ",
               device_count, " CUDA device(s) (one process per GPU: at most ", device_count, " ranks per host)");
  o.backend = Backend::kCUDA;
  o.device_ordinal = env.local_rank;
  return o;
}

std::vector<std::string> strip_option(const std::vector<std::string>& argv, const std::string& name) {
  std::vector<std::string> out;
  for (size_t i = 0; i < argv.size(); ++i) {
    if (i > 0 && argv[i] == name) {
      ++i;  // and its value
      continue;
    }
    if (i > 0 && argv[i].rfind(name + "=", 0) == 0) continue;
    out.push_back(argv[i]);
  }
  return out;
}

int launch_ranks(const LaunchOptions& opts, std::ostream& log) {
  ENGINE_CHECK(opts.nproc >= 1, "--nproc must be >= 1, got ", opts.nproc);
  ENGINE_CHECK(!opts.exe.empty() && !opts.argv.empty(), "launch_ranks: no program to run");
  const int port = opts.master_port > 0 ? opts.master_port : pick_free_port();

  // Block the signals we wait for; the children get the old mask back before exec.
  sigset_t wait_set, old_set;
  sigemptyset(&wait_set);
  sigaddset(&wait_set, SIGCHLD);
  sigaddset(&wait_set, SIGINT);
  sigaddset(&wait_set, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &wait_set, &old_set);

  std::vector<char*> cargv;
  for (const std::string& a : opts.argv) cargv.push_back(const_cast<char*>(a.c_str()));
  cargv.push_back(nullptr);
  std::vector<pid_t> pids(size_t(opts.nproc), -1);
  for (int r = 0; r < opts.nproc; ++r) {
    const pid_t pid = ::fork();
    if (pid == 0) {
      pthread_sigmask(SIG_SETMASK, &old_set, nullptr);
      const std::string rs = std::to_string(r), ws = std::to_string(opts.nproc), ps = std::to_string(port);
      setenv("RANK", rs.c_str(), 1);
      setenv("LOCAL_RANK", rs.c_str(), 1);
      setenv("WORLD_SIZE", ws.c_str(), 1);
      setenv("MASTER_ADDR", "127.0.0.1", 1);
      setenv("MASTER_PORT", ps.c_str(), 1);
      setenv("NCCL_NVLS_ENABLE", "0", 0);  // NVLink SHARP off unless asked for (the lent multi-GPU hosts need it)
      ::execv(opts.exe.c_str(), cargv.data());
      std::fprintf(stderr, "launcher: rank %d: cannot run %s: %s\n", r, opts.exe.c_str(), std::strerror(errno));
      _exit(127);
    }
    if (pid < 0) {
      const std::string err = std::strerror(errno);
      for (pid_t p : pids)
        if (p > 0) ::kill(p, SIGKILL), ::waitpid(p, nullptr, 0);
      pthread_sigmask(SIG_SETMASK, &old_set, nullptr);
      throw Error("launcher: fork failed for rank " + std::to_string(r) + ": " + err);
    }
    pids[size_t(r)] = pid;
  }

  int alive = opts.nproc, forwarded = 0;
  std::string failure;
  double kill_at = 0;  // 0 = no SIGKILL scheduled
  auto signal_alive = [&](int sig) {
    for (pid_t p : pids)
      if (p > 0) ::kill(p, sig);
  };
  while (alive > 0) {
    // Reap; among ranks that ended together, a signal death is the likelier cause (the others' watchdogs
    // exit 1 right after it), so it is the one reported.
    std::string first_exit, first_signal;
    for (int r = 0; r < opts.nproc; ++r) {
      pid_t& p = pids[size_t(r)];
      if (p <= 0) continue;
      int status = 0;
      if (::waitpid(p, &status, WNOHANG) != p) continue;
      p = -1;
      --alive;
      const bool ok = WIFEXITED(status) && WEXITSTATUS(status) == 0;
      if (ok) continue;
      std::string& slot = WIFSIGNALED(status) ? first_signal : first_exit;
      if (slot.empty()) slot = describe_exit(r, status);
    }
    if (failure.empty() && forwarded == 0 && (!first_signal.empty() || !first_exit.empty())) {
      failure = first_signal.empty() ? first_exit : first_signal;
      log << "launcher: " << failure << "; stopping the other ranks" << std::endl;
      signal_alive(SIGTERM);
      kill_at = now_s() + opts.grace_s;
    }
    if (alive == 0) break;
    if (kill_at > 0 && now_s() >= kill_at) {
      log << "launcher: ranks still running " << opts.grace_s << " s after SIGTERM: SIGKILL" << std::endl;
      signal_alive(SIGKILL);
      kill_at = 0;
    }
    timespec ts{0, 100 * 1000 * 1000};
    siginfo_t info;
    const int sig = sigtimedwait(&wait_set, &info, &ts);
    if (sig == SIGINT || sig == SIGTERM) {
      if (forwarded == 0) log << "launcher: " << strsignal(sig) << ": passing it to the ranks" << std::endl;
      forwarded = sig;
      signal_alive(sig);
      if (kill_at == 0) kill_at = now_s() + opts.grace_s;
    }
  }
  // Take any SIGCHLD left pending before unblocking (its default action is to ignore, but be tidy).
  timespec zero{0, 0};
  sigset_t chld;
  sigemptyset(&chld);
  sigaddset(&chld, SIGCHLD);
  while (sigtimedwait(&chld, nullptr, &zero) > 0) {
  }
  pthread_sigmask(SIG_SETMASK, &old_set, nullptr);
  if (!failure.empty()) return 1;
  if (forwarded) return 128 + forwarded;
  return 0;
}

}  // namespace engine
