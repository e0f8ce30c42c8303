#include "daemon/server/grpc_listener.h"

#include <fcntl.h>
#include <glog/logging.h>
#include <grpcpp/server_posix.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "common/status_macros.h"

namespace tidepool {

absl::StatusOr<std::unique_ptr<GrpcListener>> GrpcListener::Listen(
    const std::string& path) {
  TP_ASSIGN_OR_RETURN(UniqueFd listen_fd, ListenUnix(path, 0660));
  UniqueFd stop_fd(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!stop_fd.valid()) return absl::ErrnoToStatus(errno, "eventfd");
  return std::unique_ptr<GrpcListener>(
      new GrpcListener(std::move(listen_fd), std::move(stop_fd)));
}

GrpcListener::GrpcListener(UniqueFd listen_fd, UniqueFd stop_fd)
    : listen_fd_(std::move(listen_fd)), stop_fd_(std::move(stop_fd)) {}

GrpcListener::~GrpcListener() { Stop(); }

void GrpcListener::Start(grpc::Server* server) {
  thread_ = std::thread([this, server] { Loop(server); });
}

void GrpcListener::Stop() {
  if (!thread_.joinable()) return;
  const uint64_t one = 1;
  (void)!::write(stop_fd_.get(), &one, sizeof(one));
  thread_.join();
}

std::optional<PeerCredentials> GrpcListener::Lookup(
    const std::string& peer) const {
  int fd = -1;
  if (!absl::StartsWith(peer, "fd:") ||
      !absl::SimpleAtoi(absl::string_view(peer).substr(3), &fd)) {
    return std::nullopt;
  }
  absl::MutexLock lock(&mu_);
  auto it = peers_.find(fd);
  if (it == peers_.end()) return std::nullopt;
  return it->second;
}

void GrpcListener::Loop(grpc::Server* server) {
  // Kept open so that, out of descriptors, a connection can still be
  // accepted and closed instead of spinning on a listener that stays
  // readable.
  UniqueFd spare(::open("/dev/null", O_RDONLY | O_CLOEXEC));
  for (;;) {
    pollfd fds[2] = {{listen_fd_.get(), POLLIN, 0},
                     {stop_fd_.get(), POLLIN, 0}};
    if (::poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      PLOG(ERROR) << "gRPC socket: poll";
      return;
    }
    if (fds[1].revents != 0) return;
    if (fds[0].revents == 0) continue;
    // Non-blocking, as gRPC's own listener makes its connections.
    UniqueFd conn(::accept4(listen_fd_.get(), nullptr, nullptr,
                            SOCK_CLOEXEC | SOCK_NONBLOCK));
    if (!conn.valid()) {
      if (errno == EMFILE || errno == ENFILE) {
        LOG(WARNING) << "gRPC socket: out of file descriptors; a connection "
                        "is refused (raise LimitNOFILE)";
        spare.Reset();
        UniqueFd(::accept4(listen_fd_.get(), nullptr, nullptr, SOCK_CLOEXEC));
        spare.Reset(::open("/dev/null", O_RDONLY | O_CLOEXEC));
      } else if (errno != EINTR && errno != EAGAIN && errno != ECONNABORTED) {
        PLOG(WARNING) << "gRPC socket: accept";
      }
      continue;
    }
    absl::StatusOr<PeerCredentials> peer = GetPeerCredentials(conn.get());
    if (!peer.ok()) {
      LOG(WARNING) << "gRPC socket: " << peer.status();
      continue;
    }
    {
      absl::MutexLock lock(&mu_);
      peers_[conn.get()] = *peer;
    }
    grpc::AddInsecureChannelFromFd(server, conn.Release());
  }
}

}  // namespace tidepool
