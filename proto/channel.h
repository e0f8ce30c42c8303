// The gRPC channel to tidepoold's Unix socket, as the client library and
// tidepoolctl open it.
//
//   auto stub =
//   v1::Tidepool::NewStub(UnixChannel("/run/tidepool/tidepoold.sock"));
#pragma once

#include <grpcpp/grpcpp.h>

#include <memory>
#include <string>

namespace tidepool {

// Replies of any size: the daemon's are as large as what was asked (a
// Register of 400k tensors answers 5.8 MB; the chunk list of a large
// session), and gRPC's default 4 MiB receive limit would refuse them.
inline std::shared_ptr<grpc::Channel> UnixChannel(const std::string& socket) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(-1);
  return grpc::CreateCustomChannel("unix:" + socket,
                                   grpc::InsecureChannelCredentials(), args);
}

}  // namespace tidepool
