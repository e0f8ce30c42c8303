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
#include <string>
#include <vector>

#include "absl/status/statusor.h"
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

// One planned set of moves, submitted in planning order.
struct CopyBatch {
  // Write-backs of evicted dirty chunks, device -> host.
  std::vector<CopyOp> to_host;
  // Loads, host -> device. They start after every write-back submitted so
  // far (including this batch's) completed: a slot or host home may be
  // reused right after its previous contents were written back.
  std::vector<CopyOp> to_device;
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
