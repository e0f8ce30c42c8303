// ShardedAdamW::Impl, the optimizer behind the facade in tidepool/optimizer.h
// (see docs/optimizer.md). Internal to tidepool_optim: one class, defined in
// several files, each with one job:
//   sharded_adamw_init.cc        setup: blocks, shards, registration, and
//                                the masters' initial values;
//   sharded_adamw_tensors.cc     host access to the tensors where the
//                                session places them;
//   sharded_adamw_pipeline.cc    reports, the worker thread, the
//                                reduce-scatter (steps 1 and 2 below);
//   sharded_adamw_step.cc        Step() and the AdamW update (step 3);
//   sharded_adamw_checkpoint.cc  save and load.
//
// Per block b, with W ranks and n elements: shard = ceil(n / W); rank r
// owns elements [r * shard, r * shard + shard) of the zero-padded block.
// The gradient pipeline per block, run by one worker thread in report
// order (so every rank issues the same collectives in the same order),
// each block once backward is done with its parameter chunk:
//   1. read the gradient (placed acquire, read), widen to fp32 into a
//      padded buffer; a separate gradient tensor is read at the report;
//   2. reduce-scatter (sum) to this rank's fp32 shard; sum of squares and
//      finiteness of the shard for the step's statistics;
//   3. now, or at Step() when clipping/loss scaling need the global norm:
//      acquire master/m/v where the session places the update, AdamW there
//      (FusedAdamW on a cuda device, CpuAdamW otherwise; both also write
//      the bf16/fp16 shard), release; all-gather the low-precision shards;
//      write them into the parameter tensor (placed acquire, read-write).
// Every acquire is a placed one (Session::AcquireWherePlaced): never part
// of the op sequence an `auto` session traces, so the worker may run
// beside the trainer's ops without disturbing the plan, and under `cuda`
// (no host homes) and `cpu` alike.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <iosfwd>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "common/status_macros.h"
#include "kernels/cpu/adamw.h"
#include "kernels/cpu/dtype.h"
#include "tidepool/optimizer.h"
#ifdef TIDEPOOL_HAVE_CUDA
#include <cuda_runtime_api.h>

#include "kernels/cuda/descriptors.h"
#endif

namespace tidepool {

class ShardedAdamW::Impl {
 public:
  struct Block {
    ParamBlock param;
    size_t shard = 0;  // elements per rank
    size_t begin = 0;  // first element this rank owns
    size_t valid = 0;  // of them, inside the real block
    uint64_t master = 0, m = 0, v = 0;
    int64_t steps = 0;  // this block's applied Adam steps
    int chunk = 0;      // index into chunk_blocks_ (its parameter chunk)
  };
  enum class Phase { kIdle, kQueued, kReduced, kUpdated };
  struct Work {
    int block = 0;
    uint64_t grad_tensor = 0;
    DType grad_dtype = DType::kF32;
    // The padded fp32 gradient, when already read (a separate gradient
    // tensor is read at the report); empty: read it from grad_tensor.
    std::vector<float> full;
  };

  // ---- setup (sharded_adamw_init.cc) ----

  Impl(Session* session, Communicator* comm,
       const ShardedAdamWOptions& options);
  ~Impl();

  // The kernels' dtype for a parameter or gradient dtype (f32, f16, bf16).
  static absl::StatusOr<kernels::DType> KernelType(DType d);

  absl::Status Init(std::vector<ParamBlock> params);
  absl::Status InitFromParams();
  // master shard = this rank's part of `values` (the whole block), m = v = 0.
  absl::Status InitBlock(Block& blk, const float* values);
  absl::Status InitFromValues(int b, const float* values, size_t count);

  // ---- host access to acquired tensors: host and sim directly, a cuda
  // device staged (sharded_adamw_tensors.cc; the templates are below the
  // class) ----

  // Whether an acquired tensor is device memory the CPU cannot touch.
  bool Staged(const PlacedTensors& got) const { return got.on_device && cuda_; }

  absl::Status ToHost(const AcquiredTensor& t, void* dst, size_t bytes);
  absl::Status FromHost(const AcquiredTensor& t, const void* src, size_t bytes);

  // Runs fn(const void* bytes, uint64_t size) over tensor `id`, read where
  // the session places it: host homes or sim device memory directly, a
  // cuda device through a host copy. A placed acquire, not an op, so this
  // is safe from the worker thread under `auto`.
  template <typename F>
  absl::Status ReadTensor(uint64_t id, F&& fn);

  // Overwrites the first `bytes` of tensor `id` with `src`, where the
  // session places it.
  absl::Status WriteTensor(uint64_t id, const void* src, size_t bytes);

  // Runs fn(master, m, v) on block b's shards in host memory, outside the
  // update (init, checkpoints, parameters from masters): acquired where the
  // session places them, through host copies on a cuda device.
  template <typename F>
  absl::Status WithState(const Block& blk, bool modify, F&& fn);

  // Writes the all-gathered low-precision shards (shard_param: this rank's
  // `shard` elements of the block's dtype) into the parameter tensor.
  absl::Status GatherParams(const Block& blk,
                            const std::vector<char>& shard_param);

  // Parameter tensor = all-gathered round(master shard).
  absl::Status ParamsFromMaster(const Block& blk);

  // ---- the pipeline (sharded_adamw_pipeline.cc) ----

  // The padded fp32 gradient of w's block from w's gradient tensor.
  absl::Status ReadGradient(const Work& w, std::vector<float>& full);
  absl::Status Reduce(Work& w);
  absl::Status GradSizeError(const Work& w, uint64_t bytes) const;
  absl::Status Report(int block, uint64_t grad_tensor, DType grad_dtype);

  // The worker takes blocks in report order (the collectives' order on
  // every rank), each once every block of its parameter chunk has been
  // reported (backward is done with the chunk, so reading and writing it
  // where the session places it cannot collide with the trainer's device
  // acquires), or when Step() or a checkpoint drains the pipeline.
  bool HasWorkOrStop() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  bool Idle() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void WorkerLoop();
  void Drain();

  // ---- the step and the update (sharded_adamw_step.cc) ----

  // AdamW on the CPU over host or sim-device memory; writes the new
  // low-precision shard (fp32: the master) into shard_param.
  absl::Status CpuUpdate(const Block& blk, const kernels::AdamWParams& p,
                         float* master, float* m, float* v,
                         const std::vector<float>& grad,
                         std::vector<char>& shard_param);

#ifdef TIDEPOOL_HAVE_CUDA
  // This thread on the session's GPU; the first call also creates the
  // update stream and the scratch buffers (the largest shard's fp32
  // gradient and low-precision output, one chunk descriptor).
  absl::Status CudaReady();

  // GPU AdamW (FusedAdamW) on device-resident master/m/v, on stream_, which
  // the placed acquire ordered after the shards' arrival: the gradient shard
  // goes up, the new low-precision shard (fp32: the master) comes back.
  absl::Status CudaUpdate(const Block& blk, const kernels::AdamWParams& p,
                          float* master, float* m, float* v,
                          const std::vector<float>& grad,
                          std::vector<char>& shard_param);
#endif

  // One AdamW step of block b's shard where the session places it: on the
  // device (GPU AdamW on cuda; on sim, whose device pool the CPU can
  // address, the same CPU kernel, so results do not depend on placement)
  // or in the host homes (CPU AdamW). Then the all-gather and the
  // parameter write.
  absl::Status Update(int b, const std::vector<float>& grad, float scale);

  absl::StatusOr<StepResult> Step();
  void ResetLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // ---- checkpoints (sharded_adamw_checkpoint.cc, which describes the
  // file) ----

  struct SavedHeader;  // one saved file's header

  absl::Status Save(absl::string_view dir);
  // The world size that saved `dir`, from its file names.
  absl::StatusOr<int> SavedWorld(absl::string_view dir) const;
  // Reads and checks one saved file's header against this optimizer.
  absl::StatusOr<SavedHeader> ReadHeader(std::ifstream& in,
                                         const std::string& path, int rank,
                                         int world) const;
  // Loads a checkpoint saved by any world size. Every rank checks every
  // saved file's header (so all ranks agree on success before any state
  // changes: a failure is all-reduced), then reads only the ranges of the
  // saved shards that overlap its own, and rebuilds the parameters.
  absl::Status Load(absl::string_view dir);
  // Every rank returns an error if any rank has one (one all-reduce), so no
  // rank goes on into collectives the others skip.
  absl::Status AgreeOrFail(const absl::Status& local, const char* what);
  // This rank's master/m/v shard of block b from the saved shards that
  // overlap it; the padding past the block's end is zero.
  absl::Status LoadBlock(absl::string_view dir, int b, int saved_world,
                         const std::vector<SavedHeader>& headers,
                         std::vector<std::ifstream>& files);

  float loss_scale() const { return scaler_.scale(); }
  void set_lr(float lr) { lr_.store(lr, std::memory_order_relaxed); }
  float lr() const { return lr_.load(std::memory_order_relaxed); }
  int64_t step() const { return step_; }
  int64_t iterations() const { return iterations_; }
  int num_blocks() const { return static_cast<int>(blocks_.size()); }

 private:
  Session* const session_;
  Communicator* const comm_;
  const ShardedAdamWOptions options_;
  // The learning rate of the next updates (SetLearningRate): read by the
  // worker, written between steps.
  std::atomic<float> lr_{0};
  const bool cuda_;
  // Written by Init, then touched by one thread at a time: the worker
  // between a block's report and Drain(), the caller otherwise.
  std::vector<Block> blocks_;
  std::vector<int> chunk_blocks_;  // blocks per parameter chunk
  size_t max_shard_ = 0;
  LossScaler scaler_;
  bool deferred_ = false;
  int64_t step_ = 0;
  int64_t iterations_ = 0;

  absl::Mutex mu_;
  std::deque<Work> queue_ ABSL_GUARDED_BY(mu_);
  bool busy_ ABSL_GUARDED_BY(mu_) = false;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  absl::Status error_ ABSL_GUARDED_BY(mu_);
  std::vector<Phase> phase_ ABSL_GUARDED_BY(mu_);
  std::vector<std::vector<float>> grad_shards_ ABSL_GUARDED_BY(mu_);
  double sum_squares_ ABSL_GUARDED_BY(mu_) = 0;
  bool nonfinite_ ABSL_GUARDED_BY(mu_) = false;
  // Blocks of each parameter chunk not yet reported this step.
  std::vector<int> chunk_left_ ABSL_GUARDED_BY(mu_);
  bool flush_ ABSL_GUARDED_BY(mu_) = false;  // Drain(): take every block
  // This step's updates placed on the device / in the host homes.
  int on_device_ ABSL_GUARDED_BY(mu_) = 0;
  int on_host_ ABSL_GUARDED_BY(mu_) = 0;
#ifdef TIDEPOOL_HAVE_CUDA
  // GPU AdamW: made on first use (CudaReady), then read-only.
  absl::Mutex cuda_mu_;
  bool cuda_ready_ = false;
  int cuda_ordinal_ = 0;
  cudaStream_t stream_ = nullptr;
  float* grad_dev_ = nullptr;
  void* out_dev_ = nullptr;
  kernels::AdamWChunk* chunk_dev_ = nullptr;
#endif
  std::thread worker_;
};

// The host-access templates, here for every file that calls them.

template <typename F>
absl::Status ShardedAdamW::Impl::ReadTensor(uint64_t id, F&& fn) {
  auto got = session_->AcquireWherePlaced({&id, 1}, AccessMode::kRead);
  if (!got.ok()) return got.status();
  const AcquiredTensor& t = got->tensors[0];
  absl::Status s;
  if (Staged(*got)) {
    std::vector<char> staged(t.bytes);
    s = ToHost(t, staged.data(), staged.size());
    if (s.ok()) s = fn(static_cast<const void*>(staged.data()), t.bytes);
  } else {
    s = fn(static_cast<const void*>(t.data), t.bytes);
  }
  absl::Status r = session_->Release({&id, 1}, TensorState::kHold);
  return s.ok() ? r : s;
}

template <typename F>
absl::Status ShardedAdamW::Impl::WithState(const Block& blk, bool modify,
                                           F&& fn) {
  const uint64_t ids[3] = {blk.master, blk.m, blk.v};
  auto got = session_->AcquireWherePlaced(
      ids, modify ? AccessMode::kReadWrite : AccessMode::kRead);
  if (!got.ok()) return got.status();
  float* ptr[3];
  std::vector<float> staged;
  absl::Status s;
  if (Staged(*got)) {
    staged.resize(3 * blk.shard);
    for (int k = 0; k < 3 && s.ok(); ++k) {
      ptr[k] = staged.data() + k * blk.shard;
      s = ToHost(got->tensors[k], ptr[k], blk.shard * sizeof(float));
    }
  } else {
    for (int k = 0; k < 3; ++k) {
      ptr[k] = static_cast<float*>(got->tensors[k].data);
    }
  }
  if (s.ok()) s = fn(ptr[0], ptr[1], ptr[2]);
  if (s.ok() && modify && Staged(*got)) {
    for (int k = 0; k < 3 && s.ok(); ++k) {
      s = FromHost(got->tensors[k], ptr[k], blk.shard * sizeof(float));
    }
  }
  absl::Status r = session_->Release(ids, TensorState::kHold);
  return s.ok() ? r : s;
}

}  // namespace tidepool
