#include "daemon/registry/tensor_state.h"

#include "absl/strings/str_cat.h"

namespace tidepool {

absl::string_view TensorStateName(TensorState state) {
  switch (state) {
    case TensorState::kFree:
      return "FREE";
    case TensorState::kCompute:
      return "COMPUTE";
    case TensorState::kHold:
      return "HOLD";
    case TensorState::kHoldAfterBwd:
      return "HOLD_AFTER_BWD";
    case TensorState::kReadyForReduce:
      return "READY_FOR_REDUCE";
  }
  return "UNKNOWN";
}

absl::Status CheckTransition(TensorState from, TensorState to) {
  using S = TensorState;
  bool legal = false;
  switch (to) {
    case S::kCompute:
      legal = from == S::kFree || from == S::kHold || from == S::kHoldAfterBwd;
      break;
    case S::kHold:
      legal = from == S::kCompute || from == S::kReadyForReduce;
      break;
    case S::kHoldAfterBwd:
      legal = from == S::kCompute;
      break;
    case S::kReadyForReduce:
      legal = from == S::kHoldAfterBwd;
      break;
    case S::kFree:
      legal = from != S::kFree;
      break;
  }
  if (legal) return absl::OkStatus();
  std::string hint;
  if (from == S::kCompute && to == S::kCompute) {
    hint = " (already acquired)";
  } else if (from != S::kCompute &&
             (to == S::kHold || to == S::kHoldAfterBwd)) {
    hint = " (not acquired: double release?)";
  }
  return absl::FailedPreconditionError(
      absl::StrCat("illegal tensor state transition ", TensorStateName(from),
                   " -> ", TensorStateName(to), hint));
}

}  // namespace tidepool
