// How a client reaches its device pool and learns that bytes arrived:
// SimMapping (memfd mapping + futex on the shared arrival sequence) and
// CudaMapping (VMM import + interprocess events).
#pragma once

#include <cstdint>
#include <memory>

#include "absl/status/statusor.h"
#include "common/unique_fd.h"
#include "proto/wire.h"
#include "tidepool/session.h"

namespace tidepool::internal {

class DeviceMapping {
 public:
  virtual ~DeviceMapping() = default;
  // Fills the backend-specific part of the attach request.
  virtual void PrepareAttach(wire::AttachRequest* request) = 0;
  // Maps the pool the daemon sent: `device_fd` is the whole pool (cuda) or
  // invalid (sim: the pool is reserved, and pieces come by MapPiece).
  virtual absl::Status Map(const wire::AttachReply& reply, UniqueFd device_fd,
                           UniqueFd control_fd) = 0;
  // Maps a piece of the device pool the daemon granted this session.
  virtual absl::Status MapPiece(uint64_t offset, uint64_t bytes,
                                UniqueFd fd) = 0;
  virtual uint8_t* base() const = 0;
  // Returns (sim) or enqueues on `stream` (cuda) the wait for arrival
  // sequence `sequence`. `daemon_alive` is polled while waiting.
  virtual absl::Status WaitArrival(uint64_t sequence, CudaStream stream,
                                   int daemon_fd) = 0;
  // Blocks the calling thread until arrival sequence `sequence` (and every
  // write-back submitted before it) completed.
  virtual absl::Status WaitArrivalOnHost(uint64_t sequence, int daemon_fd) = 0;
  // Records that the work on `stream` so far must finish before the daemon
  // moves released chunks (cuda); nothing on sim.
  virtual absl::Status BeforeRelease(CudaStream stream) = 0;
};

std::unique_ptr<DeviceMapping> NewSimMapping();
// `uuid`: the device the session is bound to, as the daemon named it.
absl::StatusOr<std::unique_ptr<DeviceMapping>> NewCudaMapping(
    const std::string& uuid);

}  // namespace tidepool::internal
