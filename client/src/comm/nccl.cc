// Communicator over NCCL (from the CUDA toolkit): device buffers, enqueued
// on the stream given at open. Rank 0 creates the ncclUniqueId and
// publishes it as a file in id_dir (written to a temporary name, then
// renamed, so readers never see half of it); the others poll for it.
#include <cuda_runtime_api.h>
#include <nccl.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "tidepool/communicator.h"

namespace tidepool {
namespace {

absl::Status NcclError(const char* what, ncclResult_t r) {
  return absl::InternalError(
      absl::StrCat("nccl ", what, ": ", ncclGetErrorString(r)));
}

absl::StatusOr<ncclDataType_t> NcclType(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return ncclFloat32;
    case DType::kF64:
      return ncclFloat64;
    case DType::kBF16:
      return ncclBfloat16;
    case DType::kF16:
      return ncclFloat16;
    default:
      return absl::InvalidArgumentError("nccl: unsupported dtype");
  }
}

class NcclCommunicator final : public Communicator {
 public:
  NcclCommunicator(ncclComm_t comm, int rank, int world, cudaStream_t stream,
                   int* scratch)
      : comm_(comm),
        rank_(rank),
        world_(world),
        stream_(stream),
        scratch_(scratch) {}
  ~NcclCommunicator() override {
    ncclCommDestroy(comm_);
    cudaFree(scratch_);
  }

  int rank() const override { return rank_; }
  int world() const override { return world_; }
  const char* backend() const override { return "nccl"; }
  bool device_buffers() const override { return true; }

  absl::Status AllReduceSum(void* data, size_t count, DType dtype) override {
    auto type = NcclType(dtype);
    if (!type.ok()) return type.status();
    absl::MutexLock lock(&mu_);
    ncclResult_t r =
        ncclAllReduce(data, data, count, *type, ncclSum, comm_, stream_);
    return r == ncclSuccess ? absl::OkStatus() : NcclError("all-reduce", r);
  }

  absl::Status ReduceScatterSum(const void* send, void* recv,
                                size_t shard_count, DType dtype) override {
    auto type = NcclType(dtype);
    if (!type.ok()) return type.status();
    absl::MutexLock lock(&mu_);
    ncclResult_t r = ncclReduceScatter(send, recv, shard_count, *type, ncclSum,
                                       comm_, stream_);
    return r == ncclSuccess ? absl::OkStatus() : NcclError("reduce-scatter", r);
  }

  absl::Status AllGather(const void* send, void* recv, size_t shard_count,
                         DType dtype) override {
    auto type = NcclType(dtype);
    if (!type.ok()) return type.status();
    absl::MutexLock lock(&mu_);
    ncclResult_t r =
        ncclAllGather(send, recv, shard_count, *type, comm_, stream_);
    return r == ncclSuccess ? absl::OkStatus() : NcclError("all-gather", r);
  }

  absl::Status Barrier() override {
    absl::MutexLock lock(&mu_);
    ncclResult_t r = ncclAllReduce(scratch_, scratch_, 1, ncclInt32, ncclSum,
                                   comm_, stream_);
    if (r != ncclSuccess) return NcclError("barrier", r);
    cudaError_t e = cudaStreamSynchronize(stream_);
    return e == cudaSuccess ? absl::OkStatus()
                            : absl::InternalError(absl::StrCat(
                                  "nccl barrier: ", cudaGetErrorString(e)));
  }

 private:
  absl::Mutex mu_;
  ncclComm_t comm_;
  const int rank_;
  const int world_;
  cudaStream_t stream_;
  int* scratch_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Communicator>> OpenNcclCommunicator(
    const NcclOptions& options) {
  if (options.world < 1 || options.rank < 0 || options.rank >= options.world) {
    return absl::InvalidArgumentError("nccl: bad rank or world");
  }
  if (options.world == 1) return MakeLocalCommunicator();
  if (options.id_dir.empty()) {
    return absl::InvalidArgumentError("nccl: id_dir is required");
  }
  const std::filesystem::path path =
      std::filesystem::path(options.id_dir) / "nccl-unique-id";
  ncclUniqueId id;
  if (options.rank == 0) {
    if (ncclResult_t r = ncclGetUniqueId(&id); r != ncclSuccess) {
      return NcclError("get unique id", r);
    }
    std::error_code ec;
    std::filesystem::create_directories(options.id_dir, ec);
    const std::string tmp = path.string() + ".tmp";
    {
      std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
      out.write(id.internal, sizeof(id.internal));
      if (!out) return absl::InternalError("nccl: cannot write " + tmp);
    }
    std::filesystem::rename(tmp, path, ec);
    if (ec) return absl::InternalError("nccl: cannot publish " + path.string());
  } else {
    const auto deadline = std::chrono::steady_clock::now() + options.timeout;
    for (;;) {
      std::ifstream in(path, std::ios::binary);
      if (in.read(id.internal, sizeof(id.internal))) break;
      if (std::chrono::steady_clock::now() > deadline) {
        return absl::DeadlineExceededError("nccl: no unique id at " +
                                           path.string());
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  }
  ncclComm_t comm;
  if (ncclResult_t r = ncclCommInitRank(&comm, options.world, id, options.rank);
      r != ncclSuccess) {
    return NcclError("comm init", r);
  }
  int* scratch = nullptr;
  if (cudaMalloc(&scratch, sizeof(int)) != cudaSuccess) {
    ncclCommDestroy(comm);
    return absl::ResourceExhaustedError("nccl: cudaMalloc of scratch failed");
  }
  return std::unique_ptr<Communicator>(std::make_unique<NcclCommunicator>(
      comm, options.rank, options.world,
      static_cast<cudaStream_t>(options.stream), scratch));
}

}  // namespace tidepool
