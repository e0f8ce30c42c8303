// Conversions between the tidepool.v1 wire types and the C++ vocabulary of
// tidepool/types.h, and between absl::Status and grpc::Status. Shared by the
// daemon's service and the client so that both read the wire the same way.
#pragma once

#include <grpcpp/support/status.h>

#include <optional>

#include "absl/status/statusor.h"
#include "proto/tidepool.pb.h"
#include "tidepool/policy.h"  // PolicyName, ParsePolicy
#include "tidepool/types.h"

namespace tidepool {

grpc::Status ToGrpc(const absl::Status& status);
absl::Status FromGrpc(const grpc::Status& status);

// Unknown wire values (a newer or broken client) are INVALID_ARGUMENT.
absl::StatusOr<DType> FromProto(v1::DType dtype);
absl::StatusOr<Group> FromProto(v1::Group group);
// POLICY_UNSPECIFIED: no policy given (the daemon's default applies).
absl::StatusOr<std::optional<Policy>> FromProto(v1::Policy policy);
absl::StatusOr<AccessMode> FromProto(v1::AccessMode mode);
absl::StatusOr<TensorState> FromProto(v1::TensorState state);

v1::DType ToProto(DType dtype);
v1::Group ToProto(Group group);
v1::Policy ToProto(Policy policy);
v1::AccessMode ToProto(AccessMode mode);
v1::TensorState ToProto(TensorState state);

}  // namespace tidepool
