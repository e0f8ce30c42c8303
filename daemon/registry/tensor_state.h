// The tensor state machine of the design: which transitions are legal.
//
//   FREE ──acquire──▶ COMPUTE ──release──▶ HOLD | HOLD_AFTER_BWD | FREE
//   HOLD, HOLD_AFTER_BWD ──acquire──▶ COMPUTE
//   HOLD_AFTER_BWD ──▶ READY_FOR_REDUCE ──▶ HOLD   (optimizer step)
//   HOLD, HOLD_AFTER_BWD, READY_FOR_REDUCE ──▶ FREE (contents dropped)
//
// A chunk may move only while none of its tensors is COMPUTE.
#pragma once

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "tidepool/types.h"

namespace tidepool {

absl::string_view TensorStateName(TensorState state);

// OK when `from -> to` is a legal transition, FAILED_PRECONDITION with a
// message that names both states otherwise.
absl::Status CheckTransition(TensorState from, TensorState to);

}  // namespace tidepool
