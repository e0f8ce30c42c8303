// Serves one session's hot path (proto/wire.h HotPath): acquire and release
// requests that the client posts in shared memory instead of sending over
// gRPC. One thread per attached session sleeps on the request doorbell,
// copies and checks each request, runs it through the MemoryManager as the
// session (it holds the session's token) and posts the completion.
//
//   auto hot = HotPathServer::Start(&manager, session_id, token, observer);
//   send (*hot)->fd() to the client with the other pool fds;
//   ... destroying the server stops its thread.
#pragma once

#include <atomic>
#include <memory>
#include <thread>

#include "common/shared_memory.h"
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

  // One request, as the serving thread runs it (exposed for tests).
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
  std::thread thread_;
};

}  // namespace tidepool
