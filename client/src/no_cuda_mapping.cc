#include "client/src/device_mapping.h"

namespace tidepool::internal {

absl::StatusOr<std::unique_ptr<DeviceMapping>> NewCudaMapping(
    const std::string& uuid) {
  return absl::UnimplementedError(
      "this libtidepool was built without CUDA; the daemon offers GPU " + uuid);
}

}  // namespace tidepool::internal
