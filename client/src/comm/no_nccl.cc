// Builds without CUDA have no NCCL.
#include "tidepool/communicator.h"

namespace tidepool {

absl::StatusOr<std::unique_ptr<Communicator>> OpenNcclCommunicator(
    const NcclOptions& options) {
  if (options.world == 1) return MakeLocalCommunicator();
  return absl::UnimplementedError("NCCL: this build has no CUDA");
}

}  // namespace tidepool
