// ShardedAdamW: the ZeRO-style mixed-precision AdamW of libtidepool. Each
// rank owns 1/world of every parameter block's fp32 master weights and Adam
// moments, registered as tidepool tensors (groups kMaster and kOptimState,
// so they have a host home and page like everything else). Backward leaves
// a block's gradient in the block's own parameter memory (or in a separate
// gradient tensor when accumulating micro-batches) and calls
// OnGradientsReady(block); once backward is done with the block's chunk, a
// worker thread reduce-scatters it across ranks and, while backward goes on
// with other chunks, updates this rank's shard where the session's policy
// places it (GPU or CPU AdamW, Session::AcquireWherePlaced) and all-gathers
// the new low-precision parameters back into the parameter tensor. Step()
// waits for the pipeline and finishes the step.
//
//   // Each block: one parameter tensor the trainer registered (kParam).
//   std::vector<tidepool::ParamBlock> blocks = {
//       {w0.id, n0, DType::kBF16, w0.chunk_id}, ..};
//   auto opt = tidepool::ShardedAdamW::Create(session, comm, blocks,
//                                             {.lr = 1e-3f});
//   (*opt)->InitFromParams();             // master = float(param)
//   for (...) {
//     forward; loss *= (*opt)->loss_scale();
//     for (b = last; b >= 0; --b) {       // backward, block by block
//       acquire b, write its gradient over its parameters, release;
//       (*opt)->OnGradientsReady(b);      // reduce + update start now
//     }
//     absl::StatusOr<tidepool::StepResult> r = (*opt)->Step();
//   }
//   (*opt)->SaveCheckpoint("/ckpt/step100");  // this rank's shards only
//
// Semantics (docs/optimizer.md): results equal torch.optim.AdamW on the
// summed gradient (no staleness). fp16 parameters use dynamic loss scaling
// and skip steps whose gradients overflow; bf16 and fp32 use none. Global
// norm clipping (max_grad_norm > 0) and loss scaling need the whole
// gradient's norm, so then the update waits for Step() (one all-reduce of
// two scalars per step, never a host sync per block); otherwise each
// block updates as soon as it is reduced. A block that got no gradient in
// a step is left untouched, like a torch parameter whose grad is None (its
// own Adam step count does not advance). All ranks must report the same
// blocks in the same order, and issue their own collectives on `comm` only
// between Step() and the next OnGradientsReady() (the worker uses it in
// between). After reporting every block of a parameter chunk, the trainer
// leaves that chunk's tensors alone until Step() (the worker may be using
// them in the host homes, and the daemon computes on a chunk in one place
// at a time). The worker never makes plain device acquires, so the op
// sequence an `auto` session traces is the trainer's alone. Errors are
// absl::Status; nothing throws.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "tidepool/communicator.h"
#include "tidepool/session.h"
#include "tidepool/types.h"

namespace tidepool {

// fp16 dynamic loss scaling (torch.cuda.amp.GradScaler's rule): multiply
// the loss by scale(); after a step whose gradients overflowed, halve the
// scale and skip the step; after growth_interval good steps in a row,
// double it.
struct LossScalerOptions {
  bool dynamic = false;  // false: scale() is always 1
  float init_scale = 65536.0f;
  float growth_factor = 2.0f;
  float backoff_factor = 0.5f;
  int growth_interval = 2000;
  float min_scale = 1.0f;
};

class LossScaler {
 public:
  explicit LossScaler(const LossScalerOptions& options = {});
  float scale() const { return scale_; }
  int good_steps() const { return good_steps_; }
  // Records one step's outcome; returns true when the step must be skipped.
  bool Update(bool found_nonfinite);
  void Restore(float scale, int good_steps);

 private:
  LossScalerOptions options_;
  float scale_;
  int good_steps_ = 0;
};

// One parameter tensor the optimizer updates: `count` elements of dtype
// kBF16, kF16 or kF32, registered by the trainer (group kParam).
struct ParamBlock {
  uint64_t tensor_id = 0;
  size_t count = 0;
  DType dtype = DType::kBF16;
  // The tensor's chunk (TensorInfo::chunk_id from Session::Register). The
  // worker reads gradients and writes parameters in the host homes or on
  // the device, as the session places them, and the daemon lets a chunk be
  // computed on in one place at a time: so a block's pipeline starts once
  // every block of its chunk has been reported (backward is done with the
  // chunk). 0 (unknown): all such blocks count as one chunk, which is safe
  // but starts their pipelines only when all of them have been reported.
  uint64_t chunk_id = 0;
};

struct ShardedAdamWOptions {
  float lr = 1e-3f;
  float beta1 = 0.9f;
  float beta2 = 0.999f;
  float eps = 1e-8f;
  float weight_decay = 0.0f;
  float max_grad_norm = 0.0f;  // <= 0: no clipping
  // Dynamic scaling is forced on for fp16 blocks and off otherwise, unless
  // loss_scale.dynamic is set explicitly to true.
  LossScalerOptions loss_scale;
  // false: no worker thread; OnGradientsReady reduces and updates inline.
  bool overlap = true;
};

struct StepResult {
  bool applied = false;  // false: skipped (fp16 overflow)
  double grad_norm = 0;  // global L2 norm of the unscaled gradient
  float loss_scale = 1;  // the scale this step's loss was multiplied by
  int64_t step = 0;      // applied steps so far
  int blocks_updated = 0;
  int blocks_without_grad = 0;
  // Where this step's block updates ran, as the session's policy placed
  // them (Session::AcquireWherePlaced): on the device (GPU AdamW; on the
  // sim backend the same CPU kernel over the device pool) or in the host
  // homes (CPU AdamW). They sum to blocks_updated.
  int blocks_on_device = 0;
  int blocks_on_host = 0;
};

class ShardedAdamW {
 public:
  // Registers this rank's master/m/v shards (all blocks' masters, then m
  // and v interleaved, so the daemon packs them into chunks paired with the
  // parameter chunks). `session` and `comm` must outlive the optimizer.
  static absl::StatusOr<std::unique_ptr<ShardedAdamW>> Create(
      Session* session, Communicator* comm, std::vector<ParamBlock> blocks,
      const ShardedAdamWOptions& options);
  ~ShardedAdamW();

  ShardedAdamW(const ShardedAdamW&) = delete;
  ShardedAdamW& operator=(const ShardedAdamW&) = delete;

  // master shard = float(parameter), m = v = 0. Call once the parameter
  // tensors hold their initial values (the same on every rank).
  absl::Status InitFromParams();
  // Or, per block: master shard = this rank's part of `values` (all
  // `count` elements of the block in fp32, e.g. the original weights of a
  // bf16 parameter, so no precision is lost to the cast), m = v = 0. Call
  // between Create and the first OnGradientsReady, for every block.
  absl::Status InitFromValues(int block, std::span<const float> values);

  // Backward is done with `block`: its gradient (the block's dtype, in the
  // parameter tensor's own memory) may be reduced and consumed. The tensor
  // must be released (not COMPUTE) by the caller.
  absl::Status OnGradientsReady(int block);
  // Same, with the gradient in a separate tensor (e.g. a kGrad tensor
  // accumulated over micro-batches) of `count` elements of grad_dtype. The
  // gradient is read here, on the caller's thread (which must hold no
  // tensor of that tensor's chunk), so the trainer may go on writing other
  // gradient tensors of the same chunk.
  absl::Status OnGradientsReady(int block, uint64_t grad_tensor,
                                DType grad_dtype);

  // Waits for every reported block, then finishes the step: clipping,
  // overflow check, the deferred updates, the loss scaler. Blocks not
  // reported since the last Step() are left unchanged.
  absl::StatusOr<StepResult> Step();

  // Multiply the loss by this before backward (1 unless fp16).
  float loss_scale() const;
  // The learning rate of the updates that start after this call (for a
  // schedule): call it between Step() and the next OnGradientsReady().
  absl::Status SetLearningRate(float lr);
  float learning_rate() const;
  int64_t step() const;        // applied steps
  int64_t iterations() const;  // Step() calls, applied or skipped
  int num_blocks() const;

  // Writes/reads `dir`/optimizer-rank<r>-of-<w>.tpck: this rank's shards,
  // the step counters and the loss scaler. Load accepts a checkpoint saved
  // by any world size (each rank reads the parts of the saved shards that
  // overlap its own), rebuilds the parameter tensors from the master
  // shards (an all-gather), so training resumes bit-identically. All ranks
  // call both; a load error is returned on every rank (docs/optimizer.md).
  absl::Status SaveCheckpoint(absl::string_view dir);
  absl::Status LoadCheckpoint(absl::string_view dir);

  class Impl;

 private:
  explicit ShardedAdamW(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace tidepool
