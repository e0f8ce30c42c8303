#include "daemon/backend/cuda_backend.h"

#include <chrono>
#include <cstdio>
#include <cstring>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace tidepool {
namespace {

using cuda::CheckCuda;

static_assert(sizeof(cudaIpcEventHandle_t) == wire::kCudaIpcHandleBytes);

absl::StatusOr<int> ResolveOrdinal(const std::string& name, int count) {
  if (name.empty() || name == "auto" || name == "cuda") return 0;
  std::string rest = name;
  if (rest.rfind("cuda:", 0) == 0) rest = rest.substr(5);
  int ordinal = 0;
  if (absl::SimpleAtoi(rest, &ordinal)) {
    if (ordinal < 0 || ordinal >= count) {
      return absl::NotFoundError(absl::StrCat(
          "GPU ordinal ", ordinal, " not present (", count, " visible)"));
    }
    return ordinal;
  }
  auto by_uuid = cuda::OrdinalOfUuid(name);
  if (by_uuid.ok()) return *by_uuid;
  return absl::NotFoundError(absl::StrCat("no GPU named '", name, "'"));
}

}  // namespace

absl::StatusOr<std::unique_ptr<CudaBackend>> CudaBackend::Create(
    const BackendOptions& options, uint8_t* host_pool, uint64_t host_bytes) {
  std::unique_ptr<CudaBackend> b(new CudaBackend());
  b->host_ = host_pool;
  b->host_bytes_ = host_bytes;
  TP_RETURN_IF_ERROR(b->Init(options));
  return b;
}

absl::Status CudaBackend::Init(const BackendOptions& options) {
  TP_ASSIGN_OR_RETURN(cu_, cuda::DriverApi::Get());
  int count = 0;
  TP_RETURN_IF_ERROR(
      CheckCuda(cudaGetDeviceCount(&count), "cudaGetDeviceCount"));
  TP_ASSIGN_OR_RETURN(const int ordinal, ResolveOrdinal(options.name, count));
  TP_RETURN_IF_ERROR(CheckCuda(cudaSetDevice(ordinal), "cudaSetDevice"));
  TP_RETURN_IF_ERROR(CheckCuda(cudaFree(nullptr), "CUDA context creation"));
  cudaDeviceProp prop{};
  TP_RETURN_IF_ERROR(CheckCuda(cudaGetDeviceProperties(&prop, ordinal),
                               "cudaGetDeviceProperties"));
  desc_.uuid = cuda::GpuUuid(prop.uuid);
  desc_.name = desc_.uuid;
  desc_.backend = "cuda";
  desc_.ordinal = ordinal;

  CUmemAllocationProp alloc{};
  alloc.type = CU_MEM_ALLOCATION_TYPE_PINNED;
  alloc.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
  alloc.location.id = ordinal;
  alloc.requestedHandleTypes = CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR;
  size_t granularity = 0;
  TP_RETURN_IF_ERROR(cu_->Check(
      cu_->MemGetAllocationGranularity(&granularity, &alloc,
                                       CU_MEM_ALLOC_GRANULARITY_RECOMMENDED),
      "cuMemGetAllocationGranularity"));
  desc_.granularity = granularity;

  uint64_t capacity = options.pool_bytes;
  if (capacity == 0) {
    size_t free_bytes = 0, total = 0;
    TP_RETURN_IF_ERROR(
        CheckCuda(cudaMemGetInfo(&free_bytes, &total), "cudaMemGetInfo"));
    if (free_bytes <= options.reserve_bytes) {
      return absl::ResourceExhaustedError(
          absl::StrCat(desc_.name, ": only ", free_bytes,
                       " bytes free, reserve is ", options.reserve_bytes));
    }
    capacity = free_bytes - options.reserve_bytes;
  }
  capacity -= capacity % granularity;
  if (capacity == 0)
    return absl::InvalidArgumentError("device pool of 0 bytes");
  desc_.capacity_bytes = capacity;

  TP_RETURN_IF_ERROR(
      cu_->Check(cu_->MemCreate(&handle_, capacity, &alloc, 0),
                 absl::StrCat("cuMemCreate of ", capacity, " bytes")));
  handle_valid_ = true;
  int fd = -1;
  TP_RETURN_IF_ERROR(
      cu_->Check(cu_->MemExportToShareableHandle(
                     &fd, handle_, CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR, 0),
                 "cuMemExportToShareableHandle"));
  export_fd_.Reset(fd);
  TP_RETURN_IF_ERROR(
      cu_->Check(cu_->MemAddressReserve(&base_, capacity, granularity, 0, 0),
                 "cuMemAddressReserve"));
  TP_RETURN_IF_ERROR(
      cu_->Check(cu_->MemMap(base_, capacity, 0, handle_, 0), "cuMemMap"));
  mapped_ = true;
  CUmemAccessDesc access{};
  access.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
  access.location.id = ordinal;
  access.flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
  TP_RETURN_IF_ERROR(cu_->Check(cu_->MemSetAccess(base_, capacity, &access, 1),
                                "cuMemSetAccess"));

  TP_RETURN_IF_ERROR(
      CheckCuda(cudaStreamCreateWithFlags(&to_device_, cudaStreamNonBlocking),
                "cudaStreamCreate"));
  TP_RETURN_IF_ERROR(
      CheckCuda(cudaStreamCreateWithFlags(&to_host_, cudaStreamNonBlocking),
                "cudaStreamCreate"));
  TP_RETURN_IF_ERROR(
      CheckCuda(cudaEventCreateWithFlags(
                    &arrival_, cudaEventDisableTiming | cudaEventInterprocess),
                "cudaEventCreate (interprocess)"));
  TP_RETURN_IF_ERROR(
      CheckCuda(cudaIpcGetEventHandle(&arrival_handle_, arrival_),
                "cudaIpcGetEventHandle"));
  TP_RETURN_IF_ERROR(CheckCuda(
      cudaEventCreateWithFlags(&written_back_, cudaEventDisableTiming),
      "cudaEventCreate"));
  // The arrival event must have been recorded once before clients wait on it.
  TP_RETURN_IF_ERROR(
      CheckCuda(cudaEventRecord(arrival_, to_device_), "cudaEventRecord"));

  TP_ASSIGN_OR_RETURN(control_fd_, CreateMemfd("tidepool-cuda-control", 4096));
  TP_ASSIGN_OR_RETURN(control_, SharedMapping::Map(control_fd_.get(), 4096));
  auto* page = new (control_.data()) wire::ControlPage();
  page->magic = wire::kControlMagic;
  page->version = 1;
  TP_RETURN_IF_ERROR(SealAgainstWrites(control_fd_.get()));
  return absl::OkStatus();
}

absl::Status CudaBackend::PinHost(uint8_t* data, uint64_t bytes) {
  TP_RETURN_IF_ERROR(CheckCuda(cudaSetDevice(desc_.ordinal), "cudaSetDevice"));
  // Portable: pinned for every device's context, so the first backend to
  // pin a home pins it for all of them.
  const cudaError_t err =
      cudaHostRegister(data, bytes, cudaHostRegisterPortable);
  if (err == cudaErrorHostMemoryAlreadyRegistered) {
    cudaGetLastError();  // clears the sticky-free error state
    return absl::OkStatus();
  }
  return CheckCuda(err, "cudaHostRegister of a host home");
}

void CudaBackend::UnpinHost(uint8_t* data) {
  if (cudaHostUnregister(data) != cudaSuccess) cudaGetLastError();
}

CudaBackend::~CudaBackend() {
  if (cu_ == nullptr) return;
  cudaSetDevice(desc_.ordinal);
  if (to_device_ != nullptr) cudaStreamSynchronize(to_device_);
  if (to_host_ != nullptr) cudaStreamSynchronize(to_host_);
  {
    absl::MutexLock lock(&mu_);
    for (auto& [seq, ev] : pending_) cudaEventDestroy(ev);
    for (cudaEvent_t ev : spare_events_) cudaEventDestroy(ev);
    for (auto& [id, ev] : release_events_) cudaEventDestroy(ev);
  }
  if (arrival_ != nullptr) cudaEventDestroy(arrival_);
  if (written_back_ != nullptr) cudaEventDestroy(written_back_);
  if (to_device_ != nullptr) cudaStreamDestroy(to_device_);
  if (to_host_ != nullptr) cudaStreamDestroy(to_host_);
  if (mapped_) cu_->MemUnmap(base_, desc_.capacity_bytes);
  if (base_ != 0) cu_->MemAddressFree(base_, desc_.capacity_bytes);
  if (handle_valid_) cu_->MemRelease(handle_);
}

namespace {

// One direction of one batch, timed from when its stream reached it to when
// the stream finished it (host functions run in stream order).
struct TimedCopies {
  const DeviceBackend::CopyObserver* observer;
  bool to_device;
  uint64_t bytes;
  std::chrono::steady_clock::time_point* stream_free_at;
};

void CUDART_CB CopiesDone(void* arg) {
  std::unique_ptr<TimedCopies> t(static_cast<TimedCopies*>(arg));
  const auto now = std::chrono::steady_clock::now();
  (*t->observer)(
      t->to_device, t->bytes,
      std::chrono::duration<double>(now - *t->stream_free_at).count());
  *t->stream_free_at = now;
}

void CUDART_CB StreamStarted(void* arg) {
  *static_cast<std::chrono::steady_clock::time_point*>(arg) =
      std::chrono::steady_clock::now();
}

}  // namespace

absl::Status CudaBackend::TimeCopies(cudaStream_t stream, bool to_device,
                                     uint64_t bytes) {
  if (!copy_observer_ || bytes == 0) return absl::OkStatus();
  auto* t =
      new TimedCopies{&copy_observer_, to_device, bytes,
                      to_device ? &to_device_free_at_ : &to_host_free_at_};
  const cudaError_t e = cudaLaunchHostFunc(stream, CopiesDone, t);
  if (e != cudaSuccess) delete t;
  return CheckCuda(e, "cudaLaunchHostFunc");
}

absl::Status CudaBackend::MarkStreamStart(cudaStream_t stream, bool to_device) {
  if (!copy_observer_) return absl::OkStatus();
  return CheckCuda(
      cudaLaunchHostFunc(stream, StreamStarted,
                         to_device ? &to_device_free_at_ : &to_host_free_at_),
      "cudaLaunchHostFunc");
}

absl::StatusOr<uint64_t> CudaBackend::Submit(CopyBatch batch) {
  absl::MutexLock lock(&mu_);
  TP_RETURN_IF_ERROR(CheckCuda(cudaSetDevice(desc_.ordinal), "cudaSetDevice"));
  auto* dev = reinterpret_cast<uint8_t*>(base_);
  for (uint64_t session : batch.wait_sessions) {
    auto it = release_events_.find(session);
    if (it == release_events_.end()) continue;
    TP_RETURN_IF_ERROR(CheckCuda(cudaStreamWaitEvent(to_host_, it->second, 0),
                                 "cudaStreamWaitEvent (release)"));
    TP_RETURN_IF_ERROR(CheckCuda(cudaStreamWaitEvent(to_device_, it->second, 0),
                                 "cudaStreamWaitEvent (release)"));
  }
  uint64_t to_host_bytes = 0, to_device_bytes = 0;
  if (!batch.to_host.empty()) {
    TP_RETURN_IF_ERROR(MarkStreamStart(to_host_, false));
  }
  for (const CopyOp& op : batch.to_host) {
    to_host_bytes += op.bytes;
    TP_RETURN_IF_ERROR(CheckCuda(
        cudaMemcpyAsync(host_ + op.host_offset, dev + op.device_offset,
                        op.bytes, cudaMemcpyDeviceToHost, to_host_),
        "cudaMemcpyAsync D2H"));
  }
  TP_RETURN_IF_ERROR(TimeCopies(to_host_, false, to_host_bytes));
  if (!batch.to_host.empty()) {
    // Loads from now on start after these write-backs: a slot or host home
    // may be reused right away.
    TP_RETURN_IF_ERROR(
        CheckCuda(cudaEventRecord(written_back_, to_host_), "cudaEventRecord"));
    TP_RETURN_IF_ERROR(
        CheckCuda(cudaStreamWaitEvent(to_device_, written_back_, 0),
                  "cudaStreamWaitEvent"));
  }
  for (const CopyOp& op : batch.zero_device) {
    TP_RETURN_IF_ERROR(CheckCuda(
        cudaMemsetAsync(dev + op.device_offset, 0, op.bytes, to_device_),
        "cudaMemsetAsync"));
  }
  if (!batch.to_device.empty()) {
    TP_RETURN_IF_ERROR(MarkStreamStart(to_device_, true));
  }
  for (const CopyOp& op : batch.to_device) {
    to_device_bytes += op.bytes;
    TP_RETURN_IF_ERROR(CheckCuda(
        cudaMemcpyAsync(dev + op.device_offset, host_ + op.host_offset,
                        op.bytes, cudaMemcpyHostToDevice, to_device_),
        "cudaMemcpyAsync H2D"));
  }
  TP_RETURN_IF_ERROR(TimeCopies(to_device_, true, to_device_bytes));
  TP_RETURN_IF_ERROR(
      CheckCuda(cudaEventRecord(arrival_, to_device_), "cudaEventRecord"));
  cudaEvent_t marker = nullptr;
  PollCompleted();
  if (!spare_events_.empty()) {
    marker = spare_events_.back();
    spare_events_.pop_back();
  } else {
    TP_RETURN_IF_ERROR(
        CheckCuda(cudaEventCreateWithFlags(&marker, cudaEventDisableTiming),
                  "cudaEventCreate"));
  }
  // The marker follows both streams' work of this batch.
  TP_RETURN_IF_ERROR(
      CheckCuda(cudaEventRecord(written_back_, to_host_), "cudaEventRecord"));
  TP_RETURN_IF_ERROR(
      CheckCuda(cudaStreamWaitEvent(to_device_, written_back_, 0),
                "cudaStreamWaitEvent"));
  TP_RETURN_IF_ERROR(
      CheckCuda(cudaEventRecord(marker, to_device_), "cudaEventRecord"));
  const uint64_t seq = ++submitted_;
  pending_.emplace_back(seq, marker);
  return seq;
}

void CudaBackend::PollCompleted() const {
  while (!pending_.empty() &&
         cudaEventQuery(pending_.front().second) == cudaSuccess) {
    completed_ = pending_.front().first;
    spare_events_.push_back(pending_.front().second);
    pending_.pop_front();
  }
}

absl::Status CudaBackend::Drain() {
  absl::MutexLock lock(&mu_);
  TP_RETURN_IF_ERROR(CheckCuda(cudaSetDevice(desc_.ordinal), "cudaSetDevice"));
  TP_RETURN_IF_ERROR(
      CheckCuda(cudaStreamSynchronize(to_host_), "cudaStreamSynchronize"));
  TP_RETURN_IF_ERROR(
      CheckCuda(cudaStreamSynchronize(to_device_), "cudaStreamSynchronize"));
  PollCompleted();
  return absl::OkStatus();
}

uint64_t CudaBackend::CompletedSequence() const {
  absl::MutexLock lock(&mu_);
  cudaSetDevice(desc_.ordinal);
  PollCompleted();
  return completed_;
}

void CudaBackend::FillAttachReply(wire::AttachReply* reply) const {
  reply->backend = wire::Backend::kCuda;
  reply->device_ordinal = desc_.ordinal;
  reply->device_pool_bytes = desc_.capacity_bytes;
  reply->control_page_bytes = control_.size();
  std::memcpy(reply->arrival_event, &arrival_handle_, sizeof(arrival_handle_));
}

absl::Status CudaBackend::AddSession(uint64_t session_id,
                                     const wire::AttachRequest& request) {
  if (!request.has_release_event) {
    return absl::InvalidArgumentError(
        "the cuda backend needs the client's release event");
  }
  cudaIpcEventHandle_t handle;
  std::memcpy(&handle, request.release_event, sizeof(handle));
  absl::MutexLock lock(&mu_);
  TP_RETURN_IF_ERROR(CheckCuda(cudaSetDevice(desc_.ordinal), "cudaSetDevice"));
  cudaEvent_t event = nullptr;
  TP_RETURN_IF_ERROR(CheckCuda(cudaIpcOpenEventHandle(&event, handle),
                               "cudaIpcOpenEventHandle (client release)"));
  auto [it, inserted] = release_events_.emplace(session_id, event);
  if (!inserted) {
    cudaEventDestroy(event);
    return absl::AlreadyExistsError("session already attached");
  }
  return absl::OkStatus();
}

void CudaBackend::RemoveSession(uint64_t session_id) {
  absl::MutexLock lock(&mu_);
  auto it = release_events_.find(session_id);
  if (it == release_events_.end()) return;
  cudaSetDevice(desc_.ordinal);
  cudaEventDestroy(it->second);
  release_events_.erase(it);
}

absl::StatusOr<uint64_t> CudaBackend::DriverFreeBytes() const {
  cudaSetDevice(desc_.ordinal);
  size_t free_bytes = 0, total = 0;
  TP_RETURN_IF_ERROR(
      CheckCuda(cudaMemGetInfo(&free_bytes, &total), "cudaMemGetInfo"));
  return free_bytes;
}

}  // namespace tidepool
