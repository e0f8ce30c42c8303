// The gRPC socket's listener. tidepoold accepts the control socket's
// connections itself and hands each to the gRPC server
// (grpc::AddInsecureChannelFromFd), because gRPC does not tell a service
// who is on the other end of a Unix socket, and the daemon's per-process
// and per-user session limits need the kernel's word for it (SO_PEERCRED),
// not the client's.
//
//   TP_ASSIGN_OR_RETURN(auto listener, GrpcListener::Listen(path));
//   service.SetPeerLookup([&](const std::string& peer) {
//     return listener->Lookup(peer);
//   });
//   std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
//   listener->Start(server.get());
//   ...
//   listener->Stop();  // before server->Shutdown()
#pragma once

#include <grpcpp/server.h>

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "common/unique_fd.h"
#include "common/unix_socket.h"

namespace tidepool {

class GrpcListener {
 public:
  // Listens on `path` (a socket file of mode 0660, replacing a stale one).
  static absl::StatusOr<std::unique_ptr<GrpcListener>> Listen(
      const std::string& path);
  ~GrpcListener();

  // Accepts connections for `server` (not owned; must outlive Stop()) on a
  // thread of its own.
  void Start(grpc::Server* server);
  // Stops accepting; connections already handed over stay the server's.
  void Stop();

  // The credentials of the connection that ServerContext::peer() names
  // ("fd:<n>"); nothing for a connection not accepted here.
  std::optional<PeerCredentials> Lookup(const std::string& peer) const;

 private:
  GrpcListener(UniqueFd listen_fd, UniqueFd stop_fd);
  void Loop(grpc::Server* server);

  UniqueFd listen_fd_;
  UniqueFd stop_fd_;  // an eventfd: readable once Stop() is called
  std::thread thread_;
  mutable absl::Mutex mu_;
  // By fd: gRPC names a connection added from an fd after its number, and
  // the kernel hands a number out again only once gRPC closed it, so an
  // entry is replaced before a new connection with its number is served.
  std::map<int, PeerCredentials> peers_ ABSL_GUARDED_BY(mu_);
};

}  // namespace tidepool
