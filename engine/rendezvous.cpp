#include "engine/rendezvous.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <thread>

#include "engine/check.h"

namespace engine {
namespace {

constexpr char kMagic[4] = {'G', 'Q', 'D', 'P'};
constexpr uint32_t kVersion = 1;
constexpr uint32_t kMaxReply = 1u << 20;  // the blob or an error message

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

int remaining_ms(double deadline) {
  const double left = deadline - now_s();
  return left <= 0 ? 0 : int(std::min(left * 1e3 + 1, 1e9));
}

std::string errno_text() { return std::strerror(errno); }

void close_fd(int& fd) {
  if (fd >= 0) ::close(fd);
  fd = -1;
}

enum class Io { kOk, kClosed, kTimeout };

// Moves n bytes with send (out = true) or recv, waiting in poll until the deadline.
Io transfer(int fd, char* p, size_t n, bool out, double deadline) {
  while (n > 0) {
    pollfd pf{fd, short(out ? POLLOUT : POLLIN), 0};
    const int pr = ::poll(&pf, 1, remaining_ms(deadline));
    if (pr < 0 && errno == EINTR) continue;
    if (pr == 0) return Io::kTimeout;
    // MSG_NOSIGNAL: a closed peer is an error code, never SIGPIPE
    const ssize_t k = out ? ::send(fd, p, n, MSG_NOSIGNAL) : ::recv(fd, p, n, 0);
    if (k == 0 && !out) return Io::kClosed;
    if (k < 0) {
      if (errno == EINTR || errno == EAGAIN) continue;
      return Io::kClosed;
    }
    p += k;
    n -= size_t(k);
  }
  return Io::kOk;
}

Io send_all(int fd, const void* data, size_t n, double deadline) {
  return transfer(fd, const_cast<char*>(static_cast<const char*>(data)), n, true, deadline);
}

Io recv_all(int fd, void* data, size_t n, double deadline) {
  return transfer(fd, static_cast<char*>(data), n, false, deadline);
}

// What a rank announces. Fixed little-endian layout (every rank runs the same binary on the same ISA).
struct Hello {
  char magic[4];
  uint32_t version;
  int32_t rank, world;
  uint64_t fingerprint;
};

// Rank 0's answer: status 0 = ok (payload = blob), 1 = the rendezvous failed (payload = the reason).
void send_reply(int fd, uint8_t status, const std::string& payload, double deadline) {
  const uint32_t len = uint32_t(std::min<size_t>(payload.size(), kMaxReply));
  char head[5];
  head[0] = char(status);
  std::memcpy(head + 1, &len, 4);
  if (send_all(fd, head, 5, deadline) == Io::kOk) send_all(fd, payload.data(), len, deadline);
}

std::string peer_address(const sockaddr_in& a) {
  char ip[INET_ADDRSTRLEN] = "?";
  ::inet_ntop(AF_INET, &a.sin_addr, ip, sizeof(ip));
  return str_cat(ip, ":", ntohs(a.sin_port));
}

void set_nodelay(int fd) {
  const int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

}  // namespace

uint64_t fnv1a64(const void* data, size_t n, uint64_t h) {
  const unsigned char* p = static_cast<const unsigned char*>(data);
  for (size_t i = 0; i < n; ++i) h = (h ^ p[i]) * 0x100000001b3ull;
  return h;
}

int pick_free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  ENGINE_CHECK(fd >= 0, "pick_free_port: socket: ", errno_text());
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = 0;
  socklen_t len = sizeof(a);
  const bool ok = ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0 &&
                  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) == 0;
  const std::string err = ok ? "" : errno_text();
  ::close(fd);
  ENGINE_CHECK(ok, "pick_free_port: cannot bind 127.0.0.1:0: ", err);
  return ntohs(a.sin_port);
}

Rendezvous::Rendezvous(const RendezvousOptions& opts, const std::function<std::string()>& make_blob) : opts_(opts) {
  const int W = opts.world_size, R = opts.rank;
  ENGINE_CHECK(W >= 1 && R >= 0 && R < W, "rendezvous: rank ", R, " and world size ", W,
               " (RANK must be in [0, WORLD_SIZE))");
  if (W == 1) {
    blob_ = make_blob();
    return;
  }
  ENGINE_CHECK(opts.master_port > 0 && opts.master_port < 65536, "rendezvous: MASTER_PORT ", opts.master_port,
               " is not a TCP port");
  const double deadline = now_s() + opts.timeout_s;
  const std::string where = str_cat(opts.master_addr, ":", opts.master_port);

  if (R == 0) {
    int lfd = ::socket(AF_INET, SOCK_STREAM, 0);
    ENGINE_CHECK(lfd >= 0, "rendezvous: socket: ", errno_text());
    const int one = 1;
    ::setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_ANY);  // multi-host: the others reach MASTER_ADDR from outside
    a.sin_port = htons(uint16_t(opts.master_port));
    if (::bind(lfd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0 || ::listen(lfd, W) != 0) {
      const std::string err = errno_text();
      close_fd(lfd);
      throw Error(str_cat("rendezvous: rank 0 cannot listen on port ", opts.master_port, ": ", err,
                          " (MASTER_PORT in use? pick another)"));
    }
    const std::string blob = make_blob();
    fds_.assign(size_t(W), -1);
    std::vector<std::string> addr(static_cast<size_t>(W));
    std::vector<int> extra;  // connections refused before they took a rank slot
    auto fail = [&](const std::string& why) {
      for (int& fd : fds_)
        if (fd >= 0) send_reply(fd, 1, why, now_s() + 2);
      for (int& fd : extra) send_reply(fd, 1, why, now_s() + 2), close_fd(fd);
      for (int& fd : fds_) close_fd(fd);
      close_fd(lfd);
      throw Error("rendezvous: " + why);
    };
    for (int arrived = 1; arrived < W;) {
      pollfd pf{lfd, POLLIN, 0};
      const int pr = ::poll(&pf, 1, remaining_ms(deadline));
      if (pr < 0 && errno == EINTR) continue;
      if (pr == 0) {
        std::string missing;
        for (int r = 1; r < W; ++r)
          if (fds_[size_t(r)] < 0) missing += (missing.empty() ? "" : ", ") + std::to_string(r);
        fail(str_cat("timed out after ", opts.timeout_s, " s on port ", opts.master_port, " waiting for rank(s) ",
                     missing, " of world size ", W, " (did every rank start, with the same MASTER_ADDR:MASTER_PORT?)"));
      }
      sockaddr_in pa{};
      socklen_t plen = sizeof(pa);
      int fd = ::accept(lfd, reinterpret_cast<sockaddr*>(&pa), &plen);
      if (fd < 0) continue;
      set_nodelay(fd);
      const std::string from = peer_address(pa);
      Hello h{};
      const Io io = recv_all(fd, &h, sizeof(h), deadline);
      if (io != Io::kOk) {  // a port scanner or a rank that died at once: not a rank, keep waiting
        close_fd(fd);
        continue;
      }
      extra.push_back(fd);
      if (std::memcmp(h.magic, kMagic, 4) != 0 || h.version != kVersion)
        fail(str_cat("a connection from ", from, " to port ", opts.master_port,
                     " is not a rank of this program (bad hello)"));
      if (h.world != W)
        fail(str_cat("rank ", h.rank, " at ", from, " announced world size ", h.world, ", rank 0 has ", W,
                     " (WORLD_SIZE differs between ranks)"));
      if (h.rank < 1 || h.rank >= W)
        fail(str_cat(from, " announced rank ", h.rank, ", outside [1, ", W, ")"));
      if (fds_[size_t(h.rank)] >= 0)
        fail(str_cat("rank ", h.rank, " announced twice: by ", addr[size_t(h.rank)], " and by ", from,
                     " (RANK must be distinct)"));
      if (h.fingerprint != opts.fingerprint)
        fail(str_cat("rank ", h.rank, " at ", from, " has run fingerprint ", std::hex, h.fingerprint, ", rank 0 has ",
                     opts.fingerprint, std::dec,
                     ": the ranks' resolved configs or data sets differ (same config, overrides and data file?)"));
      extra.pop_back();
      fds_[size_t(h.rank)] = fd;
      addr[size_t(h.rank)] = from;
      ++arrived;
    }
    close_fd(lfd);
    for (int r = 1; r < W; ++r) send_reply(fds_[size_t(r)], 0, blob, deadline + 5);
    blob_ = blob;
    return;
  }

  // Ranks 1..W-1: connect (retrying while rank 0 is not listening yet), announce, wait for the blob.
  addrinfo hints{}, *res = nullptr;
  hints.ai_family = AF_INET;
  hints.ai_socktype = SOCK_STREAM;
  const int gai = ::getaddrinfo(opts.master_addr.c_str(), std::to_string(opts.master_port).c_str(), &hints, &res);
  ENGINE_CHECK(gai == 0 && res != nullptr, "rendezvous: rank ", R, ": cannot resolve MASTER_ADDR \"",
               opts.master_addr, "\": ", gai_strerror(gai));
  sockaddr_in target{};
  std::memcpy(&target, res->ai_addr, sizeof(target));
  ::freeaddrinfo(res);
  int fd = -1;
  std::string last_err = "no attempt";
  while (true) {
    fd = ::socket(AF_INET, SOCK_STREAM, 0);
    ENGINE_CHECK(fd >= 0, "rendezvous: socket: ", errno_text());
    if (::connect(fd, reinterpret_cast<sockaddr*>(&target), sizeof(target)) == 0) break;
    last_err = errno_text();
    close_fd(fd);
    if (now_s() >= deadline)
      throw Error(str_cat("rendezvous: rank ", R, " could not connect to rank 0 at ", where, " within ",
                          opts.timeout_s, " s (last error: ", last_err, ")"));
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  set_nodelay(fd);
  fds_.assign(1, fd);
  Hello h{};
  std::memcpy(h.magic, kMagic, 4);
  h.version = kVersion;
  h.rank = R;
  h.world = W;
  h.fingerprint = opts.fingerprint;
  // Rank 0 gives up at its own deadline and then tells us why: wait a little longer than that.
  const double reply_deadline = deadline + 5;
  char head[5];
  Io io = send_all(fd, &h, sizeof(h), reply_deadline);
  if (io == Io::kOk) io = recv_all(fd, head, 5, reply_deadline);
  uint32_t len = 0;
  if (io == Io::kOk) std::memcpy(&len, head + 1, 4);
  if (io == Io::kOk && len > kMaxReply) io = Io::kClosed;
  std::string payload(len, '\0');
  if (io == Io::kOk) io = recv_all(fd, payload.data(), len, reply_deadline);
  if (io != Io::kOk) {
    close_fd(fds_[0]);
    throw Error(str_cat("rendezvous: rank ", R, ": ",
                        io == Io::kTimeout ? "no answer from rank 0 at " + where + " within " +
                                                 std::to_string(int(opts.timeout_s)) + " s"
                                           : "rank 0 at " + where + " closed the connection during the rendezvous"));
  }
  if (head[0] != 0) {
    close_fd(fds_[0]);
    throw Error(str_cat("rendezvous: rank ", R, ": rank 0 at ", where, " reports: ", payload));
  }
  blob_ = std::move(payload);
}

Rendezvous::~Rendezvous() {
  for (int& fd : fds_) close_fd(fd);
}

int Rendezvous::poll_peer_failure() const {
  for (size_t i = 0; i < fds_.size(); ++i) {
    const int fd = fds_[i];
    if (fd < 0) continue;
    const int peer = opts_.rank == 0 ? int(i) : 0;
    pollfd pf{fd, POLLIN, 0};
    if (::poll(&pf, 1, 0) <= 0) continue;
    if (pf.revents & (POLLERR | POLLHUP | POLLNVAL)) return peer;
    char c;
    const ssize_t k = ::recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);  // peek: barrier() may want this byte
    if (k == 0 || (k < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) return peer;
  }
  return -1;
}

void Rendezvous::barrier(double timeout_s) {
  if (opts_.world_size == 1) return;
  const double deadline = now_s() + timeout_s;
  const char token = 'B';
  char got = 0;
  auto check = [&](Io io, int peer) {
    if (io == Io::kClosed) throw Error(str_cat("barrier: rank ", opts_.rank, ": rank ", peer, " exited"));
    if (io == Io::kTimeout)
      throw Error(str_cat("barrier: rank ", opts_.rank, ": rank ", peer, " did not arrive within ", timeout_s, " s"));
  };
  if (opts_.rank == 0) {
    for (int r = 1; r < opts_.world_size; ++r) check(recv_all(fds_[size_t(r)], &got, 1, deadline), r);
    for (int r = 1; r < opts_.world_size; ++r) check(send_all(fds_[size_t(r)], &token, 1, deadline), r);
  } else {
    check(send_all(fds_[0], &token, 1, deadline), 0);
    check(recv_all(fds_[0], &got, 1, deadline), 0);
  }
}

}  // namespace engine
