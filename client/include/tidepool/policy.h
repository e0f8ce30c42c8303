// Policy names as configs, flags, logs and the Python API spell them:
// "cuda", "cpu", "static", "auto". Part of libtidepool (defined beside the
// wire conversions in proto/convert.cc), so that code built against an
// installed libtidepool, such as the Python package with
// TIDEPOOL_USE_INSTALLED, reads them as the daemon does.
#pragma once

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "tidepool/types.h"

namespace tidepool {

absl::string_view PolicyName(Policy policy);
// INVALID_ARGUMENT for any other name.
absl::StatusOr<Policy> ParsePolicy(absl::string_view name);

}  // namespace tidepool
