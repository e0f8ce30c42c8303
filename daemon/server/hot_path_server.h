// Serves one session's hot path (proto/wire.h HotPath): acquire and release
// requests that the client posts in a shared-memory ring instead of sending
// over gRPC. One thread per attached session takes the ring's entries in
// order: it copies and checks each, runs it through the MemoryManager as
// the session (it holds the session's token) and posts its completion.
// Between requests it spins for a while when they have been arriving
// quickly (common/spin_wait.h) and otherwise sleeps on the doorbell.
//
//   auto hot = HotPathServer::Start(&manager, session_id, token, observer);
//   send (*hot)->fd() to the client with the other pool fds;
//   ... destroying the server stops its thread.
#pragma once

#include <atomic>
#include <memory>
#include <thread>

#include "common/shared_memory.h"
#include "common/spin_wait.h"
#include "common/unique_fd.h"
#include "daemon/core/memory_manager.h"
#include "daemon/server/grpc_service.h"
#include "proto/wire.h"

namespace tidepool {

class HotPathServer {
 public:
  static absl::StatusOr<std::unique_ptr<HotPathServer>> Start(
      MemoryManager* manager, uint64_t session_id, const Token& token,
      RpcObserver observer = nullptr);
  ~HotPathServer();

  int fd() const { return fd_.get(); }
  uint64_t bytes() const { return mapping_.size(); }

  // One request, as the serving thread runs it (exposed for tests and the
  // fuzzer; the ring's own checks, sequence and failures_seen, are Loop's).
  void Serve(const wire::HotPathRequest& request,
             wire::HotPathCompletion* completion);

 private:
  HotPathServer(MemoryManager* manager, uint64_t session_id, Token token,
                RpcObserver observer)
      : manager_(manager),
        session_id_(session_id),
        token_(token),
        observer_(std::move(observer)) {}
  void Loop();
  // Waits until the request entry for `k` changes from what it held
  // before request k was posted; false if the server is stopping.
  bool WaitForEntry(uint64_t k);
  wire::HotPath* page() const {
    return reinterpret_cast<wire::HotPath*>(mapping_.data());
  }

  MemoryManager* manager_;
  const uint64_t session_id_;
  const Token token_;
  RpcObserver observer_;
  UniqueFd fd_;
  SharedMapping mapping_;
  std::atomic<bool> stop_{false};
  AdaptiveSpin spin_;  // the serving thread's alone
  std::thread thread_;
};

}  // namespace tidepool
