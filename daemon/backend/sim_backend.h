// The sim backend: a "device" that is a reserved region of fixed capacity
// whose slots are backed by memfds of their own, one per chunk placement
// (a client maps only its own session's slots), copies done by a worker
// thread (optionally throttled to a modelled link bandwidth), and arrival
// signalled through a sequence counter in a control page that clients map
// read-only and futex-wait on. Real bytes move.
#pragma once

#include <deque>
#include <map>
#include <set>
#include <thread>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "common/shared_memory.h"
#include "daemon/backend/device_backend.h"

namespace tidepool {

class SimBackend : public DeviceBackend {
 public:
  static absl::StatusOr<std::unique_ptr<SimBackend>> Create(
      const BackendOptions& options, uint8_t* host_pool, uint64_t host_bytes);
  ~SimBackend() override;

  const DeviceDescription& description() const override { return desc_; }
  absl::StatusOr<uint64_t> Submit(CopyBatch batch) override;
  absl::Status Drain() override;
  uint64_t CompletedSequence() const override;
  int device_pool_fd() const override { return -1; }  // slots come apart
  int control_page_fd() const override { return control_fd_.get(); }
  uint64_t control_page_bytes() const override { return control_.size(); }
  void FillAttachReply(wire::AttachReply* reply) const override;
  absl::Status AddSession(uint64_t, const wire::AttachRequest&) override {
    return absl::OkStatus();
  }
  void RemoveSession(uint64_t) override {}
  absl::StatusOr<uint64_t> DriverFreeBytes() const override {
    return desc_.capacity_bytes;
  }
  uint8_t* HostVisibleDeviceMemory() const override { return device_.data(); }
  absl::StatusOr<std::shared_ptr<UniqueFd>> BackSlot(uint64_t offset,
                                                     uint64_t bytes,
                                                     uint64_t owner,
                                                     CopyBatch& batch) override;
  void ReleaseSlot(uint64_t offset, uint64_t bytes, uint64_t owner) override;
  std::optional<uint64_t> ParkedSlot(uint64_t owner,
                                     uint64_t bytes) const override;
  void ForgetOwner(uint64_t owner) override;

 private:
  SimBackend() = default;
  void WorkerLoop();
  void Copy(uint8_t* dst, const uint8_t* src, uint64_t bytes, bool to_device);
  wire::ControlPage* page() const {
    return reinterpret_cast<wire::ControlPage*>(control_.data());
  }

  DeviceDescription desc_;
  uint8_t* host_ = nullptr;
  uint64_t host_bytes_ = 0;
  double link_bytes_per_second_ = 0;
  ReservedRegion device_;
  UniqueFd control_fd_;
  SharedMapping control_;

  // Slot backings by offset (called under the manager's lock, in planning
  // order; their physical changes travel in the batches).
  struct Backing {
    uint64_t bytes = 0;
    uint64_t owner = 0;  // 0: its session ended
    bool parked = false;
  };
  void Unpark(uint64_t offset, const Backing& b)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(slots_mu_);
  mutable absl::Mutex slots_mu_;
  std::map<uint64_t, Backing> backings_ ABSL_GUARDED_BY(slots_mu_);
  // Parked backings by (owner, bytes): offsets, lowest first.
  std::map<std::pair<uint64_t, uint64_t>, std::set<uint64_t>> parked_
      ABSL_GUARDED_BY(slots_mu_);

  mutable absl::Mutex mu_;
  std::deque<std::pair<uint64_t, CopyBatch>> queue_ ABSL_GUARDED_BY(mu_);
  uint64_t submitted_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t completed_ ABSL_GUARDED_BY(mu_) = 0;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::thread worker_;
};

}  // namespace tidepool
