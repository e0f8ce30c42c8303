#include "proto/convert.h"

#include "absl/strings/str_cat.h"

namespace tidepool {
namespace {

template <typename Wire>
absl::Status Unknown(absl::string_view what, Wire value) {
  return absl::InvalidArgumentError(
      absl::StrCat("unknown ", what, " ", static_cast<int>(value)));
}

}  // namespace

grpc::Status ToGrpc(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()),
                      std::string(status.message()));
}

absl::Status FromGrpc(const grpc::Status& status) {
  if (status.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(status.error_code()),
                      status.error_message());
}

absl::StatusOr<DType> FromProto(v1::DType d) {
  switch (d) {
    case v1::DTYPE_F32:
      return DType::kF32;
    case v1::DTYPE_F16:
      return DType::kF16;
    case v1::DTYPE_BF16:
      return DType::kBF16;
    case v1::DTYPE_F64:
      return DType::kF64;
    case v1::DTYPE_I32:
      return DType::kI32;
    case v1::DTYPE_I64:
      return DType::kI64;
    case v1::DTYPE_U8:
      return DType::kU8;
    case v1::DTYPE_I8:
      return DType::kI8;
    default:
      return Unknown("dtype", d);
  }
}

v1::DType ToProto(DType d) {
  switch (d) {
    case DType::kF32:
      return v1::DTYPE_F32;
    case DType::kF16:
      return v1::DTYPE_F16;
    case DType::kBF16:
      return v1::DTYPE_BF16;
    case DType::kF64:
      return v1::DTYPE_F64;
    case DType::kI32:
      return v1::DTYPE_I32;
    case DType::kI64:
      return v1::DTYPE_I64;
    case DType::kU8:
      return v1::DTYPE_U8;
    case DType::kI8:
      return v1::DTYPE_I8;
  }
  return v1::DTYPE_UNSPECIFIED;
}

absl::StatusOr<Group> FromProto(v1::Group g) {
  switch (g) {
    case v1::GROUP_UNSPECIFIED:
    case v1::GROUP_OTHER:
      return Group::kOther;
    case v1::GROUP_PARAM:
      return Group::kParam;
    case v1::GROUP_MASTER:
      return Group::kMaster;
    case v1::GROUP_OPTIM_STATE:
      return Group::kOptimState;
    case v1::GROUP_GRAD:
      return Group::kGrad;
    default:
      return Unknown("group", g);
  }
}

v1::Group ToProto(Group g) {
  switch (g) {
    case Group::kParam:
      return v1::GROUP_PARAM;
    case Group::kMaster:
      return v1::GROUP_MASTER;
    case Group::kOptimState:
      return v1::GROUP_OPTIM_STATE;
    case Group::kGrad:
      return v1::GROUP_GRAD;
    case Group::kOther:
      return v1::GROUP_OTHER;
  }
  return v1::GROUP_OTHER;
}

absl::StatusOr<std::optional<Policy>> FromProto(v1::Policy p) {
  switch (p) {
    case v1::POLICY_UNSPECIFIED:
      return std::optional<Policy>();
    case v1::POLICY_CUDA:
      return Policy::kCuda;
    case v1::POLICY_CPU:
      return Policy::kCpu;
    case v1::POLICY_STATIC:
      return Policy::kStatic;
    case v1::POLICY_AUTO:
      return Policy::kAuto;
    default:
      return Unknown("policy", p);
  }
}

v1::Policy ToProto(Policy p) {
  switch (p) {
    case Policy::kCuda:
      return v1::POLICY_CUDA;
    case Policy::kCpu:
      return v1::POLICY_CPU;
    case Policy::kStatic:
      return v1::POLICY_STATIC;
    case Policy::kAuto:
      return v1::POLICY_AUTO;
  }
  return v1::POLICY_UNSPECIFIED;
}

absl::StatusOr<AccessMode> FromProto(v1::AccessMode m) {
  switch (m) {
    case v1::ACCESS_READ:
      return AccessMode::kRead;
    case v1::ACCESS_UNSPECIFIED:
    case v1::ACCESS_READ_WRITE:
      return AccessMode::kReadWrite;
    default:
      return Unknown("access mode", m);
  }
}

v1::AccessMode ToProto(AccessMode m) {
  return m == AccessMode::kRead ? v1::ACCESS_READ : v1::ACCESS_READ_WRITE;
}

absl::StatusOr<TensorState> FromProto(v1::TensorState s) {
  switch (s) {
    case v1::TENSOR_STATE_FREE:
      return TensorState::kFree;
    case v1::TENSOR_STATE_COMPUTE:
      return TensorState::kCompute;
    case v1::TENSOR_STATE_HOLD:
      return TensorState::kHold;
    case v1::TENSOR_STATE_HOLD_AFTER_BWD:
      return TensorState::kHoldAfterBwd;
    case v1::TENSOR_STATE_READY_FOR_REDUCE:
      return TensorState::kReadyForReduce;
    default:
      return Unknown("tensor state", s);
  }
}

v1::TensorState ToProto(TensorState s) {
  switch (s) {
    case TensorState::kFree:
      return v1::TENSOR_STATE_FREE;
    case TensorState::kCompute:
      return v1::TENSOR_STATE_COMPUTE;
    case TensorState::kHold:
      return v1::TENSOR_STATE_HOLD;
    case TensorState::kHoldAfterBwd:
      return v1::TENSOR_STATE_HOLD_AFTER_BWD;
    case TensorState::kReadyForReduce:
      return v1::TENSOR_STATE_READY_FOR_REDUCE;
  }
  return v1::TENSOR_STATE_UNSPECIFIED;
}

absl::string_view PolicyName(Policy policy) {
  switch (policy) {
    case Policy::kCuda:
      return "cuda";
    case Policy::kCpu:
      return "cpu";
    case Policy::kStatic:
      return "static";
    case Policy::kAuto:
      return "auto";
  }
  return "unknown";
}

absl::StatusOr<Policy> ParsePolicy(absl::string_view name) {
  for (Policy p :
       {Policy::kCuda, Policy::kCpu, Policy::kStatic, Policy::kAuto}) {
    if (PolicyName(p) == name) return p;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown policy '", name, "' (cuda, cpu, static or auto)"));
}

}  // namespace tidepool
