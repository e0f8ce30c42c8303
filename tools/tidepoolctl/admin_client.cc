#include "tools/tidepoolctl/admin_client.h"

#include <grp.h>
#include <grpcpp/grpcpp.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "proto/channel.h"
#include "proto/convert.h"

namespace tidepool::ctl {
namespace {

constexpr auto kDeadline = std::chrono::seconds(15);

std::string GroupName(gid_t gid) {
  if (const struct group* g = ::getgrgid(gid)) return g->gr_name;
  return absl::StrCat(gid);
}

absl::Status NoPermission(const std::string& path, const struct stat& st,
                          absl::string_view what) {
  const std::string group = GroupName(st.st_gid);
  return absl::PermissionDeniedError(absl::StrFormat(
      "permission denied: cannot %s %s (mode %04o, group '%s'); tidepoolctl "
      "needs to be in group '%s' (sudo usermod -aG %s $USER, then log in "
      "again) or to run as root",
      what, path, st.st_mode & 07777, group, group, group));
}

}  // namespace

absl::Status CheckSocketAccess(const std::string& socket) {
  struct stat st;
  if (::stat(socket.c_str(), &st) != 0) {
    const int err = errno;
    if (err == EACCES) {
      // A directory on the way cannot be entered: name the closest one that
      // exists and whose group would let us in.
      std::filesystem::path dir = std::filesystem::path(socket).parent_path();
      while (!dir.empty()) {
        struct stat dst;
        if (::stat(dir.c_str(), &dst) == 0 &&
            ::access(dir.c_str(), X_OK) != 0) {
          return NoPermission(dir.string(), dst, "enter the directory");
        }
        if (dir == dir.parent_path()) break;
        dir = dir.parent_path();
      }
      return absl::PermissionDeniedError(
          absl::StrCat("permission denied: cannot reach ", socket));
    }
    if (err == ENOENT || err == ENOTDIR) {
      return absl::UnavailableError(absl::StrCat(
          "tidepoold is not running: no socket at ", socket,
          " (start it with `systemctl start tidepoold`, or pass --socket)"));
    }
    return absl::ErrnoToStatus(err, absl::StrCat("stat ", socket));
  }
  if (!S_ISSOCK(st.st_mode)) {
    return absl::FailedPreconditionError(
        absl::StrCat(socket, " is not a socket; pass tidepoold's --socket"));
  }
  if (::access(socket.c_str(), R_OK | W_OK) != 0) {
    return NoPermission(socket, st, "use the socket");
  }
  return absl::OkStatus();
}

absl::StatusOr<AdminClient> AdminClient::Connect(const std::string& socket) {
  if (absl::Status s = CheckSocketAccess(socket); !s.ok()) return s;
  auto stub = v1::Tidepool::NewStub(UnixChannel(socket));
  return AdminClient(socket, std::move(stub));
}

absl::Status AdminClient::Explain(absl::string_view method,
                                  const grpc::Status& status) const {
  switch (status.error_code()) {
    case grpc::StatusCode::OK:
      return absl::OkStatus();
    case grpc::StatusCode::UNAVAILABLE:
      return absl::UnavailableError(
          absl::StrCat("tidepoold is not running: nobody answers on ", socket_,
                       " (a stale socket of a daemon that died?) (",
                       status.error_message(), ")"));
    case grpc::StatusCode::UNIMPLEMENTED:
      return absl::UnimplementedError(absl::StrCat(
          method,
          ": this tidepoold does not serve it (an older version?); "
          "use a tidepoolctl of the daemon's release"));
    case grpc::StatusCode::DEADLINE_EXCEEDED:
      return absl::DeadlineExceededError(
          absl::StrCat(method, ": tidepoold did not answer within ",
                       std::chrono::seconds(kDeadline).count(), " s"));
    default: {
      absl::Status s = FromGrpc(status);
      return absl::Status(s.code(), absl::StrCat(method, ": ", s.message()));
    }
  }
}

#define TP_ADMIN_CALL(Method, request, Response)                    \
  do {                                                              \
    grpc::ClientContext ctx;                                        \
    ctx.set_deadline(std::chrono::system_clock::now() + kDeadline); \
    Response response;                                              \
    grpc::Status status = stub_->Method(&ctx, request, &response);  \
    if (!status.ok()) return Explain(#Method, status);              \
    return response;                                                \
  } while (false)

absl::StatusOr<v1::GetStatusResponse> AdminClient::GetStatus() {
  TP_ADMIN_CALL(GetStatus, v1::GetStatusRequest(), v1::GetStatusResponse);
}

absl::StatusOr<v1::ListSessionsResponse> AdminClient::ListSessions() {
  TP_ADMIN_CALL(ListSessions, v1::ListSessionsRequest(),
                v1::ListSessionsResponse);
}

absl::StatusOr<v1::ListChunksResponse> AdminClient::ListChunks(
    uint64_t session_id) {
  v1::ListChunksRequest request;
  request.set_session_id(session_id);
  TP_ADMIN_CALL(ListChunks, request, v1::ListChunksResponse);
}

absl::StatusOr<v1::GetTimelineResponse> AdminClient::GetTimeline(
    uint64_t session_id, uint64_t max_events) {
  v1::GetTimelineRequest request;
  request.set_session_id(session_id);
  request.set_max_events(max_events);
  TP_ADMIN_CALL(GetTimeline, request, v1::GetTimelineResponse);
}

absl::StatusOr<v1::GetTraceResponse> AdminClient::GetTrace(
    uint64_t session_id) {
  v1::GetTraceRequest request;
  request.set_session_id(session_id);
  TP_ADMIN_CALL(GetTrace, request, v1::GetTraceResponse);
}

#undef TP_ADMIN_CALL

}  // namespace tidepool::ctl
