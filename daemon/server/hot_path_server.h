// Serves one session's hot path (proto/wire.h HotPath): acquire and release
// requests that the client posts in a shared-memory ring instead of sending
// over gRPC. A HotPathServer is the daemon's side of one ring: it owns the
// page and the session's place in it, and it copies and checks each
// request, runs it through the MemoryManager as the session (it holds the
// session's token) and posts its completion. It does not own a thread:
// the pollers (hot_path_poller.h) take the ring's entries in order, on a
// few threads shared by all sessions.
//
//   HotPathPollers pollers;
//   auto hot = HotPathServer::Start(&pollers, &manager, session_id, token);
//   send (*hot)->fd() to the client with the other pool fds;
//   ... destroying the server takes it off its poller first.
#pragma once

#include <atomic>
#include <memory>

#include "common/shared_memory.h"
#include "common/unique_fd.h"
#include "daemon/core/memory_manager.h"
#include "daemon/server/grpc_service.h"
#include "proto/wire.h"

namespace tidepool {

class HotPathPollers;

class HotPathServer {
 public:
  // Maps a fresh ring and hands it to `pollers` (nullptr: nobody serves
  // it; tests and the fuzzer call Serve themselves).
  static absl::StatusOr<std::unique_ptr<HotPathServer>> Start(
      HotPathPollers* pollers, MemoryManager* manager, uint64_t session_id,
      const Token& token, RpcObserver observer = nullptr);
  ~HotPathServer();

  int fd() const { return fd_.get(); }
  uint64_t bytes() const { return mapping_.size(); }

  // One request, as the poller runs it (exposed for tests and the fuzzer;
  // the ring's own checks, sequence and failures_seen, are ServeNext's).
  void Serve(const wire::HotPathRequest& request,
             wire::HotPathCompletion* completion);

  // For the poller that serves this ring, and only from its thread (the
  // ring's position is that thread's alone):
  //
  // Whether the client has posted the next request.
  bool Ready() const;
  // Serves the next request and posts its completion; after Ready().
  void ServeNext();
  // When the client says it posted the next request (CLOCK_MONOTONIC ns);
  // after Ready(). The client's word: only for the poller's spin budget.
  int64_t PostedNs() const;
  // The client's doorbell and the daemon's "may sleep" flag (common/futex.h).
  std::atomic<uint32_t>* request_bell() const { return &page()->request_bell; }
  void SetSleeping(bool sleeping) const {
    page()->daemon_sleeping.store(sleeping ? 1 : 0, std::memory_order_seq_cst);
  }

 private:
  HotPathServer(MemoryManager* manager, uint64_t session_id, Token token,
                RpcObserver observer)
      : manager_(manager),
        session_id_(session_id),
        token_(token),
        observer_(std::move(observer)) {}
  wire::HotPath* page() const {
    return reinterpret_cast<wire::HotPath*>(mapping_.data());
  }

  MemoryManager* manager_;
  const uint64_t session_id_;
  const Token token_;
  RpcObserver observer_;
  UniqueFd fd_;
  SharedMapping mapping_;
  HotPathPollers* pollers_ = nullptr;  // set once added
  // The serving poller thread's alone.
  uint64_t handled_ = 0;   // requests completed, in order
  uint64_t failures_ = 0;  // failed completions posted
};

}  // namespace tidepool
