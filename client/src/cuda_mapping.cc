#include <cuda.h>
#include <cuda_runtime_api.h>

#include <cstring>
#include <mutex>

#include "client/src/device_mapping.h"
#include "common/cuda/driver_api.h"
#include "common/status_macros.h"

namespace tidepool::internal {
namespace {

using cuda::CheckCuda;

class CudaMapping : public DeviceMapping {
 public:
  ~CudaMapping() override {
    if (cu_ == nullptr) return;
    cudaSetDevice(ordinal_);
    if (mapped_) cu_->MemUnmap(base_, size_);
    if (base_ != 0) cu_->MemAddressFree(base_, size_);
    if (handle_valid_) cu_->MemRelease(handle_);
    if (arrival_ != nullptr) cudaEventDestroy(arrival_);
    if (release_ != nullptr) cudaEventDestroy(release_);
  }

  absl::Status Init(const std::string& uuid) {
    TP_ASSIGN_OR_RETURN(cu_, cuda::DriverApi::Get());
    // CUDA_VISIBLE_DEVICES may differ from the daemon's: match by UUID.
    auto ordinal = cuda::OrdinalOfUuid(uuid);
    if (!ordinal.ok()) {
      return absl::NotFoundError("the session's " +
                                 std::string(ordinal.status().message()));
    }
    ordinal_ = *ordinal;
    TP_RETURN_IF_ERROR(CheckCuda(cudaSetDevice(ordinal_), "cudaSetDevice"));
    TP_RETURN_IF_ERROR(CheckCuda(
        cudaEventCreateWithFlags(
            &release_, cudaEventDisableTiming | cudaEventInterprocess),
        "cudaEventCreate (release)"));
    TP_RETURN_IF_ERROR(
        CheckCuda(cudaEventRecord(release_, nullptr), "cudaEventRecord"));
    return CheckCuda(cudaIpcGetEventHandle(&release_handle_, release_),
                     "cudaIpcGetEventHandle");
  }

  void PrepareAttach(wire::AttachRequest* request) override {
    request->has_release_event = 1;
    std::memcpy(request->release_event, &release_handle_,
                sizeof(release_handle_));
  }

  absl::Status Map(const wire::AttachReply& reply, UniqueFd device_fd,
                   UniqueFd) override {
    TP_RETURN_IF_ERROR(CheckCuda(cudaSetDevice(ordinal_), "cudaSetDevice"));
    size_ = reply.device_pool_bytes;
    TP_RETURN_IF_ERROR(cu_->Check(
        cu_->MemImportFromShareableHandle(
            &handle_,
            reinterpret_cast<void*>(static_cast<uintptr_t>(device_fd.get())),
            CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR),
        "cuMemImportFromShareableHandle"));
    handle_valid_ = true;
    TP_RETURN_IF_ERROR(cu_->Check(
        cu_->MemAddressReserve(&base_, size_, 0, 0, 0), "cuMemAddressReserve"));
    TP_RETURN_IF_ERROR(
        cu_->Check(cu_->MemMap(base_, size_, 0, handle_, 0), "cuMemMap"));
    mapped_ = true;
    CUmemAccessDesc access{};
    access.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
    access.location.id = ordinal_;
    access.flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
    TP_RETURN_IF_ERROR(cu_->Check(cu_->MemSetAccess(base_, size_, &access, 1),
                                  "cuMemSetAccess"));
    cudaIpcEventHandle_t handle;
    std::memcpy(&handle, reply.arrival_event, sizeof(handle));
    return CheckCuda(cudaIpcOpenEventHandle(&arrival_, handle),
                     "cudaIpcOpenEventHandle (arrival)");
  }

  absl::Status MapPiece(uint64_t, uint64_t, UniqueFd) override {
    // The cuda backend hands the whole pool over at attach (for now).
    return absl::DataLossError("the daemon sent a device piece on cuda");
  }

  uint8_t* base() const override { return reinterpret_cast<uint8_t*>(base_); }

  absl::Status WaitArrival(uint64_t, CudaStream stream, int) override {
    // The daemon recorded the event after the copies of this acquire (and
    // possibly later ones), before it answered: waiting on its latest record
    // covers them.
    return CheckCuda(cudaStreamWaitEvent(reinterpret_cast<cudaStream_t>(stream),
                                         arrival_, 0),
                     "cudaStreamWaitEvent (arrival)");
  }

  absl::Status WaitArrivalOnHost(uint64_t sequence, int) override {
    if (sequence == 0) return absl::OkStatus();  // nothing was written back
    // The arrival event follows every write-back submitted before it.
    return CheckCuda(cudaEventSynchronize(arrival_),
                     "cudaEventSynchronize (arrival)");
  }

  absl::Status BeforeRelease(CudaStream stream) override {
    // The daemon waits on the event's latest record only. Threads release
    // from different streams (the trainer's, the optimizer worker's), so
    // each record first waits on the previous one: the latest then covers
    // every release before it, whichever stream it came from.
    const auto s = reinterpret_cast<cudaStream_t>(stream);
    std::lock_guard<std::mutex> lock(release_mu_);
    TP_RETURN_IF_ERROR(CheckCuda(cudaStreamWaitEvent(s, release_, 0),
                                 "cudaStreamWaitEvent (release)"));
    return CheckCuda(cudaEventRecord(release_, s), "cudaEventRecord (release)");
  }

 private:
  const cuda::DriverApi* cu_ = nullptr;
  int ordinal_ = 0;
  CUmemGenericAllocationHandle handle_ = 0;
  bool handle_valid_ = false;
  bool mapped_ = false;
  CUdeviceptr base_ = 0;
  size_t size_ = 0;
  cudaEvent_t arrival_ = nullptr;
  // Orders the records of release_ (set once in Init, then only recorded).
  std::mutex release_mu_;
  cudaEvent_t release_ = nullptr;
  cudaIpcEventHandle_t release_handle_{};
};

}  // namespace

absl::StatusOr<std::unique_ptr<DeviceMapping>> NewCudaMapping(
    const std::string& uuid) {
  auto mapping = std::make_unique<CudaMapping>();
  TP_RETURN_IF_ERROR(mapping->Init(uuid));
  return std::unique_ptr<DeviceMapping>(std::move(mapping));
}

}  // namespace tidepool::internal
