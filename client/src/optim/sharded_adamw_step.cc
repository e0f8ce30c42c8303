// ShardedAdamW::Impl's step: Step() (the all-reduced statistics, the loss
// scaler, clipping, the deferred updates, or the parameters put back on a
// skipped step), and one block's AdamW update where the session places it
// (CpuAdamW, or FusedAdamW on a cuda device), with its all-gather.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "client/src/optim/sharded_adamw_impl.h"
#include "kernels/cpu/adamw.h"
#include "kernels/cpu/grad_stats.h"
#ifdef TIDEPOOL_HAVE_CUDA
#include <cuda_runtime_api.h>

#include "common/cuda/driver_api.h"
#include "kernels/cuda/fused_adamw.h"
#endif

namespace tidepool {

#ifdef TIDEPOOL_HAVE_CUDA
namespace {

absl::Status Cuda(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return absl::OkStatus();
  return absl::InternalError(absl::StrCat("optimizer: ", what, ": ",
                                          cudaGetErrorName(e), ": ",
                                          cudaGetErrorString(e)));
}

}  // namespace
#endif

absl::Status ShardedAdamW::Impl::CpuUpdate(const Block& blk,
                                           const kernels::AdamWParams& p,
                                           float* master, float* m, float* v,
                                           const std::vector<float>& grad,
                                           std::vector<char>& shard_param) {
  if (blk.param.dtype == DType::kF32) {
    TP_RETURN_IF_ERROR(kernels::CpuAdamW(p, master, m, v, grad.data(),
                                         kernels::DType::kF32, nullptr,
                                         kernels::DType::kBF16, blk.shard));
    std::memcpy(shard_param.data(), master, blk.shard * 4);
    return absl::OkStatus();
  }
  return kernels::CpuAdamW(p, master, m, v, grad.data(), kernels::DType::kF32,
                           shard_param.data(), *KernelType(blk.param.dtype),
                           blk.shard);
}

#ifdef TIDEPOOL_HAVE_CUDA
absl::Status ShardedAdamW::Impl::CudaReady() {
  absl::MutexLock lock(&cuda_mu_);
  if (!cuda_ready_) {
    auto ordinal = cuda::OrdinalOfUuid(session_->device().uuid);
    if (!ordinal.ok()) return ordinal.status();
    cuda_ordinal_ = *ordinal;
  }
  TP_RETURN_IF_ERROR(Cuda(cudaSetDevice(cuda_ordinal_), "cudaSetDevice"));
  if (cuda_ready_) return absl::OkStatus();
  // Create everything, then publish: a failure leaves nothing half made
  // for the destructor (what was made is freed here).
  cudaStream_t stream = nullptr;
  void *grad = nullptr, *out = nullptr, *chunk = nullptr;
  absl::Status s =
      Cuda(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "stream");
  if (s.ok()) s = Cuda(cudaMalloc(&grad, max_shard_ * 4), "cudaMalloc");
  if (s.ok()) s = Cuda(cudaMalloc(&out, max_shard_ * 2), "cudaMalloc");
  if (s.ok()) {
    s = Cuda(cudaMalloc(&chunk, sizeof(kernels::AdamWChunk)), "cudaMalloc");
  }
  if (!s.ok()) {
    (void)cudaFree(grad);
    (void)cudaFree(out);
    (void)cudaFree(chunk);
    if (stream != nullptr) (void)cudaStreamDestroy(stream);
    return s;
  }
  stream_ = stream;
  grad_dev_ = static_cast<float*>(grad);
  out_dev_ = out;
  chunk_dev_ = static_cast<kernels::AdamWChunk*>(chunk);
  cuda_ready_ = true;
  return absl::OkStatus();
}

absl::Status ShardedAdamW::Impl::CudaUpdate(const Block& blk,
                                            const kernels::AdamWParams& p,
                                            float* master, float* m, float* v,
                                            const std::vector<float>& grad,
                                            std::vector<char>& shard_param) {
  const bool f32 = blk.param.dtype == DType::kF32;
  const size_t es = DTypeSize(blk.param.dtype);
  TP_RETURN_IF_ERROR(
      Cuda(cudaMemcpyAsync(grad_dev_, grad.data(), blk.shard * sizeof(float),
                           cudaMemcpyHostToDevice, stream_),
           "gradient upload"));
  const kernels::AdamWChunk chunk{master,
                                  m,
                                  v,
                                  grad_dev_,
                                  f32 ? nullptr : out_dev_,
                                  static_cast<int64_t>(blk.shard)};
  // From pageable memory: staged before the call returns, so `chunk` may
  // go out of scope.
  TP_RETURN_IF_ERROR(Cuda(cudaMemcpyAsync(chunk_dev_, &chunk, sizeof(chunk),
                                          cudaMemcpyHostToDevice, stream_),
                          "descriptor upload"));
  // param_dtype must be f16/bf16 even when nothing is written (fp32).
  TP_RETURN_IF_ERROR(kernels::FusedAdamW(
      p, chunk_dev_, 1, kernels::DType::kF32,
      f32 ? kernels::DType::kBF16 : *KernelType(blk.param.dtype),
      /*grad_scale_dev=*/nullptr, /*skip_dev=*/nullptr, stream_));
  TP_RETURN_IF_ERROR(
      Cuda(cudaMemcpyAsync(shard_param.data(), f32 ? master : out_dev_,
                           blk.shard * es, cudaMemcpyDeviceToHost, stream_),
           "parameter download"));
  return Cuda(cudaStreamSynchronize(stream_), "cudaStreamSynchronize");
}
#endif

absl::Status ShardedAdamW::Impl::Update(int b, const std::vector<float>& grad,
                                        float scale) {
  Block& blk = blocks_[b];
  const size_t es = DTypeSize(blk.param.dtype);
  std::vector<char> shard_param(blk.shard * es);
  kernels::AdamWParams p{.lr = lr_.load(std::memory_order_relaxed),
                         .beta1 = options_.beta1,
                         .beta2 = options_.beta2,
                         .eps = options_.eps,
                         .weight_decay = options_.weight_decay,
                         .step = blk.steps + 1,
                         .grad_scale = scale};
  CudaStream stream = nullptr;
#ifdef TIDEPOOL_HAVE_CUDA
  if (cuda_ && session_->policy() != Policy::kCpu) {  // may be on the GPU
    TP_RETURN_IF_ERROR(CudaReady());
    stream = reinterpret_cast<CudaStream>(stream_);
  }
#endif
  const uint64_t ids[3] = {blk.master, blk.m, blk.v};
  auto got = session_->AcquireWherePlaced(ids, AccessMode::kReadWrite, stream);
  if (!got.ok()) return got.status();
  float* master = static_cast<float*>(got->tensors[0].data);
  float* m = static_cast<float*>(got->tensors[1].data);
  float* v = static_cast<float*>(got->tensors[2].data);
  absl::Status s;
  if (Staged(*got)) {
#ifdef TIDEPOOL_HAVE_CUDA
    // Not ordered after the arrival unless acquired on stream_ (a `cpu`
    // session is never placed on the device).
    s = stream == nullptr ? absl::InternalError(
                                "optimizer: update placed on the device "
                                "under policy cpu")
                          : CudaUpdate(blk, p, master, m, v, grad, shard_param);
#else
    s = absl::InternalError("optimizer: cuda backend without CUDA build");
#endif
  } else {
    s = CpuUpdate(blk, p, master, m, v, grad, shard_param);
  }
  absl::Status r = session_->Release(ids, TensorState::kHold, stream);
  if (!s.ok()) return s;
  if (!r.ok()) return r;
  blk.steps += 1;
  {
    absl::MutexLock lock(&mu_);
    ++(got->on_device ? on_device_ : on_host_);
  }
  return GatherParams(blk, shard_param);
}

absl::StatusOr<StepResult> ShardedAdamW::Impl::Step() {
  Drain();
  double stats[2];
  std::vector<Phase> phases;
  {
    absl::MutexLock lock(&mu_);
    if (!error_.ok()) {
      absl::Status e = error_;
      error_ = absl::OkStatus();
      ResetLocked();
      return e;
    }
    stats[0] = sum_squares_;
    stats[1] = nonfinite_ ? 1.0 : 0.0;
    phases = phase_;
  }
  // One all-reduce of two scalars per step.
  TP_RETURN_IF_ERROR(comm_->AllReduceSum(stats, 2, DType::kF64));
  StepResult result;
  result.loss_scale = scaler_.scale();
  const float inv_scale = 1.0f / scaler_.scale();
  result.grad_norm = std::sqrt(stats[0]) * inv_scale;
  for (Phase p : phases) result.blocks_without_grad += p == Phase::kIdle;
  const bool nonfinite = stats[1] > 0;
  const bool skip = deferred_ ? scaler_.Update(nonfinite) : false;
  ++iterations_;
  if (!deferred_) {
    for (Phase p : phases) result.blocks_updated += p == Phase::kUpdated;
  } else if (!skip) {
    const float scale =
        kernels::ClipGradScale(stats[0], inv_scale, options_.max_grad_norm);
    for (size_t b = 0; b < phases.size(); ++b) {
      if (phases[b] != Phase::kReduced) continue;
      std::vector<float> g;
      {
        absl::MutexLock lock(&mu_);
        g = std::move(grad_shards_[b]);
      }
      if (absl::Status s = Update(static_cast<int>(b), g, scale); !s.ok()) {
        absl::MutexLock lock(&mu_);
        ResetLocked();
        return s;
      }
      ++result.blocks_updated;
    }
  }
  if (skip) {
    // The skipped blocks' parameter memory holds their gradients: put
    // the parameters back from the (unchanged) master shards.
    for (size_t b = 0; b < phases.size(); ++b) {
      if (phases[b] != Phase::kReduced) continue;
      if (absl::Status s = ParamsFromMaster(blocks_[b]); !s.ok()) {
        absl::MutexLock lock(&mu_);
        ResetLocked();
        return s;
      }
    }
  }
  result.applied = !skip;
  if (!skip) ++step_;
  result.step = step_;
  absl::MutexLock lock(&mu_);
  result.blocks_on_device = on_device_;
  result.blocks_on_host = on_host_;
  ResetLocked();
  return result;
}

void ShardedAdamW::Impl::ResetLocked() {
  std::fill(phase_.begin(), phase_.end(), Phase::kIdle);
  for (auto& g : grad_shards_) std::vector<float>().swap(g);
  sum_squares_ = 0;
  nonfinite_ = false;
  chunk_left_ = chunk_blocks_;
  on_device_ = on_host_ = 0;
}

}  // namespace tidepool
