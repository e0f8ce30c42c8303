// AdminClient: tidepoolctl's connection to a running tidepoold. It calls the
// daemon-wide admin RPCs (GetStatus, ListSessions, ListChunks, GetTimeline),
// which carry no session token: being able to write the socket (0660, the
// daemon's group) is the access control.
//
//   auto client = AdminClient::Connect("/run/tidepool/tidepoold.sock");
//   if (!client.ok()) return client.status();  // not running / no permission
//   auto status = client->GetStatus();
//
// Errors are meant to be printed as they are: UNAVAILABLE "tidepoold is not
// running: ..." when there is no socket or nobody answers on it,
// PERMISSION_DENIED naming the socket's group when the caller may not use it,
// NOT_FOUND for an unknown session id.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "proto/tidepool.grpc.pb.h"

namespace tidepool::ctl {

class AdminClient {
 public:
  // Checks that the socket exists and that this user may use it, then
  // creates a channel (connection is lazy: the first call connects).
  static absl::StatusOr<AdminClient> Connect(const std::string& socket);

  absl::StatusOr<v1::GetStatusResponse> GetStatus();
  absl::StatusOr<v1::ListSessionsResponse> ListSessions();
  absl::StatusOr<v1::ListChunksResponse> ListChunks(uint64_t session_id);
  absl::StatusOr<v1::GetTimelineResponse> GetTimeline(uint64_t session_id,
                                                      uint64_t max_events);
  absl::StatusOr<v1::GetTraceResponse> GetTrace(uint64_t session_id);

  const std::string& socket() const { return socket_; }

 private:
  AdminClient(std::string socket, std::unique_ptr<v1::Tidepool::Stub> stub)
      : socket_(std::move(socket)), stub_(std::move(stub)) {}
  // Turns a failed call into a message for an operator.
  absl::Status Explain(absl::string_view method,
                       const grpc::Status& status) const;

  std::string socket_;
  std::unique_ptr<v1::Tidepool::Stub> stub_;
};

// Whether `socket` can be used by this process: OK, UNAVAILABLE ("tidepoold
// is not running: no socket at ...") or PERMISSION_DENIED naming the group
// that owns the socket (or the directory that cannot be entered).
absl::Status CheckSocketAccess(const std::string& socket);

}  // namespace tidepool::ctl
