#include "daemon/server/fd_server.h"

#include <glog/logging.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "common/unix_socket.h"

namespace tidepool {
namespace {

// A peer gets this long to send its attach request; a silent one is dropped
// without holding up anyone else.
constexpr int kHandshakeTimeoutSeconds = 5;

void SendError(int conn, const absl::Status& status) {
  wire::AttachReply reply{};
  reply.magic = wire::kAttachMagic;
  reply.status_code = static_cast<int32_t>(status.code());
  const std::string msg(status.message());
  std::strncpy(reply.message, msg.c_str(), sizeof(reply.message) - 1);
  SendMessage(conn, &reply, sizeof(reply)).IgnoreError();
}

}  // namespace

FdServer::~FdServer() { Stop(); }

absl::Status FdServer::Start(const std::string& path) {
  TP_ASSIGN_OR_RETURN(listen_fd_, ListenUnix(path, 0660));
  epoll_fd_.Reset(::epoll_create1(EPOLL_CLOEXEC));
  wake_fd_.Reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!epoll_fd_.valid() || !wake_fd_.valid()) {
    return absl::ErrnoToStatus(errno, "epoll/eventfd");
  }
  for (int fd : {listen_fd_.get(), wake_fd_.get()}) {
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.fd = fd;
    if (::epoll_ctl(epoll_fd_.get(), EPOLL_CTL_ADD, fd, &ev) != 0) {
      return absl::ErrnoToStatus(errno, "epoll_ctl");
    }
  }
  thread_ = std::thread([this] { Loop(); });
  return absl::OkStatus();
}

void FdServer::Stop() {
  if (!thread_.joinable()) return;
  uint64_t one = 1;
  (void)!::write(wake_fd_.get(), &one, sizeof(one));
  thread_.join();
  absl::MutexLock lock(&mu_);
  mu_.Await(absl::Condition(
      +[](int* n) { return *n == 0; }, &handshakes_));
  attached_.clear();
}

void FdServer::Loop() {
  epoll_event events[64];
  for (;;) {
    const int n = ::epoll_wait(epoll_fd_.get(), events, 64, 1000);
    if (n < 0 && errno != EINTR) {
      PLOG(ERROR) << "epoll_wait";
      return;
    }
    for (int i = 0; i < n; ++i) {
      const int fd = events[i].data.fd;
      if (fd == wake_fd_.get()) return;
      if (fd == listen_fd_.get()) {
        UniqueFd conn(
            ::accept4(listen_fd_.get(), nullptr, nullptr, SOCK_CLOEXEC));
        if (!conn.valid()) continue;
        // The handshake blocks on the peer; run it off the loop.
        {
          absl::MutexLock lock(&mu_);
          ++handshakes_;
        }
        std::thread([this, c = std::move(conn)]() mutable {
          Handshake(std::move(c));
        }).detach();
        continue;
      }
      // An attached connection became readable or hung up. Clients send
      // nothing after attaching, so either way the session ends.
      Attached gone;
      {
        absl::MutexLock lock(&mu_);
        auto it = attached_.find(fd);
        if (it == attached_.end()) continue;
        ::epoll_ctl(epoll_fd_.get(), EPOLL_CTL_DEL, fd, nullptr);
        gone = std::move(it->second);
        attached_.erase(it);
      }
      gone.hot_path.reset();  // stops serving before the session goes
      manager_->Detached(gone.session);
    }
    manager_->ReapUnattached(absl::Now());
  }
}

void FdServer::Handshake(UniqueFd conn) {
  struct Done {
    FdServer* server;
    ~Done() {
      absl::MutexLock lock(&server->mu_);
      --server->handshakes_;
    }
  } done{this};
  timeval tv{kHandshakeTimeoutSeconds, 0};
  ::setsockopt(conn.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  ::setsockopt(conn.get(), SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
  auto attached = Attach(conn.get());
  if (!attached.ok()) {
    LOG(WARNING) << "fd socket: attach refused: " << attached.status();
    SendError(conn.get(), attached.status());
    return;
  }
  const uint64_t session = attached->session;
  bool watched = false;
  {
    absl::MutexLock lock(&mu_);
    epoll_event ev{};
    ev.events = EPOLLIN | EPOLLRDHUP;
    ev.data.fd = conn.get();
    // Added under mu_, so the loop cannot see the fd before it is known.
    if (::epoll_ctl(epoll_fd_.get(), EPOLL_CTL_ADD, conn.get(), &ev) == 0) {
      const int fd = conn.get();
      attached->conn = std::move(conn);
      attached_.emplace(fd, std::move(*attached));
      watched = true;
    } else {
      PLOG(ERROR) << "epoll_ctl";
    }
  }
  if (!watched) {
    attached->hot_path.reset();
    manager_->Detached(session);
  }
}

absl::StatusOr<FdServer::Attached> FdServer::Attach(int conn) {
  wire::AttachRequest request{};
  absl::Status received = ReceiveMessage(conn, &request, sizeof(request));
  if (!received.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "could not read the attach request: ", received.message()));
  }
  if (request.magic != wire::kAttachMagic) {
    return absl::InvalidArgumentError("not a tidepool attach request");
  }
  if (request.version != wire::kAttachVersion) {
    return absl::InvalidArgumentError(
        absl::StrCat("attach protocol version ", request.version,
                     " not supported (want ", wire::kAttachVersion, ")"));
  }
  TP_ASSIGN_OR_RETURN(const PeerCredentials peer, GetPeerCredentials(conn));
  TP_ASSIGN_OR_RETURN(const AttachGrant grant, manager_->Attach(request, peer));
  Attached attached;
  attached.session = request.session_id;
  Token token;
  std::memcpy(token.data(), request.token, token.size());
  auto hot_path =
      HotPathServer::Start(manager_, request.session_id, token, observer_);
  if (!hot_path.ok()) {
    manager_->Detached(request.session_id);
    return hot_path.status();
  }
  attached.hot_path = std::move(*hot_path);
  wire::AttachReply reply{};
  reply.magic = wire::kAttachMagic;
  reply.status_code = 0;
  grant.backend->FillAttachReply(&reply);
  reply.host_pool_bytes = grant.host_pool_bytes;
  reply.hot_path_bytes = attached.hot_path->bytes();
  reply.fd_count = 4;
  absl::Status sent =
      SendMessage(conn, &reply, sizeof(reply),
                  {grant.host_pool_fd, grant.backend->device_pool_fd(),
                   grant.backend->control_page_fd(), attached.hot_path->fd()});
  if (!sent.ok()) {
    attached.hot_path.reset();
    manager_->Detached(request.session_id);
    return sent;
  }
  LOG(INFO) << "session " << request.session_id << " attached from pid "
            << peer.pid;
  return attached;
}

}  // namespace tidepool
