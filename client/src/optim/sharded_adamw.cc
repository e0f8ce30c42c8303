// ShardedAdamW (see tidepool/optimizer.h and docs/optimizer.md).
//
// Per block b, with W ranks and n elements: shard = ceil(n / W); rank r
// owns elements [r * shard, r * shard + shard) of the zero-padded block.
// The gradient pipeline per block, run by one worker thread in report
// order (so every rank issues the same collectives in the same order):
//   1. acquire the gradient (read), widen to fp32 into a padded buffer;
//   2. reduce-scatter (sum) to this rank's fp32 shard; sum of squares and
//      finiteness of the shard for the step's statistics;
//   3. now, or at Step() when clipping/loss scaling need the global norm:
//      acquire master/m/v, AdamW (CpuAdamW also writes the bf16/fp16
//      shard), release; all-gather the low-precision shards; write them
//      into the parameter tensor.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <deque>
#include <filesystem>
#include <fstream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "kernels/cpu/adamw.h"
#include "kernels/cpu/convert.h"
#include "kernels/cpu/grad_stats.h"
#include "tidepool/optimizer.h"
#ifdef TIDEPOOL_HAVE_CUDA
#include <cuda_runtime_api.h>
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

template <typename T>
absl::Status Put(std::ofstream& out, const T& v) {
  out.write(reinterpret_cast<const char*>(&v), sizeof(v));
  return out ? absl::OkStatus() : absl::DataLossError("checkpoint write");
}
template <typename T>
absl::Status Get(std::ifstream& in, T& v) {
  in.read(reinterpret_cast<char*>(&v), sizeof(v));
  return in ? absl::OkStatus() : absl::DataLossError("checkpoint truncated");
}

#define TP_RETURN_IF_ERROR_(expr)                      \
  do {                                                 \
    if (absl::Status s_ = (expr); !s_.ok()) return s_; \
  } while (0)

constexpr char kMagic[8] = {'T', 'P', 'O', 'P', 'T', 'C', 'K', '1'};

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
  };
  enum class Phase { kIdle, kQueued, kReduced, kUpdated };
  struct Work {
    int block;
    uint64_t grad_tensor;
    DType grad_dtype;
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
    {
      absl::MutexLock lock(&mu_);
      phase_.assign(nb, Phase::kIdle);
      grad_shards_.resize(nb);
    }
    if (options_.overlap) worker_ = std::thread([this] { WorkerLoop(); });
    return absl::OkStatus();
  }

  // ---- host access to acquired tensors (sim: direct; cuda: staged) ----

  absl::Status ToHost(const AcquiredTensor& t, void* dst, size_t bytes) {
    if (!cuda_) {
      std::memcpy(dst, t.data, bytes);
      return absl::OkStatus();
    }
#ifdef TIDEPOOL_HAVE_CUDA
    if (cudaMemcpy(dst, t.data, bytes, cudaMemcpyDeviceToHost) != cudaSuccess) {
      return absl::InternalError("optimizer: device-to-host copy failed");
    }
    return absl::OkStatus();
#else
    return absl::InternalError("optimizer: cuda backend without CUDA build");
#endif
  }
  absl::Status FromHost(const AcquiredTensor& t, const void* src,
                        size_t bytes) {
    if (!cuda_) {
      std::memcpy(t.data, src, bytes);
      return absl::OkStatus();
    }
#ifdef TIDEPOOL_HAVE_CUDA
    if (cudaMemcpy(t.data, src, bytes, cudaMemcpyHostToDevice) != cudaSuccess) {
      return absl::InternalError("optimizer: host-to-device copy failed");
    }
    return absl::OkStatus();
#else
    return absl::InternalError("optimizer: cuda backend without CUDA build");
#endif
  }

  // Runs fn(master, m, v) on block b's shards in their host homes: the
  // optimizer state stays in host memory and never crosses the link
  // (CPU AdamW over host-resident state, as ZeRO-Offload does).
  template <typename F>
  absl::Status WithState(const Block& blk, bool modify, F&& fn) {
    const uint64_t ids[3] = {blk.master, blk.m, blk.v};
    auto got = session_->AcquireOnHost(
        ids, modify ? AccessMode::kReadWrite : AccessMode::kRead);
    if (!got.ok()) return got.status();
    absl::Status s = fn(static_cast<float*>((*got)[0].data),
                        static_cast<float*>((*got)[1].data),
                        static_cast<float*>((*got)[2].data));
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
    const uint64_t id = blk.param.tensor_id;
    auto got = session_->Acquire({&id, 1}, AccessMode::kReadWrite);
    if (!got.ok()) return got.status();
    absl::Status s = FromHost((*got)[0], full.data(), blk.param.count * es);
    absl::Status r = session_->Release({&id, 1}, TensorState::kHold);
    return s.ok() ? r : s;
  }

  // ---- the pipeline ----

  absl::Status Reduce(const Work& w) {
    Block& blk = blocks_[w.block];
    auto kt = KernelType(w.grad_dtype);
    if (!kt.ok()) return kt.status();
    const uint64_t id = w.grad_tensor;
    auto got = session_->Acquire({&id, 1}, AccessMode::kRead);
    if (!got.ok()) return got.status();
    const size_t es = DTypeSize(w.grad_dtype);
    absl::Status s;
    if ((*got)[0].bytes < blk.param.count * es) {
      s = absl::InvalidArgumentError(
          absl::StrCat("optimizer: gradient tensor of block ", w.block, " has ",
                       (*got)[0].bytes, " bytes, need ", blk.param.count * es));
    }
    std::vector<float> full(blk.shard * comm_->world(), 0.0f);
    if (s.ok()) {
      const void* src = (*got)[0].data;
      std::vector<char> staged;
      if (cuda_) {
        staged.resize(blk.param.count * es);
        s = ToHost((*got)[0], staged.data(), staged.size());
        src = staged.data();
      }
      if (s.ok()) {
        s = kernels::CpuConvertToF32(src, *kt, full.data(), blk.param.count);
      }
    }
    absl::Status r = session_->Release({&id, 1}, TensorState::kHold);
    if (!s.ok()) return s;
    if (!r.ok()) return r;
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

  absl::Status Update(int b, const std::vector<float>& grad, float scale) {
    Block& blk = blocks_[b];
    const size_t es = DTypeSize(blk.param.dtype);
    std::vector<char> shard_param(blk.shard * es);
    kernels::AdamWParams p{.lr = options_.lr,
                           .beta1 = options_.beta1,
                           .beta2 = options_.beta2,
                           .eps = options_.eps,
                           .weight_decay = options_.weight_decay,
                           .step = blk.steps + 1,
                           .grad_scale = scale};
    TP_RETURN_IF_ERROR_(
        WithState(blk, /*modify=*/true, [&](float* master, float* m, float* v) {
          if (blk.param.dtype == DType::kF32) {
            TP_RETURN_IF_ERROR_(kernels::CpuAdamW(
                p, master, m, v, grad.data(), kernels::DType::kF32, nullptr,
                kernels::DType::kBF16, blk.shard));
            std::memcpy(shard_param.data(), master, blk.shard * 4);
            return absl::OkStatus();
          }
          return kernels::CpuAdamW(p, master, m, v, grad.data(),
                                   kernels::DType::kF32, shard_param.data(),
                                   *KernelType(blk.param.dtype), blk.shard);
        }));
    blk.steps += 1;
    return GatherParams(blk, shard_param);
  }

  absl::Status Report(int block, uint64_t grad_tensor, DType grad_dtype) {
    if (block < 0 || block >= static_cast<int>(blocks_.size())) {
      return absl::OutOfRangeError(absl::StrCat("optimizer: no block ", block));
    }
    if (grad_tensor == 0) {  // the gradient is in the parameter's memory
      grad_tensor = blocks_[block].param.tensor_id;
      grad_dtype = blocks_[block].param.dtype;
    }
    Work w{block, grad_tensor, grad_dtype};
    {
      absl::MutexLock lock(&mu_);
      if (phase_[block] != Phase::kIdle) {
        return absl::FailedPreconditionError(absl::StrCat(
            "optimizer: block ", block, " reported twice in one step"));
      }
      phase_[block] = Phase::kQueued;
      if (options_.overlap) {
        queue_.push_back(w);
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

  bool HasWorkOrStop() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return stop_ || !queue_.empty();
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
        if (queue_.empty()) return;  // stop_
        w = queue_.front();
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
    mu_.Await(absl::Condition(this, &Impl::Idle));
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
    ResetLocked();
    return result;
  }

  void ResetLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    std::fill(phase_.begin(), phase_.end(), Phase::kIdle);
    for (auto& g : grad_shards_) std::vector<float>().swap(g);
    sum_squares_ = 0;
    nonfinite_ = false;
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
      const size_t es = DTypeSize(blk.param.dtype);
      std::vector<char> raw(blk.param.count * es);
      const uint64_t id = blk.param.tensor_id;
      auto got = session_->Acquire({&id, 1}, AccessMode::kRead);
      if (!got.ok()) return got.status();
      absl::Status s = ToHost((*got)[0], raw.data(), raw.size());
      absl::Status r = session_->Release({&id, 1}, TensorState::kHold);
      if (!s.ok()) return s;
      if (!r.ok()) return r;
      std::vector<float> wide(blk.param.count);
      TP_RETURN_IF_ERROR_(
          kernels::CpuConvertToF32(raw.data(), *KernelType(blk.param.dtype),
                                   wide.data(), blk.param.count));
      TP_RETURN_IF_ERROR_(
          WithState(blk, true, [&](float* master, float* m, float* v) {
            std::fill(master, master + blk.shard, 0.0f);
            std::copy_n(wide.data() + blk.begin, blk.valid, master);
            std::fill(m, m + blk.shard, 0.0f);
            std::fill(v, v + blk.shard, 0.0f);
            return absl::OkStatus();
          }));
      blk.steps = 0;
    }
    return absl::OkStatus();
  }

  std::string CheckpointPath(absl::string_view dir) const {
    return absl::StrCat(dir, "/optimizer-rank", comm_->rank(), "-of-",
                        comm_->world(), ".tpck");
  }

  absl::Status Save(absl::string_view dir) {
    Drain();
    std::error_code ec;
    std::filesystem::create_directories(std::string(dir), ec);
    const std::string path = CheckpointPath(dir);
    const std::string tmp = path + ".tmp";
    {
      std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
      if (!out) return absl::PermissionDeniedError("cannot write " + tmp);
      out.write(kMagic, sizeof(kMagic));
      const uint32_t version = 1;
      const int32_t rank = comm_->rank(), world = comm_->world();
      const uint32_t nb = static_cast<uint32_t>(blocks_.size());
      const float scale = scaler_.scale();
      const int32_t good = scaler_.good_steps();
      TP_RETURN_IF_ERROR_(Put(out, version));
      TP_RETURN_IF_ERROR_(Put(out, rank));
      TP_RETURN_IF_ERROR_(Put(out, world));
      TP_RETURN_IF_ERROR_(Put(out, step_));
      TP_RETURN_IF_ERROR_(Put(out, iterations_));
      TP_RETURN_IF_ERROR_(Put(out, scale));
      TP_RETURN_IF_ERROR_(Put(out, good));
      TP_RETURN_IF_ERROR_(Put(out, nb));
      for (const Block& blk : blocks_) {
        const uint64_t count = blk.param.count, shard = blk.shard;
        const int32_t dtype = static_cast<int32_t>(blk.param.dtype);
        TP_RETURN_IF_ERROR_(Put(out, count));
        TP_RETURN_IF_ERROR_(Put(out, shard));
        TP_RETURN_IF_ERROR_(Put(out, dtype));
        TP_RETURN_IF_ERROR_(Put(out, blk.steps));
      }
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

  absl::Status Load(absl::string_view dir) {
    Drain();
    const std::string path = CheckpointPath(dir);
    std::ifstream in(path, std::ios::binary);
    if (!in) {
      return absl::NotFoundError(absl::StrCat("no checkpoint for rank ",
                                              comm_->rank(), " of ",
                                              comm_->world(), " at ", path));
    }
    char magic[sizeof(kMagic)];
    in.read(magic, sizeof(magic));
    if (!in || std::memcmp(magic, kMagic, sizeof(kMagic)) != 0) {
      return absl::DataLossError(path + " is not a tidepool checkpoint");
    }
    uint32_t version, nb;
    int32_t rank, world, good;
    int64_t step, iterations;
    float scale;
    TP_RETURN_IF_ERROR_(Get(in, version));
    TP_RETURN_IF_ERROR_(Get(in, rank));
    TP_RETURN_IF_ERROR_(Get(in, world));
    TP_RETURN_IF_ERROR_(Get(in, step));
    TP_RETURN_IF_ERROR_(Get(in, iterations));
    TP_RETURN_IF_ERROR_(Get(in, scale));
    TP_RETURN_IF_ERROR_(Get(in, good));
    TP_RETURN_IF_ERROR_(Get(in, nb));
    if (version != 1 || rank != comm_->rank() || world != comm_->world() ||
        nb != blocks_.size()) {
      return absl::FailedPreconditionError(absl::StrCat(
          path, ": saved by rank ", rank, " of ", world, " with ", nb,
          " blocks (version ", version, "); this is rank ", comm_->rank(),
          " of ", comm_->world(), " with ", blocks_.size()));
    }
    std::vector<int64_t> steps(nb);
    for (uint32_t b = 0; b < nb; ++b) {
      uint64_t count, shard;
      int32_t dtype;
      TP_RETURN_IF_ERROR_(Get(in, count));
      TP_RETURN_IF_ERROR_(Get(in, shard));
      TP_RETURN_IF_ERROR_(Get(in, dtype));
      TP_RETURN_IF_ERROR_(Get(in, steps[b]));
      if (count != blocks_[b].param.count || shard != blocks_[b].shard ||
          dtype != static_cast<int32_t>(blocks_[b].param.dtype)) {
        return absl::FailedPreconditionError(
            absl::StrCat(path, ": block ", b, " has another shape or dtype"));
      }
    }
    for (uint32_t b = 0; b < nb; ++b) {
      Block& blk = blocks_[b];
      const size_t es = DTypeSize(blk.param.dtype);
      std::vector<char> shard_param(blk.shard * es);
      TP_RETURN_IF_ERROR_(
          WithState(blk, true, [&](float* master, float* m, float* v) {
            for (float* p : {master, m, v}) {
              in.read(reinterpret_cast<char*>(p), blk.shard * sizeof(float));
            }
            if (!in) return absl::DataLossError(path + " is truncated");
            if (blk.param.dtype == DType::kF32) {
              std::memcpy(shard_param.data(), master, blk.shard * 4);
              return absl::OkStatus();
            }
            return kernels::CpuConvertFromF32(master, shard_param.data(),
                                              *KernelType(blk.param.dtype),
                                              blk.shard);
          }));
      blk.steps = steps[b];
      TP_RETURN_IF_ERROR_(GatherParams(blk, shard_param));
    }
    step_ = step;
    iterations_ = iterations;
    scaler_.Restore(scale, good);
    return absl::OkStatus();
  }

  float loss_scale() const { return scaler_.scale(); }
  int64_t step() const { return step_; }
  int64_t iterations() const { return iterations_; }
  int num_blocks() const { return static_cast<int>(blocks_.size()); }

 private:
  Session* const session_;
  Communicator* const comm_;
  const ShardedAdamWOptions options_;
  const bool cuda_;
  // Written by Init, then touched by one thread at a time: the worker
  // between a block's report and Drain(), the caller otherwise.
  std::vector<Block> blocks_;
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
