// ShardedAdamW::Impl's gradient pipeline (sharded_adamw_impl.h describes it
// per block): a block's report, the worker thread that takes reported
// blocks in report order, and steps 1 and 2, the gradient read and the
// reduce-scatter with the step's statistics (step 3, the update, is in
// sharded_adamw_step.cc).
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "client/src/optim/sharded_adamw_impl.h"
#include "kernels/cpu/convert.h"
#include "kernels/cpu/grad_stats.h"

namespace tidepool {

namespace {

absl::Status TwiceError(int block) {
  return absl::FailedPreconditionError(
      absl::StrCat("optimizer: block ", block, " reported twice in one step"));
}

}  // namespace

absl::Status ShardedAdamW::Impl::ReadGradient(const Work& w,
                                              std::vector<float>& full) {
  const Block& blk = blocks_[w.block];
  auto kt = KernelType(w.grad_dtype);
  if (!kt.ok()) return kt.status();
  full.assign(blk.shard * comm_->world(), 0.0f);
  return ReadTensor(w.grad_tensor, [&](const void* src, uint64_t bytes) {
    if (bytes != blk.param.count * DTypeSize(w.grad_dtype)) {
      return GradSizeError(w, bytes);
    }
    return kernels::CpuConvertToF32(src, *kt, full.data(), blk.param.count);
  });
}

absl::Status ShardedAdamW::Impl::Reduce(Work& w) {
  Block& blk = blocks_[w.block];
  std::vector<float> full = std::move(w.full);
  if (full.empty()) TP_RETURN_IF_ERROR(ReadGradient(w, full));
  std::vector<float> shard(blk.shard);
  TP_RETURN_IF_ERROR(comm_->ReduceScatterSum(full.data(), shard.data(),
                                             blk.shard, DType::kF32));
  auto st =
      kernels::CpuGradStats(shard.data(), kernels::DType::kF32, blk.shard);
  if (!st.ok()) return st.status();
  {
    absl::MutexLock lock(&mu_);
    sum_squares_ += st->sum_squares;
    nonfinite_ |= !st->all_finite;
    grad_shards_[w.block] = std::move(shard);
    phase_[w.block] = Phase::kReduced;
  }
  if (!deferred_) {
    std::vector<float> g;
    {
      absl::MutexLock lock(&mu_);
      g = std::move(grad_shards_[w.block]);
    }
    TP_RETURN_IF_ERROR(Update(w.block, g, 1.0f));
    absl::MutexLock lock(&mu_);
    phase_[w.block] = Phase::kUpdated;
  }
  return absl::OkStatus();
}

absl::Status ShardedAdamW::Impl::GradSizeError(const Work& w,
                                               uint64_t bytes) const {
  const ParamBlock& p = blocks_[w.block].param;
  return absl::InvalidArgumentError(
      absl::StrCat("optimizer: gradient tensor ", w.grad_tensor, " of block ",
                   w.block, " has ", bytes, " bytes; the block's ", p.count,
                   " elements of dtype ", static_cast<int>(w.grad_dtype),
                   " need ", p.count * DTypeSize(w.grad_dtype)));
}

absl::Status ShardedAdamW::Impl::Report(int block, uint64_t grad_tensor,
                                        DType grad_dtype) {
  if (block < 0 || block >= static_cast<int>(blocks_.size())) {
    return absl::OutOfRangeError(absl::StrCat("optimizer: no block ", block));
  }
  if (grad_tensor == 0) {  // the gradient is in the parameter's memory
    grad_tensor = blocks_[block].param.tensor_id;
    grad_dtype = blocks_[block].param.dtype;
  }
  Work w{block, grad_tensor, grad_dtype, {}};
  if (grad_tensor != blocks_[block].param.tensor_id) {
    {
      absl::MutexLock lock(&mu_);
      if (phase_[block] != Phase::kIdle) return TwiceError(block);
    }
    // A separate gradient tensor is read now, on the caller's thread:
    // the trainer may write other gradient tensors of its chunk next,
    // which a later read in the worker would collide with. A wrong one
    // fails here, so nothing is reduced or updated.
    TP_RETURN_IF_ERROR(ReadGradient(w, w.full));
  }
  {
    absl::MutexLock lock(&mu_);
    if (phase_[block] != Phase::kIdle) return TwiceError(block);
    phase_[block] = Phase::kQueued;
    --chunk_left_[blocks_[block].chunk];
    if (options_.overlap) {
      queue_.push_back(std::move(w));
      return absl::OkStatus();
    }
  }
  absl::Status s = Reduce(w);
  if (!s.ok()) {
    absl::MutexLock lock(&mu_);
    if (error_.ok()) error_ = s;
  }
  return s;
}

bool ShardedAdamW::Impl::HasWorkOrStop() const {
  if (stop_) return true;
  if (queue_.empty()) return false;
  return flush_ || chunk_left_[blocks_[queue_.front().block].chunk] == 0;
}

bool ShardedAdamW::Impl::Idle() const { return queue_.empty() && !busy_; }

void ShardedAdamW::Impl::WorkerLoop() {
  for (;;) {
    Work w;
    {
      absl::MutexLock lock(&mu_);
      mu_.Await(absl::Condition(this, &Impl::HasWorkOrStop));
      if (stop_) return;
      w = std::move(queue_.front());
      busy_ = true;
      queue_.pop_front();
      if (!error_.ok()) {  // after an error: drain without working
        busy_ = false;
        continue;
      }
    }
    absl::Status s = Reduce(w);
    absl::MutexLock lock(&mu_);
    if (!s.ok() && error_.ok()) error_ = s;
    busy_ = false;
  }
}

void ShardedAdamW::Impl::Drain() {
  absl::MutexLock lock(&mu_);
  flush_ = true;
  mu_.Await(absl::Condition(this, &Impl::Idle));
  flush_ = false;
}

}  // namespace tidepool
