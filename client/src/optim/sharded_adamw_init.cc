// ShardedAdamW::Impl's setup and teardown: the blocks' shards and chunks,
// the registration of master/m/v, the options' checks, the worker's start
// and stop; and the masters' initial values (from the parameters or given).
#include <algorithm>
#include <thread>
#include <unordered_map>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "client/src/optim/sharded_adamw_impl.h"
#include "kernels/cpu/adamw.h"
#include "kernels/cpu/convert.h"
#ifdef TIDEPOOL_HAVE_CUDA
#include <cuda_runtime_api.h>
#endif

namespace tidepool {

absl::StatusOr<kernels::DType> ShardedAdamW::Impl::KernelType(DType d) {
  switch (d) {
    case DType::kF32:
      return kernels::DType::kF32;
    case DType::kF16:
      return kernels::DType::kF16;
    case DType::kBF16:
      return kernels::DType::kBF16;
    default:
      return absl::InvalidArgumentError(
          "optimizer: parameters and gradients must be f32, f16 or bf16");
  }
}

ShardedAdamW::Impl::Impl(Session* session, Communicator* comm,
                         const ShardedAdamWOptions& options)
    : session_(session),
      comm_(comm),
      options_(options),
      cuda_(session->device().backend == "cuda") {}

ShardedAdamW::Impl::~Impl() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
  }
  if (worker_.joinable()) worker_.join();
#ifdef TIDEPOOL_HAVE_CUDA
  if (cuda_ready_) {
    // Teardown: nothing useful to do with a failure here.
    (void)cudaSetDevice(cuda_ordinal_);
    (void)cudaFree(grad_dev_);
    (void)cudaFree(out_dev_);
    (void)cudaFree(chunk_dev_);
    (void)cudaStreamDestroy(stream_);
  }
#endif
}

absl::Status ShardedAdamW::Impl::Init(std::vector<ParamBlock> params) {
  if (comm_->device_buffers()) {
    return absl::UnimplementedError(
        "optimizer: device-buffer communicators (NCCL) are not wired into "
        "ShardedAdamW yet; use Gloo or a world of one");
  }
  const int world = comm_->world();
  const int rank = comm_->rank();
  bool any_f16 = false;
  std::vector<TensorSpec> specs;
  // Blocks of one parameter chunk (unknown chunk ids: all one chunk).
  std::unordered_map<uint64_t, int> chunk_index;
  for (size_t b = 0; b < params.size(); ++b) {
    const ParamBlock& p = params[b];
    if (p.count == 0) {
      return absl::InvalidArgumentError("optimizer: empty parameter block");
    }
    if (auto k = KernelType(p.dtype); !k.ok()) return k.status();
    any_f16 |= p.dtype == DType::kF16;
    Block blk;
    blk.param = p;
    blk.shard = (p.count + world - 1) / world;
    blk.begin = blk.shard * rank;
    blk.valid =
        blk.begin >= p.count ? 0 : std::min(blk.shard, p.count - blk.begin);
    auto [it, fresh] = chunk_index.try_emplace(
        p.chunk_id, static_cast<int>(chunk_blocks_.size()));
    if (fresh) chunk_blocks_.push_back(0);
    blk.chunk = it->second;
    ++chunk_blocks_[blk.chunk];
    max_shard_ = std::max(max_shard_, blk.shard);
    blocks_.push_back(blk);
  }
  // Masters first, then m and v interleaved: chunks hold one group, and
  // registration order is packing order.
  for (size_t b = 0; b < blocks_.size(); ++b) {
    specs.push_back({absl::StrCat("opt.master.", b),
                     DType::kF32,
                     {static_cast<int64_t>(blocks_[b].shard)},
                     Group::kMaster});
  }
  for (size_t b = 0; b < blocks_.size(); ++b) {
    for (const char* what : {"m", "v"}) {
      specs.push_back({absl::StrCat("opt.", what, ".", b),
                       DType::kF32,
                       {static_cast<int64_t>(blocks_[b].shard)},
                       Group::kOptimState});
    }
  }
  auto infos = session_->Register(specs);
  if (!infos.ok()) return infos.status();
  const size_t nb = blocks_.size();
  for (size_t b = 0; b < nb; ++b) {
    blocks_[b].master = (*infos)[b].id;
    blocks_[b].m = (*infos)[nb + 2 * b].id;
    blocks_[b].v = (*infos)[nb + 2 * b + 1].id;
  }
  LossScalerOptions ls = options_.loss_scale;
  ls.dynamic = ls.dynamic || any_f16;
  scaler_ = LossScaler(ls);
  deferred_ = ls.dynamic || options_.max_grad_norm > 0;
  kernels::AdamWParams check{.lr = options_.lr,
                             .beta1 = options_.beta1,
                             .beta2 = options_.beta2,
                             .eps = options_.eps,
                             .weight_decay = options_.weight_decay};
  TP_RETURN_IF_ERROR(kernels::ValidateAdamWParams(check));
  lr_.store(options_.lr);
  {
    absl::MutexLock lock(&mu_);
    phase_.assign(nb, Phase::kIdle);
    grad_shards_.resize(nb);
    chunk_left_ = chunk_blocks_;
  }
  if (options_.overlap) worker_ = std::thread([this] { WorkerLoop(); });
  return absl::OkStatus();
}

absl::Status ShardedAdamW::Impl::InitFromParams() {
  for (Block& blk : blocks_) {
    std::vector<float> wide(blk.param.count);
    TP_RETURN_IF_ERROR(
        ReadTensor(blk.param.tensor_id, [&](const void* src, uint64_t bytes) {
          if (bytes < blk.param.count * DTypeSize(blk.param.dtype)) {
            return absl::InternalError("optimizer: parameter tensor shrank");
          }
          return kernels::CpuConvertToF32(src, *KernelType(blk.param.dtype),
                                          wide.data(), blk.param.count);
        }));
    TP_RETURN_IF_ERROR(InitBlock(blk, wide.data()));
  }
  return absl::OkStatus();
}

absl::Status ShardedAdamW::Impl::InitBlock(Block& blk, const float* values) {
  TP_RETURN_IF_ERROR(
      WithState(blk, true, [&](float* master, float* m, float* v) {
        std::fill(master, master + blk.shard, 0.0f);
        std::copy_n(values + blk.begin, blk.valid, master);
        std::fill(m, m + blk.shard, 0.0f);
        std::fill(v, v + blk.shard, 0.0f);
        return absl::OkStatus();
      }));
  blk.steps = 0;
  return absl::OkStatus();
}

absl::Status ShardedAdamW::Impl::InitFromValues(int b, const float* values,
                                                size_t count) {
  if (b < 0 || b >= num_blocks()) {
    return absl::OutOfRangeError(absl::StrCat("optimizer: no block ", b));
  }
  Block& blk = blocks_[b];
  if (count != blk.param.count) {
    return absl::InvalidArgumentError(absl::StrCat("optimizer: block ", b,
                                                   " has ", blk.param.count,
                                                   " elements, not ", count));
  }
  return InitBlock(blk, values);
}

}  // namespace tidepool
