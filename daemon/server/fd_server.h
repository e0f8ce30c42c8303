// The fd socket: where an opened session attaches. The client proves it owns
// the session (token, and SO_PEERCRED pid equal to the pid it opened with),
// receives the pool file descriptors with SCM_RIGHTS, and keeps the
// connection open. When the connection closes, whether the client exited,
// crashed or was SIGKILLed, the session is reclaimed at once.
#pragma once

#include <map>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "common/unique_fd.h"
#include "daemon/core/memory_manager.h"

namespace tidepool {

class FdServer {
 public:
  explicit FdServer(MemoryManager* manager) : manager_(manager) {}
  ~FdServer();

  // Listens on `path` (mode 0660) and starts the serving thread.
  absl::Status Start(const std::string& path);
  void Stop();

 private:
  void Loop();
  void Handshake(UniqueFd conn);
  absl::StatusOr<uint64_t> Attach(int conn);

  MemoryManager* manager_;
  UniqueFd listen_fd_;
  UniqueFd epoll_fd_;
  UniqueFd wake_fd_;  // eventfd that stops the loop
  std::thread thread_;
  absl::Mutex mu_;
  // Attached connections: fd -> session id.
  std::map<int, std::pair<UniqueFd, uint64_t>> attached_ ABSL_GUARDED_BY(mu_);
  int handshakes_ ABSL_GUARDED_BY(mu_) = 0;  // threads still running
};

}  // namespace tidepool
