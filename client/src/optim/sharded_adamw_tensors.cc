// ShardedAdamW::Impl's host access to tensors where the session places them
// (host homes and sim device memory directly, a cuda device through host
// copies), and the parameter writes built on it: the all-gather of the
// low-precision shards, and parameters rebuilt from the masters. The
// templates ReadTensor and WithState are in sharded_adamw_impl.h.
#include <cstring>
#include <vector>

#include "absl/strings/str_cat.h"
#include "client/src/optim/sharded_adamw_impl.h"
#include "kernels/cpu/convert.h"
#ifdef TIDEPOOL_HAVE_CUDA
#include <cuda_runtime_api.h>
#endif

namespace tidepool {

absl::Status ShardedAdamW::Impl::ToHost(const AcquiredTensor& t, void* dst,
                                        size_t bytes) {
#ifdef TIDEPOOL_HAVE_CUDA
  if (cudaMemcpy(dst, t.data, bytes, cudaMemcpyDeviceToHost) != cudaSuccess) {
    return absl::InternalError("optimizer: device-to-host copy failed");
  }
  return absl::OkStatus();
#else
  (void)t, (void)dst, (void)bytes;
  return absl::InternalError("optimizer: cuda backend without CUDA build");
#endif
}

absl::Status ShardedAdamW::Impl::FromHost(const AcquiredTensor& t,
                                          const void* src, size_t bytes) {
#ifdef TIDEPOOL_HAVE_CUDA
  if (cudaMemcpy(t.data, src, bytes, cudaMemcpyHostToDevice) != cudaSuccess) {
    return absl::InternalError("optimizer: host-to-device copy failed");
  }
  return absl::OkStatus();
#else
  (void)t, (void)src, (void)bytes;
  return absl::InternalError("optimizer: cuda backend without CUDA build");
#endif
}

absl::Status ShardedAdamW::Impl::WriteTensor(uint64_t id, const void* src,
                                             size_t bytes) {
  auto got = session_->AcquireWherePlaced({&id, 1}, AccessMode::kReadWrite);
  if (!got.ok()) return got.status();
  const AcquiredTensor& t = got->tensors[0];
  absl::Status s;
  if (t.bytes < bytes) {
    s = absl::InternalError(absl::StrCat("optimizer: tensor ", id, " has ",
                                         t.bytes, " bytes, not ", bytes));
  } else if (Staged(*got)) {
    s = FromHost(t, src, bytes);
  } else {
    std::memcpy(t.data, src, bytes);
  }
  absl::Status r = session_->Release({&id, 1}, TensorState::kHold);
  return s.ok() ? r : s;
}

absl::Status ShardedAdamW::Impl::GatherParams(
    const Block& blk, const std::vector<char>& shard_param) {
  const size_t es = DTypeSize(blk.param.dtype);
  std::vector<char> full(blk.shard * comm_->world() * es);
  TP_RETURN_IF_ERROR(comm_->AllGather(shard_param.data(), full.data(),
                                      blk.shard, blk.param.dtype));
  return WriteTensor(blk.param.tensor_id, full.data(), blk.param.count * es);
}

absl::Status ShardedAdamW::Impl::ParamsFromMaster(const Block& blk) {
  const size_t es = DTypeSize(blk.param.dtype);
  std::vector<char> shard_param(blk.shard * es);
  TP_RETURN_IF_ERROR(WithState(blk, false, [&](float* master, float*, float*) {
    if (blk.param.dtype == DType::kF32) {
      std::memcpy(shard_param.data(), master, blk.shard * 4);
      return absl::OkStatus();
    }
    return kernels::CpuConvertFromF32(master, shard_param.data(),
                                      *KernelType(blk.param.dtype), blk.shard);
  }));
  return GatherParams(blk, shard_param);
}

}  // namespace tidepool
