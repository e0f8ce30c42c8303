// Unix-domain stream sockets that carry small messages with file
// descriptors attached (SCM_RIGHTS), and the peer's credentials.
#pragma once

#include <sys/socket.h>
#include <sys/types.h>

#include <cstddef>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/unique_fd.h"

namespace tidepool {

struct PeerCredentials {
  pid_t pid = 0;
  uid_t uid = 0;
  gid_t gid = 0;
};

// Listens on `path` (replacing a stale socket file) with the given mode.
absl::StatusOr<UniqueFd> ListenUnix(const std::string& path, int mode);
absl::StatusOr<UniqueFd> ConnectUnix(const std::string& path);
absl::StatusOr<PeerCredentials> GetPeerCredentials(int fd);

// Sends exactly `size` bytes with `fds` attached to the first byte.
absl::Status SendMessage(int fd, const void* data, size_t size,
                         const std::vector<int>& fds = {});

// Takes the fds that a recvmsg() delivered in `msg`: up to `max_fds` into
// `fds` (none when it is null), closing the rest. True when any was closed.
bool TakeReceivedFds(msghdr* msg, std::vector<UniqueFd>* fds, size_t max_fds);

// Receives exactly `size` bytes and any fds that came with them (at most
// `max_fds`; extra ones are closed and the call fails).
absl::Status ReceiveMessage(int fd, void* data, size_t size,
                            std::vector<UniqueFd>* fds = nullptr,
                            size_t max_fds = 0);

}  // namespace tidepool
