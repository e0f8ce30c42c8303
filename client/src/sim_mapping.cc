#include <poll.h>

#include "absl/strings/str_cat.h"
#include "client/src/device_mapping.h"
#include "common/futex.h"
#include "common/shared_memory.h"
#include "common/status_macros.h"

namespace tidepool::internal {
namespace {

class SimMapping : public DeviceMapping {
 public:
  void PrepareAttach(wire::AttachRequest* request) override {
    request->has_release_event = 0;
  }

  absl::Status Map(const wire::AttachReply& reply, UniqueFd device_fd,
                   UniqueFd control_fd) override {
    TP_ASSIGN_OR_RETURN(device_,
                        ReservedRegion::Reserve(reply.device_pool_bytes,
                                                ReservedRegion::kClient));
    // Read-only: the daemon alone advances the arrival sequence.
    TP_ASSIGN_OR_RETURN(
        control_,
        SharedMapping::MapReadOnly(control_fd.get(), reply.control_page_bytes));
    if (page()->magic != wire::kControlMagic) {
      return absl::DataLossError("the daemon's control page is not valid");
    }
    return absl::OkStatus();
  }

  absl::Status MapPiece(uint64_t offset, uint64_t bytes, UniqueFd fd) override {
    return device_.MapAt(offset, bytes, fd.get());
  }

  uint8_t* base() const override { return device_.data(); }

  absl::Status WaitArrival(uint64_t sequence, CudaStream,
                           int daemon_fd) override {
    wire::ControlPage* p = page();
    // Spin briefly: a batch that is already in flight usually lands soon.
    for (int i = 0; i < 256; ++i) {
      if (p->arrived_sequence.load(std::memory_order_acquire) >= sequence) {
        return absl::OkStatus();
      }
    }
    for (;;) {
      const uint32_t wake = p->arrived_wake.load(std::memory_order_acquire);
      if (p->arrived_sequence.load(std::memory_order_acquire) >= sequence) {
        return absl::OkStatus();
      }
      FutexWait(&p->arrived_wake, wake, 100'000'000);
      // Not POLLIN: another thread may be reading a mapping reply.
      pollfd pfd{daemon_fd, POLLRDHUP, 0};
      if (::poll(&pfd, 1, 0) > 0 &&
          (pfd.revents & (POLLHUP | POLLRDHUP | POLLERR))) {
        return absl::UnavailableError(absl::StrCat(
            "tidepoold went away while bytes were in flight (sequence ",
            sequence, ")"));
      }
    }
  }

  absl::Status WaitArrivalOnHost(uint64_t sequence, int daemon_fd) override {
    return WaitArrival(sequence, nullptr, daemon_fd);
  }

  absl::Status BeforeRelease(CudaStream) override { return absl::OkStatus(); }

 private:
  wire::ControlPage* page() const {
    return reinterpret_cast<wire::ControlPage*>(control_.data());
  }
  ReservedRegion device_;
  SharedMapping control_;
};

}  // namespace

std::unique_ptr<DeviceMapping> NewSimMapping() {
  return std::make_unique<SimMapping>();
}

}  // namespace tidepool::internal
