// ShardedAdamW (see tidepool/optimizer.h and docs/optimizer.md).
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
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <deque>
#include <filesystem>
#include <fstream>
#include <regex>
#include <set>
#include <thread>
#include <unordered_map>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "kernels/cpu/adamw.h"
#include "kernels/cpu/convert.h"
#include "kernels/cpu/grad_stats.h"
#include "tidepool/optimizer.h"
#ifdef TIDEPOOL_HAVE_CUDA
#include <cuda_runtime_api.h>

#include "common/cuda/driver_api.h"
#include "kernels/cuda/fused_adamw.h"
#endif

namespace tidepool {

// ---------------------------------------------------------------- scaler

LossScaler::LossScaler(const LossScalerOptions& options)
    : options_(options), scale_(options.dynamic ? options.init_scale : 1.0f) {}

bool LossScaler::Update(bool found_nonfinite) {
  if (!options_.dynamic) return found_nonfinite;
  if (found_nonfinite) {
    scale_ = std::max(options_.min_scale, scale_ * options_.backoff_factor);
    good_steps_ = 0;
    return true;
  }
  if (++good_steps_ >= options_.growth_interval) {
    const float grown = scale_ * options_.growth_factor;
    if (std::isfinite(grown)) scale_ = grown;
    good_steps_ = 0;
  }
  return false;
}

void LossScaler::Restore(float scale, int good_steps) {
  scale_ = scale;
  good_steps_ = good_steps;
}

// ---------------------------------------------------------------- impl

namespace {

absl::StatusOr<kernels::DType> KernelType(DType d) {
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

#define TP_RETURN_IF_ERROR_(expr)                      \
  do {                                                 \
    if (absl::Status s_ = (expr); !s_.ok()) return s_; \
  } while (0)

constexpr char kMagic[8] = {'T', 'P', 'O', 'P', 'T', 'C', 'K', '1'};
constexpr uint32_t kCheckpointVersion = 2;

}  // namespace

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

  Impl(Session* session, Communicator* comm, const ShardedAdamWOptions& options)
      : session_(session),
        comm_(comm),
        options_(options),
        cuda_(session->device().backend == "cuda") {}

  ~Impl() {
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

  absl::Status Init(std::vector<ParamBlock> params) {
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
    TP_RETURN_IF_ERROR_(kernels::ValidateAdamWParams(check));
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

  // ---- host access to acquired tensors (host, sim: direct; cuda device:
  // staged) ----

  // Whether an acquired tensor is device memory the CPU cannot touch.
  bool Staged(const PlacedTensors& got) const { return got.on_device && cuda_; }

  absl::Status ToHost(const AcquiredTensor& t, void* dst, size_t bytes) {
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
  absl::Status FromHost(const AcquiredTensor& t, const void* src,
                        size_t bytes) {
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

  // Runs fn(const void* bytes, uint64_t size) over tensor `id`, read where
  // the session places it: host homes or sim device memory directly, a
  // cuda device through a host copy. A placed acquire, not an op, so this
  // is safe from the worker thread under `auto`.
  template <typename F>
  absl::Status ReadTensor(uint64_t id, F&& fn) {
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

  // Overwrites the first `bytes` of tensor `id` with `src`, where the
  // session places it.
  absl::Status WriteTensor(uint64_t id, const void* src, size_t bytes) {
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

  // Runs fn(master, m, v) on block b's shards in host memory, outside the
  // update (init, checkpoints, parameters from masters): acquired where the
  // session places them, through host copies on a cuda device.
  template <typename F>
  absl::Status WithState(const Block& blk, bool modify, F&& fn) {
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

  // Writes the all-gathered low-precision shards (shard_param: this rank's
  // `shard` elements of the block's dtype) into the parameter tensor.
  absl::Status GatherParams(const Block& blk,
                            const std::vector<char>& shard_param) {
    const size_t es = DTypeSize(blk.param.dtype);
    std::vector<char> full(blk.shard * comm_->world() * es);
    TP_RETURN_IF_ERROR_(comm_->AllGather(shard_param.data(), full.data(),
                                         blk.shard, blk.param.dtype));
    return WriteTensor(blk.param.tensor_id, full.data(), blk.param.count * es);
  }

  // ---- the pipeline ----

  // The padded fp32 gradient of w's block from w's gradient tensor.
  absl::Status ReadGradient(const Work& w, std::vector<float>& full) {
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

  absl::Status Reduce(Work& w) {
    Block& blk = blocks_[w.block];
    std::vector<float> full = std::move(w.full);
    if (full.empty()) TP_RETURN_IF_ERROR_(ReadGradient(w, full));
    std::vector<float> shard(blk.shard);
    TP_RETURN_IF_ERROR_(comm_->ReduceScatterSum(full.data(), shard.data(),
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
      TP_RETURN_IF_ERROR_(Update(w.block, g, 1.0f));
      absl::MutexLock lock(&mu_);
      phase_[w.block] = Phase::kUpdated;
    }
    return absl::OkStatus();
  }

  // AdamW on the CPU over host or sim-device memory; writes the new
  // low-precision shard (fp32: the master) into shard_param.
  absl::Status CpuUpdate(const Block& blk, const kernels::AdamWParams& p,
                         float* master, float* m, float* v,
                         const std::vector<float>& grad,
                         std::vector<char>& shard_param) {
    if (blk.param.dtype == DType::kF32) {
      TP_RETURN_IF_ERROR_(kernels::CpuAdamW(p, master, m, v, grad.data(),
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
  static absl::Status Cuda(cudaError_t e, const char* what) {
    if (e == cudaSuccess) return absl::OkStatus();
    return absl::InternalError(absl::StrCat("optimizer: ", what, ": ",
                                            cudaGetErrorName(e), ": ",
                                            cudaGetErrorString(e)));
  }

  // This thread on the session's GPU; the first call also creates the
  // update stream and the scratch buffers (the largest shard's fp32
  // gradient and low-precision output, one chunk descriptor).
  absl::Status CudaReady() {
    absl::MutexLock lock(&cuda_mu_);
    if (!cuda_ready_) {
      auto ordinal = cuda::OrdinalOfUuid(session_->device().uuid);
      if (!ordinal.ok()) return ordinal.status();
      cuda_ordinal_ = *ordinal;
    }
    TP_RETURN_IF_ERROR_(Cuda(cudaSetDevice(cuda_ordinal_), "cudaSetDevice"));
    if (cuda_ready_) return absl::OkStatus();
    // Create everything, then publish: a failure leaves nothing half made
    // for the destructor (what was made is freed here).
    cudaStream_t stream = nullptr;
    void *grad = nullptr, *out = nullptr, *chunk = nullptr;
    absl::Status s = Cuda(
        cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "stream");
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

  // GPU AdamW (FusedAdamW) on device-resident master/m/v, on stream_, which
  // the placed acquire ordered after the shards' arrival: the gradient shard
  // goes up, the new low-precision shard (fp32: the master) comes back.
  absl::Status CudaUpdate(const Block& blk, const kernels::AdamWParams& p,
                          float* master, float* m, float* v,
                          const std::vector<float>& grad,
                          std::vector<char>& shard_param) {
    const bool f32 = blk.param.dtype == DType::kF32;
    const size_t es = DTypeSize(blk.param.dtype);
    TP_RETURN_IF_ERROR_(
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
    TP_RETURN_IF_ERROR_(Cuda(cudaMemcpyAsync(chunk_dev_, &chunk, sizeof(chunk),
                                             cudaMemcpyHostToDevice, stream_),
                             "descriptor upload"));
    // param_dtype must be f16/bf16 even when nothing is written (fp32).
    TP_RETURN_IF_ERROR_(kernels::FusedAdamW(
        p, chunk_dev_, 1, kernels::DType::kF32,
        f32 ? kernels::DType::kBF16 : *KernelType(blk.param.dtype),
        /*grad_scale_dev=*/nullptr, /*skip_dev=*/nullptr, stream_));
    TP_RETURN_IF_ERROR_(
        Cuda(cudaMemcpyAsync(shard_param.data(), f32 ? master : out_dev_,
                             blk.shard * es, cudaMemcpyDeviceToHost, stream_),
             "parameter download"));
    return Cuda(cudaStreamSynchronize(stream_), "cudaStreamSynchronize");
  }
#endif

  // One AdamW step of block b's shard where the session places it: on the
  // device (GPU AdamW on cuda; on sim, whose device pool the CPU can
  // address, the same CPU kernel, so results do not depend on placement)
  // or in the host homes (CPU AdamW). Then the all-gather and the
  // parameter write.
  absl::Status Update(int b, const std::vector<float>& grad, float scale) {
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
      TP_RETURN_IF_ERROR_(CudaReady());
      stream = reinterpret_cast<CudaStream>(stream_);
    }
#endif
    const uint64_t ids[3] = {blk.master, blk.m, blk.v};
    auto got =
        session_->AcquireWherePlaced(ids, AccessMode::kReadWrite, stream);
    if (!got.ok()) return got.status();
    float* master = static_cast<float*>(got->tensors[0].data);
    float* m = static_cast<float*>(got->tensors[1].data);
    float* v = static_cast<float*>(got->tensors[2].data);
    absl::Status s;
    if (Staged(*got)) {
#ifdef TIDEPOOL_HAVE_CUDA
      // Not ordered after the arrival unless acquired on stream_ (a `cpu`
      // session is never placed on the device).
      s = stream == nullptr
              ? absl::InternalError(
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

  absl::Status GradSizeError(const Work& w, uint64_t bytes) const {
    const ParamBlock& p = blocks_[w.block].param;
    return absl::InvalidArgumentError(
        absl::StrCat("optimizer: gradient tensor ", w.grad_tensor, " of block ",
                     w.block, " has ", bytes, " bytes; the block's ", p.count,
                     " elements of dtype ", static_cast<int>(w.grad_dtype),
                     " need ", p.count * DTypeSize(w.grad_dtype)));
  }

  absl::Status Report(int block, uint64_t grad_tensor, DType grad_dtype) {
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
      TP_RETURN_IF_ERROR_(ReadGradient(w, w.full));
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

  static absl::Status TwiceError(int block) {
    return absl::FailedPreconditionError(absl::StrCat(
        "optimizer: block ", block, " reported twice in one step"));
  }

  // The worker takes blocks in report order (the collectives' order on
  // every rank), each once every block of its parameter chunk has been
  // reported (backward is done with the chunk, so reading and writing it
  // where the session places it cannot collide with the trainer's device
  // acquires), or when Step() or a checkpoint drains the pipeline.
  bool HasWorkOrStop() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (stop_) return true;
    if (queue_.empty()) return false;
    return flush_ || chunk_left_[blocks_[queue_.front().block].chunk] == 0;
  }
  bool Idle() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return queue_.empty() && !busy_;
  }

  void WorkerLoop() {
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

  void Drain() {
    absl::MutexLock lock(&mu_);
    flush_ = true;
    mu_.Await(absl::Condition(this, &Impl::Idle));
    flush_ = false;
  }

  absl::StatusOr<StepResult> Step() {
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
    TP_RETURN_IF_ERROR_(comm_->AllReduceSum(stats, 2, DType::kF64));
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

  void ResetLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    std::fill(phase_.begin(), phase_.end(), Phase::kIdle);
    for (auto& g : grad_shards_) std::vector<float>().swap(g);
    sum_squares_ = 0;
    nonfinite_ = false;
    chunk_left_ = chunk_blocks_;
    on_device_ = on_host_ = 0;
  }

  // Parameter tensor = all-gathered round(master shard).
  absl::Status ParamsFromMaster(const Block& blk) {
    const size_t es = DTypeSize(blk.param.dtype);
    std::vector<char> shard_param(blk.shard * es);
    TP_RETURN_IF_ERROR_(
        WithState(blk, false, [&](float* master, float*, float*) {
          if (blk.param.dtype == DType::kF32) {
            std::memcpy(shard_param.data(), master, blk.shard * 4);
            return absl::OkStatus();
          }
          return kernels::CpuConvertFromF32(master, shard_param.data(),
                                            *KernelType(blk.param.dtype),
                                            blk.shard);
        }));
    return GatherParams(blk, shard_param);
  }

  absl::Status InitFromParams() {
    for (Block& blk : blocks_) {
      std::vector<float> wide(blk.param.count);
      TP_RETURN_IF_ERROR_(
          ReadTensor(blk.param.tensor_id, [&](const void* src, uint64_t bytes) {
            if (bytes < blk.param.count * DTypeSize(blk.param.dtype)) {
              return absl::InternalError("optimizer: parameter tensor shrank");
            }
            return kernels::CpuConvertToF32(src, *KernelType(blk.param.dtype),
                                            wide.data(), blk.param.count);
          }));
      TP_RETURN_IF_ERROR_(InitBlock(blk, wide.data()));
    }
    return absl::OkStatus();
  }

  // master shard = this rank's part of `values` (the whole block), m = v = 0.
  absl::Status InitBlock(Block& blk, const float* values) {
    TP_RETURN_IF_ERROR_(
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

  absl::Status InitFromValues(int b, const float* values, size_t count) {
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

  // ---- checkpoints ----
  //
  // File (version 2): magic, version, rank, world, applied steps,
  // iterations, loss scale, good steps, block count; per block (count,
  // shard, dtype, the block's step count); an FNV-1a hash of all of that;
  // then per block this rank's fp32 master, m and v shards. Version 1 is
  // the same without the hash. Shards follow the saving world, so a rank
  // of another world reads, from every saved file, only the ranges that
  // overlap its own shard (file offsets follow from the block table).

  static std::string CheckpointPath(absl::string_view dir, int rank,
                                    int world) {
    return absl::StrCat(dir, "/optimizer-rank", rank, "-of-", world, ".tpck");
  }

  struct SavedHeader {
    uint32_t version = 0, nb = 0;
    int32_t rank = 0, world = 0, good = 0;
    int64_t step = 0, iterations = 0;
    float scale = 1;
    struct SavedBlock {
      uint64_t count = 0, shard = 0;
      int32_t dtype = 0;
      int64_t steps = 0;
    };
    std::vector<SavedBlock> blocks;
    uint64_t data_offset = 0;  // where block 0's master shard starts
  };

  static uint64_t Fnv1a(const std::string& bytes) {
    uint64_t h = 14695981039346656037ull;
    for (unsigned char c : bytes) h = (h ^ c) * 1099511628211ull;
    return h;
  }

  template <typename T>
  static void Append(std::string& out, const T& v) {
    out.append(reinterpret_cast<const char*>(&v), sizeof(v));
  }

  absl::Status Save(absl::string_view dir) {
    Drain();
    std::error_code ec;
    std::filesystem::create_directories(std::string(dir), ec);
    const std::string path = CheckpointPath(dir, comm_->rank(), comm_->world());
    const std::string tmp = path + ".tmp";
    std::string header(kMagic, sizeof(kMagic));
    Append(header, kCheckpointVersion);
    Append(header, static_cast<int32_t>(comm_->rank()));
    Append(header, static_cast<int32_t>(comm_->world()));
    Append(header, step_);
    Append(header, iterations_);
    Append(header, scaler_.scale());
    Append(header, static_cast<int32_t>(scaler_.good_steps()));
    Append(header, static_cast<uint32_t>(blocks_.size()));
    for (const Block& blk : blocks_) {
      Append(header, static_cast<uint64_t>(blk.param.count));
      Append(header, static_cast<uint64_t>(blk.shard));
      Append(header, static_cast<int32_t>(blk.param.dtype));
      Append(header, blk.steps);
    }
    Append(header, Fnv1a(header));
    {
      std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
      if (!out) return absl::PermissionDeniedError("cannot write " + tmp);
      out.write(header.data(), header.size());
      for (const Block& blk : blocks_) {
        TP_RETURN_IF_ERROR_(
            WithState(blk, false, [&](float* master, float* m, float* v) {
              for (const float* p : {master, m, v}) {
                out.write(reinterpret_cast<const char*>(p),
                          blk.shard * sizeof(float));
              }
              return out ? absl::OkStatus()
                         : absl::DataLossError("checkpoint write " + tmp);
            }));
      }
      out.flush();
      if (!out) return absl::DataLossError("checkpoint write " + tmp);
    }
    std::filesystem::rename(tmp, path, ec);
    if (ec) return absl::InternalError("cannot rename " + tmp);
    return absl::OkStatus();
  }

  // The world size that saved `dir`, from its file names.
  absl::StatusOr<int> SavedWorld(absl::string_view dir) const {
    std::set<int> worlds;
    std::error_code ec;
    for (const auto& e :
         std::filesystem::directory_iterator(std::string(dir), ec)) {
      static const std::regex kName(R"(optimizer-rank(\d+)-of-(\d+)\.tpck)");
      std::smatch match;
      const std::string name = e.path().filename().string();
      if (std::regex_match(name, match, kName)) {
        const int w = std::atoi(match[2].str().c_str());
        if (w > 0) worlds.insert(w);
      }
    }
    if (worlds.empty()) {
      return absl::NotFoundError(absl::StrCat(
          "no optimizer checkpoint in ", dir,
          ec ? absl::StrCat(" (", ec.message(), ")") : std::string()));
    }
    if (worlds.size() > 1) {
      std::string list;
      for (int w : worlds) absl::StrAppend(&list, list.empty() ? "" : ", ", w);
      return absl::FailedPreconditionError(
          absl::StrCat(dir, " holds checkpoints saved by several world sizes (",
                       list, "); keep one save per directory"));
    }
    return *worlds.begin();
  }

  // Reads and checks one saved file's header against this optimizer.
  absl::StatusOr<SavedHeader> ReadHeader(std::ifstream& in,
                                         const std::string& path, int rank,
                                         int world) const {
    auto truncated = [&] {
      return absl::DataLossError(path + " is truncated");
    };
    std::string bytes(sizeof(kMagic), '\0');
    in.read(bytes.data(), bytes.size());
    if (!in) return truncated();
    if (std::memcmp(bytes.data(), kMagic, sizeof(kMagic)) != 0) {
      return absl::DataLossError(path + " is not a tidepool checkpoint");
    }
    auto get = [&](auto& v) {
      in.read(reinterpret_cast<char*>(&v), sizeof(v));
      bytes.append(reinterpret_cast<const char*>(&v), sizeof(v));
      return static_cast<bool>(in);
    };
    SavedHeader h;
    if (!get(h.version)) return truncated();
    if (h.version != 1 && h.version != kCheckpointVersion) {
      return absl::FailedPreconditionError(absl::StrCat(
          path, ": checkpoint version ", h.version, " is not supported (",
          kCheckpointVersion, " and 1 are)"));
    }
    if (!get(h.rank) || !get(h.world) || !get(h.step) || !get(h.iterations) ||
        !get(h.scale) || !get(h.good) || !get(h.nb)) {
      return truncated();
    }
    if (h.nb > (1u << 24)) {
      return absl::DataLossError(
          absl::StrCat(path, " is corrupt (", h.nb, " blocks)"));
    }
    h.blocks.resize(h.nb);
    for (auto& b : h.blocks) {
      if (!get(b.count) || !get(b.shard) || !get(b.dtype) || !get(b.steps)) {
        return truncated();
      }
    }
    if (h.version >= 2) {
      const uint64_t want = Fnv1a(bytes);
      uint64_t hash = 0;
      in.read(reinterpret_cast<char*>(&hash), sizeof(hash));
      if (!in) return truncated();
      if (hash != want) {
        return absl::DataLossError(
            absl::StrCat(path, " is corrupt (header checksum mismatch)"));
      }
    }
    h.data_offset = static_cast<uint64_t>(in.tellg());
    if (h.rank != rank || h.world != world) {
      return absl::DataLossError(absl::StrCat(path, " holds rank ", h.rank,
                                              " of ", h.world, ", not ", rank,
                                              " of ", world));
    }
    if (h.nb != blocks_.size()) {
      return absl::FailedPreconditionError(absl::StrCat(
          path, ": saved with ", h.nb, " parameter blocks; this optimizer has ",
          blocks_.size()));
    }
    uint64_t data_bytes = 0;
    for (uint32_t b = 0; b < h.nb; ++b) {
      const auto& sb = h.blocks[b];
      const ParamBlock& p = blocks_[b].param;
      if (sb.count != p.count || sb.dtype != static_cast<int32_t>(p.dtype)) {
        return absl::FailedPreconditionError(absl::StrCat(
            path, ": block ", b, " was saved with ", sb.count,
            " elements of dtype ", sb.dtype, "; this optimizer has ", p.count,
            " of dtype ", static_cast<int32_t>(p.dtype)));
      }
      if (sb.shard != (sb.count + world - 1) / world) {
        return absl::DataLossError(absl::StrCat(path, " is corrupt (block ", b,
                                                " shard ", sb.shard, ")"));
      }
      data_bytes += 3 * sb.shard * sizeof(float);
    }
    std::error_code ec;
    const uint64_t size = std::filesystem::file_size(path, ec);
    if (ec || size != h.data_offset + data_bytes) {
      return absl::DataLossError(absl::StrCat(
          path, " has ", size, " bytes; its header needs ",
          h.data_offset + data_bytes,
          size < h.data_offset + data_bytes ? " (truncated)" : ""));
    }
    return h;
  }

  // Loads a checkpoint saved by any world size. Every rank checks every
  // saved file's header (so all ranks agree on success before any state
  // changes: a failure is all-reduced), then reads only the ranges of the
  // saved shards that overlap its own, and rebuilds the parameters.
  absl::Status Load(absl::string_view dir) {
    Drain();
    absl::Status local = absl::OkStatus();
    std::vector<std::ifstream> files;
    std::vector<SavedHeader> headers;
    int saved_world = 0;
    if (auto w = SavedWorld(dir); !w.ok()) {
      local = w.status();
    } else {
      saved_world = *w;
    }
    for (int k = 0; local.ok() && k < saved_world; ++k) {
      const std::string path = CheckpointPath(dir, k, saved_world);
      files.emplace_back(path, std::ios::binary);
      if (!files.back()) {
        local = absl::NotFoundError(absl::StrCat(
            path, " is missing (checkpoint of ", saved_world, " ranks)"));
        break;
      }
      auto h = ReadHeader(files.back(), path, k, saved_world);
      if (!h.ok()) {
        local = h.status();
        break;
      }
      const SavedHeader& first = headers.empty() ? *h : headers.front();
      bool same = h->step == first.step && h->iterations == first.iterations &&
                  h->scale == first.scale && h->good == first.good;
      for (uint32_t b = 0; b < h->nb; ++b) {
        same &= h->blocks[b].steps == first.blocks[b].steps;
      }
      if (!same) {
        local = absl::FailedPreconditionError(absl::StrCat(
            path, " comes from another save than ",
            CheckpointPath(dir, 0, saved_world), " (step counters differ)"));
        break;
      }
      headers.push_back(*std::move(h));
    }
    TP_RETURN_IF_ERROR_(AgreeOrFail(local, "load"));
    // Only the data reads are left to fail. State changes from here on.
    for (size_t b = 0; local.ok() && b < blocks_.size(); ++b) {
      local = LoadBlock(dir, static_cast<int>(b), saved_world, headers, files);
    }
    TP_RETURN_IF_ERROR_(AgreeOrFail(local, "load"));
    for (size_t b = 0; b < blocks_.size(); ++b) {
      blocks_[b].steps = headers[0].blocks[b].steps;
      TP_RETURN_IF_ERROR_(ParamsFromMaster(blocks_[b]));
    }
    step_ = headers[0].step;
    iterations_ = headers[0].iterations;
    scaler_.Restore(headers[0].scale, headers[0].good);
    return absl::OkStatus();
  }

  // Every rank returns an error if any rank has one (one all-reduce), so no
  // rank goes on into collectives the others skip.
  absl::Status AgreeOrFail(const absl::Status& local, const char* what) {
    double failed = local.ok() ? 0.0 : 1.0;
    TP_RETURN_IF_ERROR_(comm_->AllReduceSum(&failed, 1, DType::kF64));
    if (!local.ok()) return local;
    if (failed > 0) {
      return absl::AbortedError(
          absl::StrCat("optimizer: checkpoint ", what, " failed on ", failed,
                       " other rank(s); see their errors"));
    }
    return absl::OkStatus();
  }

  // This rank's master/m/v shard of block b from the saved shards that
  // overlap it; the padding past the block's end is zero.
  absl::Status LoadBlock(absl::string_view dir, int b, int saved_world,
                         const std::vector<SavedHeader>& headers,
                         std::vector<std::ifstream>& files) {
    const Block& blk = blocks_[b];
    const uint64_t old_shard = headers[0].blocks[b].shard;
    uint64_t before = 0;  // bytes of earlier blocks' data in every file
    for (int i = 0; i < b; ++i) {
      before += 3 * headers[0].blocks[i].shard * sizeof(float);
    }
    return WithState(blk, true, [&](float* master, float* m, float* v) {
      for (float* p : {master, m, v}) std::fill(p, p + blk.shard, 0.0f);
      const uint64_t lo = blk.begin, hi = blk.begin + blk.valid;
      for (int k = 0; k < saved_world && lo < hi; ++k) {
        const uint64_t k_lo = k * old_shard;
        const uint64_t from = std::max(lo, k_lo);
        const uint64_t to = std::min(hi, k_lo + old_shard);
        if (from >= to) continue;
        float* dst[3] = {master, m, v};
        for (int a = 0; a < 3; ++a) {
          const uint64_t offset =
              headers[k].data_offset + before +
              (a * old_shard + (from - k_lo)) * sizeof(float);
          std::ifstream& in = files[k];
          in.seekg(static_cast<std::streamoff>(offset));
          in.read(reinterpret_cast<char*>(dst[a] + (from - lo)),
                  (to - from) * sizeof(float));
          if (!in) {
            return absl::DataLossError(
                absl::StrCat("cannot read block ", b, " from ",
                             CheckpointPath(dir, k, saved_world)));
          }
        }
      }
      return absl::OkStatus();
    });
  }

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

// ---------------------------------------------------------------- facade

absl::StatusOr<std::unique_ptr<ShardedAdamW>> ShardedAdamW::Create(
    Session* session, Communicator* comm, std::vector<ParamBlock> blocks,
    const ShardedAdamWOptions& options) {
  if (session == nullptr || comm == nullptr) {
    return absl::InvalidArgumentError("optimizer: session and comm required");
  }
  auto impl = std::make_unique<Impl>(session, comm, options);
  TP_RETURN_IF_ERROR_(impl->Init(std::move(blocks)));
  return std::unique_ptr<ShardedAdamW>(new ShardedAdamW(std::move(impl)));
}

ShardedAdamW::ShardedAdamW(std::unique_ptr<Impl> impl)
    : impl_(std::move(impl)) {}
ShardedAdamW::~ShardedAdamW() = default;

absl::Status ShardedAdamW::InitFromParams() { return impl_->InitFromParams(); }
absl::Status ShardedAdamW::InitFromValues(int block,
                                          std::span<const float> values) {
  return impl_->InitFromValues(block, values.data(), values.size());
}
absl::Status ShardedAdamW::OnGradientsReady(int block) {
  if (block < 0 || block >= impl_->num_blocks()) {
    return absl::OutOfRangeError(absl::StrCat("optimizer: no block ", block));
  }
  return impl_->Report(block, 0, DType::kF32);  // dtype: the block's
}
absl::Status ShardedAdamW::OnGradientsReady(int block, uint64_t grad_tensor,
                                            DType grad_dtype) {
  return impl_->Report(block, grad_tensor, grad_dtype);
}
absl::StatusOr<StepResult> ShardedAdamW::Step() { return impl_->Step(); }
float ShardedAdamW::loss_scale() const { return impl_->loss_scale(); }
absl::Status ShardedAdamW::SetLearningRate(float lr) {
  if (!std::isfinite(lr) || lr < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "optimizer: the learning rate must be finite and >= 0, not ", lr));
  }
  impl_->set_lr(lr);
  return absl::OkStatus();
}
float ShardedAdamW::learning_rate() const { return impl_->lr(); }
int64_t ShardedAdamW::step() const { return impl_->step(); }
int64_t ShardedAdamW::iterations() const { return impl_->iterations(); }
int ShardedAdamW::num_blocks() const { return impl_->num_blocks(); }
absl::Status ShardedAdamW::SaveCheckpoint(absl::string_view dir) {
  return impl_->Save(dir);
}
absl::Status ShardedAdamW::LoadCheckpoint(absl::string_view dir) {
  return impl_->Load(dir);
}

}  // namespace tidepool
