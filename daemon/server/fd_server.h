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
#include "daemon/server/hot_path_server.h"

namespace tidepool {

class FdServer {
 public:
  // `observer` (may be empty) times hot-path requests like RPCs.
  explicit FdServer(MemoryManager* manager, RpcObserver observer = nullptr)
      : manager_(manager), observer_(std::move(observer)) {}
  ~FdServer();

  // Listens on `path` (mode 0660) and starts the serving thread.
  absl::Status Start(const std::string& path);
  void Stop();

 private:
  void Loop();
  void Handshake(UniqueFd conn);
  struct Attached {
    UniqueFd conn;
    uint64_t session = 0;
    std::unique_ptr<HotPathServer> hot_path;
  };
  absl::StatusOr<Attached> Attach(int conn);

  MemoryManager* manager_;
  RpcObserver observer_;
  UniqueFd listen_fd_;
  UniqueFd epoll_fd_;
  UniqueFd wake_fd_;  // eventfd that stops the loop
  std::thread thread_;
  absl::Mutex mu_;
  // Attached connections by fd.
  std::map<int, Attached> attached_ ABSL_GUARDED_BY(mu_);
  int handshakes_ ABSL_GUARDED_BY(mu_) = 0;  // threads still running
};

}  // namespace tidepool
