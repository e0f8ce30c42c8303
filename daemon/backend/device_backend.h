// The device a pool lives on, behind one interface: its memory (one region
// of `capacity` bytes that clients map through an exported fd) and its copy
// engine (ordered batches of host<->device copies between that region and
// the host pool, with an arrival sequence clients wait on).
//
// Implementations: SimBackend (memfd "device", worker-thread copies, shared
// sequence counters) and CudaBackend (VMM memory, copy streams, interprocess
// events). Everything above this interface runs on both.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/unique_fd.h"
#include "proto/wire.h"

namespace tidepool {

struct DeviceDescription {
  std::string name;     // "sim0" or "GPU-<uuid>"
  std::string uuid;     // as nvidia-smi / dcgm-exporter print it
  std::string backend;  // "sim" or "cuda"
  int ordinal = 0;
  uint64_t capacity_bytes = 0;
  uint64_t granularity = 0;  // slot alignment in the pool
};

struct CopyOp {
  uint64_t host_offset = 0;
  uint64_t device_offset = 0;
  uint64_t bytes = 0;
};

// A device slot's backing changes hands (sim): `fd` is mapped in the
// daemon's view of [device_offset, +bytes) once the batch's write-backs are
// done (they may still read the slot's previous backing), replacing it.
struct SlotInstall {
  uint64_t device_offset = 0;
  uint64_t bytes = 0;
  std::shared_ptr<UniqueFd> fd;
  // Earlier backings the new one overlaps, [offset, bytes): their pages are
  // freed first, so a client that still maps one sees zeros.
  std::vector<std::pair<uint64_t, uint64_t>> retire;
};

// One planned set of moves, submitted in planning order.
struct CopyBatch {
  // Write-backs of evicted dirty chunks, device -> host.
  std::vector<CopyOp> to_host;
  // Loads, host -> device. They start after every write-back submitted so
  // far (including this batch's) completed: a slot or host home may be
  // reused right after its previous contents were written back.
  std::vector<CopyOp> to_device;
  // New slot backings, installed after the write-backs and before the
  // zero fills and loads.
  std::vector<SlotInstall> installs;
  // Device ranges to zero (new device-only chunks).
  std::vector<CopyOp> zero_device;
  // Sessions whose last released work must finish before any copy of this
  // batch touches memory they used (cuda: their release events).
  std::vector<uint64_t> wait_sessions;
  // The chunks `to_host` writes back (the manager's bookkeeping: a host
  // reader of one must wait for this batch; backends ignore it).
  std::vector<uint64_t> written_back;
};

class DeviceBackend {
 public:
  virtual ~DeviceBackend() = default;

  virtual const DeviceDescription& description() const = 0;

  // Submits a batch; returns its arrival sequence (monotonic per device).
  // Must be called in planning order (the caller holds its lock).
  virtual absl::StatusOr<uint64_t> Submit(CopyBatch batch) = 0;
  // Blocks until every batch submitted so far has completed.
  virtual absl::Status Drain() = 0;
  // The arrival sequence reached so far.
  virtual uint64_t CompletedSequence() const = 0;

  // What a client needs to map the pool and wait for arrivals: the device
  // pool fd, the control page fd and size, and (cuda) the arrival event.
  virtual int device_pool_fd() const = 0;
  virtual int control_page_fd() const = 0;
  virtual uint64_t control_page_bytes() const = 0;
  virtual void FillAttachReply(wire::AttachReply* reply) const = 0;

  // cuda: opens the client's release event; sim: nothing to do.
  virtual absl::Status AddSession(uint64_t session_id,
                                  const wire::AttachRequest& request) = 0;
  virtual void RemoveSession(uint64_t session_id) = 0;

  // Slots: device memory for one chunk of session `owner` at
  // [offset, +bytes), as the manager's allocator placed it. BackSlot
  // returns the fd the owner's client maps the slot with, or null when
  // it needs none (the owner already maps this very backing: a slot that
  // was parked for it and reused; or a backend whose clients map the whole
  // pool at attach). A fresh backing holds nothing of anyone else's. Any
  // physical change is queued on `batch`, so copies already planned see
  // the old backing.
  virtual absl::StatusOr<std::shared_ptr<UniqueFd>> BackSlot(uint64_t offset,
                                                             uint64_t bytes,
                                                             uint64_t owner,
                                                             CopyBatch& batch) {
    return nullptr;
  }
  // The slot's chunk left it. Its backing may stay parked for the same
  // owner until the range is given to someone else.
  virtual void ReleaseSlot(uint64_t offset, uint64_t bytes, uint64_t owner) {}
  // A parked slot of `owner` with exactly `bytes`, to reuse first (its
  // client already maps it): the offset, if any.
  virtual std::optional<uint64_t> ParkedSlot(uint64_t owner,
                                             uint64_t bytes) const {
    return std::nullopt;
  }
  // The owner's session ended: its parked slots are nobody's now.
  virtual void ForgetOwner(uint64_t owner) {}

  // Host homes live in separately mapped pieces of the host pool; the cuda
  // backend pins each (cudaHostRegister) once, when it is mapped, and
  // unpins it before it goes.
  virtual absl::Status PinHost(uint8_t* data, uint64_t bytes) {
    return absl::OkStatus();
  }
  virtual void UnpinHost(uint8_t* data) {}

  // Device memory free right now as the driver reports it (cuda), or the
  // pool's capacity (sim); for policies that measure headroom.
  virtual absl::StatusOr<uint64_t> DriverFreeBytes() const = 0;

  // Daemon-side views, for tests and diagnostics (sim only; nullptr on cuda).
  virtual uint8_t* HostVisibleDeviceMemory() const { return nullptr; }

  // Told about every completed transfer (from the backend's own thread):
  // direction, bytes and how long the copy engine spent on it. Set before
  // the first Submit.
  using CopyObserver =
      std::function<void(bool to_device, uint64_t bytes, double seconds)>;
  void SetCopyObserver(CopyObserver observer) {
    copy_observer_ = std::move(observer);
  }

 protected:
  CopyObserver copy_observer_;
};

struct BackendOptions {
  std::string name = "auto";  // auto | sim | cuda:<ordinal> | GPU-<uuid>
  std::string backend = "auto";
  uint64_t pool_bytes = 0;  // sim: required; cuda: 0 = free - reserve
  uint64_t reserve_bytes = 2ull << 30;
  double sim_link_gbps = 0;  // sim: modelled link bandwidth, 0 = unthrottled
  // sim: threads copying a batch at once, 1..16; 0 = cores, at most 4.
  int sim_copy_workers = 0;
  int sim_index = 0;
};

// Whether this process can use a CUDA device (false where built without
// CUDA or where no GPU/driver is present).
bool CudaDeviceAvailable();

// Creates the backend that `options` asks for; `auto` picks cuda when a GPU
// is present and sim otherwise. `host_pool` is pinned by the cuda backend.
absl::StatusOr<std::unique_ptr<DeviceBackend>> CreateDeviceBackend(
    const BackendOptions& options, uint8_t* host_pool, uint64_t host_bytes);

}  // namespace tidepool
