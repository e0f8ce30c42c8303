#include "daemon/server/fd_server.h"

#include <fcntl.h>
#include <glog/logging.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <system_error>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "common/unix_socket.h"

namespace tidepool {
namespace {

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
  const int flags = ::fcntl(listen_fd_.get(), F_GETFL);
  if (flags < 0 ||
      ::fcntl(listen_fd_.get(), F_SETFL, flags | O_NONBLOCK) != 0) {
    return absl::ErrnoToStatus(errno, "fcntl O_NONBLOCK");
  }
  spare_fd_.Reset(::open("/dev/null", O_RDONLY | O_CLOEXEC));
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
  try {
    thread_ = std::thread([this] { Loop(); });
  } catch (const std::system_error& e) {
    return absl::ResourceExhaustedError(
        absl::StrCat("no thread for the fd socket: ", e.what()));
  }
  return absl::OkStatus();
}

void FdServer::Stop() {
  if (!thread_.joinable()) return;
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
  }
  uint64_t one = 1;
  (void)!::write(wake_fd_.get(), &one, sizeof(one));
  thread_.join();
  // The daemon is going away: hot paths stop; sessions go with the manager.
  conns_.clear();
  absl::MutexLock lock(&mu_);
  connections_ = 0;
}

void FdServer::Adopt(UniqueFd conn) {
  {
    absl::MutexLock lock(&mu_);
    adopted_.push_back(std::move(conn));
  }
  uint64_t one = 1;
  (void)!::write(wake_fd_.get(), &one, sizeof(one));
}

size_t FdServer::connection_count() const {
  absl::MutexLock lock(&mu_);
  return connections_;
}

void FdServer::Loop() {
  epoll_event events[64];
  for (;;) {
    const int n = ::epoll_wait(epoll_fd_.get(), events, 64, 200);
    if (n < 0 && errno != EINTR) {
      PLOG(ERROR) << "epoll_wait";
      return;
    }
    for (int i = 0; i < n; ++i) {
      const int fd = events[i].data.fd;
      if (fd == wake_fd_.get()) {
        uint64_t count;
        (void)!::read(wake_fd_.get(), &count, sizeof(count));
        std::vector<UniqueFd> adopted;
        {
          absl::MutexLock lock(&mu_);
          if (stop_) return;
          adopted.swap(adopted_);
        }
        for (UniqueFd& c : adopted) Add(std::move(c));
        continue;
      }
      if (fd == listen_fd_.get()) {
        Accept();
        continue;
      }
      auto it = conns_.find(fd);
      if (it == conns_.end()) continue;
      if (!OnReadable(it->second)) Close(fd);
    }
    const absl::Time now = absl::Now();
    std::vector<int> late;
    for (const auto& [fd, conn] : conns_) {
      if (!conn.attached && conn.deadline < now) late.push_back(fd);
    }
    for (int fd : late) {
      LOG(WARNING) << "fd socket: a connection sent no attach request within "
                   << limits_.handshake_timeout << "; closed";
      Close(fd);
    }
    manager_->ReapUnattached(now);
  }
}

void FdServer::Accept() {
  auto refuse = [this](absl::string_view why) {
    // One line per few seconds: a flood must not flood the log too.
    const absl::Time now = absl::Now();
    if (now < next_refusal_log_) return;
    next_refusal_log_ = now + absl::Seconds(5);
    LOG(WARNING) << "fd socket: connection refused: " << why;
  };
  for (;;) {
    UniqueFd conn(::accept4(listen_fd_.get(), nullptr, nullptr,
                            SOCK_CLOEXEC | SOCK_NONBLOCK));
    if (!conn.valid()) {
      switch (errno) {
        case EAGAIN:
          return;
        case EINTR:
        case ECONNABORTED:
          continue;
        case EMFILE:
        case ENFILE: {
          // Take the peer off the queue (else it stays readable and the
          // loop spins) with the descriptor kept spare for this.
          spare_fd_.Reset();
          UniqueFd dropped(::accept4(listen_fd_.get(), nullptr, nullptr,
                                     SOCK_CLOEXEC | SOCK_NONBLOCK));
          dropped.Reset();
          spare_fd_.Reset(::open("/dev/null", O_RDONLY | O_CLOEXEC));
          refuse("out of file descriptors (raise LimitNOFILE)");
          if (!dropped.valid() && errno == EAGAIN) return;
          continue;
        }
        default:
          refuse(absl::StrCat("accept: ", std::strerror(errno)));
          return;
      }
    }
    Add(std::move(conn));
  }
}

void FdServer::DropOldest(const std::map<uint64_t, int>& orders,
                          absl::string_view why) {
  if (orders.empty()) return;
  const int fd = orders.begin()->second;
  const absl::Time now = absl::Now();
  if (now >= next_refusal_log_) {
    next_refusal_log_ = now + absl::Seconds(5);
    LOG(WARNING) << "fd socket: closed the oldest connection waiting to "
                    "attach: "
                 << why;
  }
  Close(fd);
}

void FdServer::Add(UniqueFd fd) {
  const int raw = fd.get();
  epoll_event ev{};
  ev.events = EPOLLIN | EPOLLRDHUP;
  ev.data.fd = raw;
  if (::epoll_ctl(epoll_fd_.get(), EPOLL_CTL_ADD, raw, &ev) != 0) {
    PLOG(WARNING) << "fd socket: connection refused: epoll_ctl";
    return;
  }
  Conn conn;
  conn.fd = std::move(fd);
  conn.deadline = absl::Now() + limits_.handshake_timeout;
  conn.order = next_order_++;
  if (auto peer = GetPeerCredentials(raw); peer.ok()) conn.uid = peer->uid;
  // Room first, so a flood of idle peers costs its own oldest members.
  if (auto it = pending_by_uid_.find(conn.uid);
      it != pending_by_uid_.end() &&
      it->second.size() >= limits_.max_pending_per_uid) {
    DropOldest(it->second, absl::StrCat(limits_.max_pending_per_uid, " of uid ",
                                        conn.uid, " pending"));
  }
  if (pending_ >= limits_.max_pending) {
    DropOldest(pending_order_,
               absl::StrCat(limits_.max_pending, " connections pending"));
  }
  pending_order_.emplace(conn.order, raw);
  pending_by_uid_[conn.uid].emplace(conn.order, raw);
  conns_.emplace(raw, std::move(conn));
  ++pending_;
  absl::MutexLock lock(&mu_);
  ++connections_;
}

void FdServer::Unpend(const Conn& conn) {
  --pending_;
  pending_order_.erase(conn.order);
  auto it = pending_by_uid_.find(conn.uid);
  if (it == pending_by_uid_.end()) return;
  it->second.erase(conn.order);
  if (it->second.empty()) pending_by_uid_.erase(it);
}

void FdServer::Close(int fd) {
  auto it = conns_.find(fd);
  if (it == conns_.end()) return;
  ::epoll_ctl(epoll_fd_.get(), EPOLL_CTL_DEL, fd, nullptr);
  Conn conn = std::move(it->second);
  conns_.erase(it);
  if (conn.attached) {
    conn.hot_path.reset();  // stops serving before the session goes
    manager_->Detached(conn.session);
  } else {
    Unpend(conn);
  }
  absl::MutexLock lock(&mu_);
  --connections_;
}

bool FdServer::OnReadable(Conn& conn) {
  for (;;) {
    const size_t want =
        conn.attached ? sizeof(wire::MapRequest) : sizeof(wire::AttachRequest);
    iovec iov{conn.buffer.data() + conn.got, want - conn.got};
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * 16)];
    msg.msg_control = control;
    msg.msg_controllen = sizeof(control);
    const ssize_t n =
        ::recvmsg(conn.fd.get(), &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
    // Nothing a client sends carries descriptors: close any that came.
    if (n >= 0) TakeReceivedFds(&msg, nullptr, 0);
    if (n == 0) {  // the peer closed
      if (!conn.attached && conn.got > 0) {
        SendError(conn.fd.get(),
                  absl::InvalidArgumentError(absl::StrCat(
                      "could not read the attach request: the peer closed "
                      "after ",
                      conn.got, " of ", want, " bytes")));
      }
      return false;
    }
    if (n < 0) {
      if (errno == EAGAIN) return true;
      if (errno == EINTR) continue;
      return false;
    }
    conn.got += static_cast<size_t>(n);
    if (conn.got < want) continue;
    conn.got = 0;
    if (!conn.attached) {
      absl::Status attached = Attach(conn);
      if (!attached.ok()) {
        LOG(WARNING) << "fd socket: attach refused: " << attached;
        SendError(conn.fd.get(), attached);
        return false;
      }
      continue;
    }
    wire::MapRequest request;
    std::memcpy(&request, conn.buffer.data(), sizeof(request));
    if (request.magic != wire::kMapMagic) {
      LOG(WARNING) << "fd socket: session " << conn.session
                   << " sent garbage after attaching; detached";
      return false;
    }
    absl::Status sent = SendPieces(conn);
    if (!sent.ok()) {
      LOG(WARNING) << "fd socket: session " << conn.session
                   << ": pool pieces not delivered (" << sent << "); detached";
      return false;
    }
  }
}

absl::Status FdServer::Attach(Conn& conn) {
  wire::AttachRequest request;
  std::memcpy(&request, conn.buffer.data(), sizeof(request));
  if (request.magic != wire::kAttachMagic) {
    return absl::InvalidArgumentError("not a tidepool attach request");
  }
  if (request.version != wire::kAttachVersion) {
    return absl::InvalidArgumentError(
        absl::StrCat("attach protocol version ", request.version,
                     " not supported (want ", wire::kAttachVersion, ")"));
  }
  TP_ASSIGN_OR_RETURN(const PeerCredentials peer,
                      GetPeerCredentials(conn.fd.get()));
  TP_ASSIGN_OR_RETURN(const AttachGrant grant, manager_->Attach(request, peer));
  Token token;
  std::memcpy(token.data(), request.token, token.size());
  auto hot_path = HotPathServer::Start(&hot_path_pollers_, manager_,
                                       request.session_id, token, observer_);
  if (!hot_path.ok()) {
    manager_->Detached(request.session_id);
    return hot_path.status();
  }
  wire::AttachReply reply{};
  reply.magic = wire::kAttachMagic;
  reply.status_code = 0;
  grant.backend->FillAttachReply(&reply);
  reply.host_pool_bytes = grant.host_pool_bytes;
  reply.hot_path_bytes = (*hot_path)->bytes();
  std::vector<int> fds = {grant.backend->control_page_fd(), (*hot_path)->fd()};
  if (grant.backend->device_pool_fd() >= 0) {
    fds.push_back(grant.backend->device_pool_fd());
  }
  reply.fd_count = static_cast<uint32_t>(fds.size());
  absl::Status sent = SendMessage(conn.fd.get(), &reply, sizeof(reply), fds);
  if (!sent.ok()) {
    hot_path->reset();
    manager_->Detached(request.session_id);
    return sent;
  }
  conn.attached = true;
  conn.session = request.session_id;
  conn.hot_path = std::move(*hot_path);
  Unpend(conn);
  LOG(INFO) << "session " << request.session_id << " attached from pid "
            << peer.pid;
  return absl::OkStatus();
}

absl::Status FdServer::SendPieces(Conn& conn) {
  std::vector<MappingGrant> grants =
      manager_->TakeGrants(conn.session, wire::kMaxPiecesPerReply);
  wire::MapReply reply{};
  reply.magic = wire::kMapMagic;
  reply.count = static_cast<uint32_t>(grants.size());
  std::vector<int> fds;
  for (size_t i = 0; i < grants.size(); ++i) {
    reply.pieces[i] = wire::MapPiece{
        .device = grants[i].device ? 1u : 0u,
        .reserved = 0,
        .offset = grants[i].offset,
        .bytes = grants[i].bytes,
        .generation = grants[i].generation,
    };
    fds.push_back(grants[i].fd->get());
  }
  // Non-blocking: a client that asks and does not read is only hurting
  // itself, and is detached.
  return SendMessage(conn.fd.get(), &reply, sizeof(reply), fds);
}

}  // namespace tidepool
