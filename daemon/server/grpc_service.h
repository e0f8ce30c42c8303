// The gRPC control plane: translates tidepool.v1 requests into
// MemoryManager calls and absl::Status into gRPC status codes. Nothing a
// client sends can crash it: every field is checked before use.
#pragma once

#include <functional>
#include <optional>
#include <string>

#include "daemon/core/memory_manager.h"
#include "proto/tidepool.grpc.pb.h"

namespace tidepool {

// Observes every RPC's latency (for metrics); may be empty.
using RpcObserver = std::function<void(absl::string_view method, double seconds,
                                       const absl::Status& status)>;
// The kernel's credentials of the connection grpc::ServerContext::peer()
// names (GrpcListener::Lookup); nothing when unknown.
using PeerLookup =
    std::function<std::optional<PeerCredentials>(const std::string& peer)>;

// A placement's state as the RPCs report it (MarkStep, GetStats; the hot
// path's kMarkStep).
void FillPlacement(const PlacementStatsView& v, v1::PlacementStatus* out);

class GrpcService final : public v1::Tidepool::Service {
 public:
  GrpcService(MemoryManager* manager, std::string fd_socket_path,
              RpcObserver observer = nullptr)
      : manager_(manager),
        fd_socket_path_(std::move(fd_socket_path)),
        observer_(std::move(observer)) {}

  // Sessions are opened with the caller's credentials from `lookup`, for
  // the per-process and per-user limits. Set before serving.
  void SetPeerLookup(PeerLookup lookup) { peer_lookup_ = std::move(lookup); }

  grpc::Status OpenSession(grpc::ServerContext*,
                           const v1::OpenSessionRequest* request,
                           v1::OpenSessionResponse* response) override;
  grpc::Status CloseSession(grpc::ServerContext*,
                            const v1::CloseSessionRequest* request,
                            v1::CloseSessionResponse* response) override;
  grpc::Status RegisterTensors(grpc::ServerContext*,
                               const v1::RegisterTensorsRequest* request,
                               v1::RegisterTensorsResponse* response) override;
  grpc::Status Acquire(grpc::ServerContext*, const v1::AcquireRequest* request,
                       v1::AcquireResponse* response) override;
  grpc::Status Release(grpc::ServerContext*, const v1::ReleaseRequest* request,
                       v1::ReleaseResponse* response) override;
  grpc::Status GetStats(grpc::ServerContext*, const v1::StatsRequest* request,
                        v1::StatsResponse* response) override;
  grpc::Status GetChunks(grpc::ServerContext*,
                         const v1::ChunkStateRequest* request,
                         v1::ChunkStateResponse* response) override;
  grpc::Status MarkStep(grpc::ServerContext*,
                        const v1::MarkStepRequest* request,
                        v1::MarkStepResponse* response) override;

  // Admin RPCs (tidepoolctl): daemon-wide, no session token; the socket's
  // permissions are the access control. Unknown session ids: NOT_FOUND.
  grpc::Status GetStatus(grpc::ServerContext*,
                         const v1::GetStatusRequest* request,
                         v1::GetStatusResponse* response) override;
  grpc::Status ListSessions(grpc::ServerContext*,
                            const v1::ListSessionsRequest* request,
                            v1::ListSessionsResponse* response) override;
  grpc::Status ListChunks(grpc::ServerContext*,
                          const v1::ListChunksRequest* request,
                          v1::ListChunksResponse* response) override;
  grpc::Status GetTimeline(grpc::ServerContext*,
                           const v1::GetTimelineRequest* request,
                           v1::GetTimelineResponse* response) override;
  grpc::Status GetTrace(grpc::ServerContext*,
                        const v1::GetTraceRequest* request,
                        v1::GetTraceResponse* response) override;

 private:
  template <typename Fn>
  grpc::Status Run(absl::string_view method, Fn&& fn);

  MemoryManager* manager_;
  std::string fd_socket_path_;
  RpcObserver observer_;
  PeerLookup peer_lookup_;
};

}  // namespace tidepool
