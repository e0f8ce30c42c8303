// libFuzzer target: the fd socket's attach handshake (proto/wire.h
// AttachRequest, then MapRequests), the first bytes any local process can
// send the daemon. A real FdServer (daemon/server/fd_server.h) serves one
// end of a socketpair per input, handed to it with Adopt() as if accepted;
// the input's bytes go into the other end, which then reads every reply
// (closing the descriptors that come with them) until the server closes.
//
// Input: [flags] then the bytes to send. Bit 0x80 of flags writes a valid
// magic, version, session id and token (of a session this input opened)
// over the first AttachRequest-sized bytes, so that the fuzzer gets past
// the checks into the attached state and its MapRequests.
#include <glog/logging.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "daemon/server/fd_server.h"
#include "fuzz/sim_daemon.h"
#include "proto/wire.h"

namespace tidepool::fuzz {
namespace {

FdServer& Server() {
  static FdServer* server = [] {
    auto* s = new FdServer(&SimManager());
    char dir[] = "/tmp/tidepool-attach-fuzz-XXXXXX";
    if (::mkdtemp(dir) == nullptr) std::abort();
    if (auto status = s->Start(std::string(dir) + "/fd.sock"); !status.ok()) {
      std::fprintf(stderr, "fuzz set-up: fd server: %s\n",
                   status.ToString().c_str());
      std::abort();
    }
    return s;
  }();
  return *server;
}

// Reads replies until the server closes its end.
void Drain(int fd) {
  for (;;) {
    char data[4096];
    iovec iov{data, sizeof(data)};
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * 32)];
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control;
    msg.msg_controllen = sizeof(control);
    const ssize_t n = ::recvmsg(fd, &msg, MSG_CMSG_CLOEXEC);
    for (cmsghdr* c = CMSG_FIRSTHDR(&msg); n > 0 && c != nullptr;
         c = CMSG_NXTHDR(&msg, c)) {
      if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
      const size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
      for (size_t i = 0; i < count; ++i) {
        int received;
        std::memcpy(&received, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
        ::close(received);
      }
    }
    if (n == 0 || (n < 0 && errno != EINTR)) return;
  }
}

}  // namespace
}  // namespace tidepool::fuzz

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  FLAGS_minloglevel = 2;  // every refused attach logs a warning
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace tidepool;
  using namespace tidepool::fuzz;
  FdServer& server = Server();
  MemoryManager& manager = SimManager();
  Bytes bytes(data, size);
  const uint8_t flags = bytes.U8();
  auto session = manager.OpenSession({.pid = ::getpid()});
  if (!session.ok()) return 0;
  std::vector<uint8_t> send = bytes.Take(size);
  if ((flags & 0x80) != 0) {
    wire::AttachRequest request;
    std::memset(&request, 0, sizeof(request));
    if (!send.empty()) {
      std::memcpy(&request, send.data(),
                  std::min(send.size(), sizeof(request)));
    }
    request.magic = wire::kAttachMagic;
    request.version = wire::kAttachVersion;
    request.session_id = session->id;
    std::memcpy(request.token, session->token.data(), sizeof(request.token));
    if (send.size() < sizeof(request)) send.resize(sizeof(request));
    std::memcpy(send.data(), &request, sizeof(request));
  }
  int fds[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) != 0) {
    std::abort();
  }
  UniqueFd client(fds[0]);
  server.Adopt(UniqueFd(fds[1]));
  size_t sent = 0;
  while (sent < send.size()) {
    const ssize_t n = ::send(client.get(), send.data() + sent,
                             send.size() - sent, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;  // the server closed: it refused what came so far
    sent += static_cast<size_t>(n);
  }
  ::shutdown(client.get(), SHUT_WR);
  Drain(client.get());
  client.Reset();
  // Reclaimed already when it attached (the connection closed); refused
  // otherwise.
  (void)manager.CloseSession(session->id, session->token);
  return 0;
}
