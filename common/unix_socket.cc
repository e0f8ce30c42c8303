#include "common/unix_socket.h"

#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace tidepool {
namespace {

constexpr size_t kMaxFds = 16;

absl::StatusOr<sockaddr_un> MakeAddress(const std::string& path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof(addr.sun_path)) {
    return absl::InvalidArgumentError(absl::StrCat("socket path must be 1..",
                                                   sizeof(addr.sun_path) - 1,
                                                   " bytes: '", path, "'"));
  }
  std::memcpy(addr.sun_path, path.data(), path.size());
  return addr;
}

}  // namespace

absl::StatusOr<UniqueFd> ListenUnix(const std::string& path, int mode) {
  auto final_addr = MakeAddress(path);
  if (!final_addr.ok()) return final_addr.status();
  // The socket is made under a name of its own in the same directory and
  // renamed into place once it listens, so that `path` never names a
  // socket that refuses connections (clients and tests wait for the file
  // to appear) or one with the wrong mode. Too long a directory for such a
  // name: made in place.
  const size_t slash = path.rfind('/');
  std::string made =
      absl::StrCat(slash == std::string::npos ? "" : path.substr(0, slash + 1),
                   ".", ::getpid(), ".", ::gettid(), ".listening");
  if (!MakeAddress(made).ok()) made = path;
  auto addr = MakeAddress(made);
  if (!addr.ok()) return addr.status();
  UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd.valid()) return absl::ErrnoToStatus(errno, "socket");
  ::unlink(made.c_str());
  // bind() creates the file with the umask's mode (0777 under umask 000):
  // until the chmod below anyone could connect. Under 0177 it is born
  // 0600. The umask is the process's, so this races other threads that
  // create files; the daemon runs under 0077 anyway (daemon/main.cc).
  const mode_t saved = ::umask(0177);
  const int bound =
      ::bind(fd.get(), reinterpret_cast<sockaddr*>(&*addr), sizeof(*addr));
  const int bind_errno = errno;
  ::umask(saved);
  if (bound != 0) return absl::ErrnoToStatus(bind_errno, "bind " + made);
  absl::Status status;
  if (::chmod(made.c_str(), static_cast<mode_t>(mode)) != 0) {
    status = absl::ErrnoToStatus(errno, "chmod " + made);
  } else if (::listen(fd.get(), 64) != 0) {
    status = absl::ErrnoToStatus(errno, "listen " + path);
  } else if (made != path && ::rename(made.c_str(), path.c_str()) != 0) {
    // Replaces a stale socket file atomically.
    status = absl::ErrnoToStatus(errno, "rename to " + path);
  }
  if (!status.ok()) {
    ::unlink(made.c_str());
    return status;
  }
  return fd;
}

absl::StatusOr<UniqueFd> ConnectUnix(const std::string& path) {
  auto addr = MakeAddress(path);
  if (!addr.ok()) return addr.status();
  UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd.valid()) return absl::ErrnoToStatus(errno, "socket");
  if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&*addr), sizeof(*addr)) !=
      0) {
    return absl::ErrnoToStatus(errno, "connect " + path);
  }
  return fd;
}

absl::StatusOr<PeerCredentials> GetPeerCredentials(int fd) {
  ucred cred{};
  socklen_t len = sizeof(cred);
  if (::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) {
    return absl::ErrnoToStatus(errno, "SO_PEERCRED");
  }
  return PeerCredentials{cred.pid, cred.uid, cred.gid};
}

absl::Status SendMessage(int fd, const void* data, size_t size,
                         const std::vector<int>& fds) {
  if (fds.size() > kMaxFds) return absl::InvalidArgumentError("too many fds");
  const auto* p = static_cast<const char*>(data);
  size_t sent = 0;
  bool fds_sent = fds.empty();
  while (sent < size) {
    iovec iov{const_cast<char*>(p + sent), size - sent};
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * kMaxFds)];
    if (!fds_sent) {
      const size_t bytes = sizeof(int) * fds.size();
      msg.msg_control = control;
      msg.msg_controllen = CMSG_SPACE(bytes);
      cmsghdr* cmsg = CMSG_FIRSTHDR(&msg);
      cmsg->cmsg_level = SOL_SOCKET;
      cmsg->cmsg_type = SCM_RIGHTS;
      cmsg->cmsg_len = CMSG_LEN(bytes);
      std::memcpy(CMSG_DATA(cmsg), fds.data(), bytes);
    }
    ssize_t n = ::sendmsg(fd, &msg, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      return absl::ErrnoToStatus(errno, "sendmsg");
    }
    fds_sent = true;
    sent += static_cast<size_t>(n);
  }
  return absl::OkStatus();
}

bool TakeReceivedFds(msghdr* msg, std::vector<UniqueFd>* fds, size_t max_fds) {
  bool closed = false;
  for (cmsghdr* c = CMSG_FIRSTHDR(msg); c != nullptr; c = CMSG_NXTHDR(msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    const size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (size_t i = 0; i < count; ++i) {
      int received;
      std::memcpy(&received, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
      UniqueFd owned(received);
      if (fds != nullptr && fds->size() < max_fds) {
        fds->push_back(std::move(owned));
      } else {
        closed = true;  // `owned` closes it
      }
    }
  }
  return closed;
}

absl::Status ReceiveMessage(int fd, void* data, size_t size,
                            std::vector<UniqueFd>* fds, size_t max_fds) {
  auto* p = static_cast<char*>(data);
  size_t got = 0;
  bool too_many = false;
  while (got < size) {
    iovec iov{p + got, size - got};
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * kMaxFds)];
    msg.msg_control = control;
    msg.msg_controllen = sizeof(control);
    ssize_t n = ::recvmsg(fd, &msg, MSG_CMSG_CLOEXEC);
    if (n < 0) {
      if (errno == EINTR) continue;
      return absl::ErrnoToStatus(errno, "recvmsg");
    }
    too_many |= TakeReceivedFds(&msg, fds, max_fds);
    if (n == 0) {
      return absl::UnavailableError("peer closed the connection");
    }
    got += static_cast<size_t>(n);
  }
  if (too_many) {
    return absl::InvalidArgumentError("unexpected file descriptors received");
  }
  return absl::OkStatus();
}

}  // namespace tidepool
