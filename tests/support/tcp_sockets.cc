#include "tests/support/tcp_sockets.h"

#include <dirent.h>
#include <linux/tcp.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <cstddef>
#include <cstdlib>

namespace tidepool::testing {
namespace {

// Calls fn(fd, info) for each open TCP socket of this process.
template <typename F>
void ForEachTcpSocket(F&& fn) {
  DIR* d = opendir("/proc/self/fd");
  if (d == nullptr) return;
  while (dirent* e = readdir(d)) {
    const int fd = std::atoi(e->d_name);
    if (fd <= 2 || fd == dirfd(d)) continue;
    tcp_info info{};
    socklen_t len = sizeof(info);
    if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &info, &len) != 0) continue;
    fn(fd, info, len);
  }
  closedir(d);
}

}  // namespace

uint64_t TcpBytesReceived() {
  uint64_t total = 0;
  ForEachTcpSocket([&](int, const tcp_info& info, socklen_t len) {
    if (len >= offsetof(tcp_info, tcpi_bytes_received) + sizeof(uint64_t)) {
      total += info.tcpi_bytes_received;
    }
  });
  return total;
}

void CapTcpBuffers(int bytes) {
  ForEachTcpSocket([&](int fd, const tcp_info&, socklen_t) {
    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &bytes, sizeof(bytes));
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &bytes, sizeof(bytes));
  });
}

}  // namespace tidepool::testing
