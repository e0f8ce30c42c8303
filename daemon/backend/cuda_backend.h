// The cuda backend: the device pool is one CUDA VMM allocation exported as a
// POSIX fd (clients import and map it; slots are not yet separate
// allocations, so on cuda the device pool is not isolated between sessions
// the way the host homes are: docs/operations.md, Security), copies run on two
// daemon-owned streams (host->device and device->host use separate copy
// engines), and ordering across processes uses interprocess events: clients
// wait on the arrival event; the daemon's streams wait on each client's release
// event.
#pragma once

#include <cuda.h>
#include <cuda_runtime_api.h>

#include <chrono>
#include <deque>
#include <map>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "common/cuda/driver_api.h"
#include "common/shared_memory.h"
#include "daemon/backend/device_backend.h"

namespace tidepool {

class CudaBackend : public DeviceBackend {
 public:
  static absl::StatusOr<std::unique_ptr<CudaBackend>> Create(
      const BackendOptions& options, uint8_t* host_pool, uint64_t host_bytes);
  ~CudaBackend() override;

  const DeviceDescription& description() const override { return desc_; }
  absl::StatusOr<uint64_t> Submit(CopyBatch batch) override;
  absl::Status Drain() override;
  uint64_t CompletedSequence() const override;
  int device_pool_fd() const override { return export_fd_.get(); }
  int control_page_fd() const override { return control_fd_.get(); }
  uint64_t control_page_bytes() const override { return control_.size(); }
  void FillAttachReply(wire::AttachReply* reply) const override;
  absl::Status AddSession(uint64_t session_id,
                          const wire::AttachRequest& request) override;
  void RemoveSession(uint64_t session_id) override;
  absl::StatusOr<uint64_t> DriverFreeBytes() const override;
  absl::Status PinHost(uint8_t* data, uint64_t bytes) override;
  void UnpinHost(uint8_t* data) override;

 private:
  CudaBackend() = default;
  absl::Status Init(const BackendOptions& options);
  void PollCompleted() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Reports the copies' duration to copy_observer_ when `stream` gets there.
  absl::Status MarkStreamStart(cudaStream_t stream, bool to_device);
  absl::Status TimeCopies(cudaStream_t stream, bool to_device, uint64_t bytes);

  const cuda::DriverApi* cu_ = nullptr;
  DeviceDescription desc_;
  uint8_t* host_ = nullptr;
  uint64_t host_bytes_ = 0;
  CUmemGenericAllocationHandle handle_ = 0;
  bool handle_valid_ = false;
  CUdeviceptr base_ = 0;
  bool mapped_ = false;
  UniqueFd export_fd_;
  UniqueFd control_fd_;
  SharedMapping control_;
  cudaStream_t to_device_ = nullptr;
  cudaStream_t to_host_ = nullptr;
  cudaEvent_t arrival_ = nullptr;  // interprocess
  cudaEvent_t written_back_ = nullptr;
  cudaIpcEventHandle_t arrival_handle_{};

  // Written only by host functions, which run in stream order.
  std::chrono::steady_clock::time_point to_device_free_at_;
  std::chrono::steady_clock::time_point to_host_free_at_;

  mutable absl::Mutex mu_;
  uint64_t submitted_ ABSL_GUARDED_BY(mu_) = 0;
  mutable uint64_t completed_ ABSL_GUARDED_BY(mu_) = 0;
  // Markers recorded after each batch, to answer CompletedSequence().
  mutable std::deque<std::pair<uint64_t, cudaEvent_t>> pending_
      ABSL_GUARDED_BY(mu_);
  mutable std::vector<cudaEvent_t> spare_events_ ABSL_GUARDED_BY(mu_);
  std::map<uint64_t, cudaEvent_t> release_events_ ABSL_GUARDED_BY(mu_);
};

}  // namespace tidepool
