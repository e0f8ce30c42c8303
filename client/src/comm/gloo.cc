// Communicator over Gloo (Debian's libgloo-dev 0.5): TCP transport on the
// given address, rendezvous through a FileStore directory shared by all
// ranks. Gloo reports errors by throwing; every call catches at this
// boundary and returns a Status instead.
//
// ReduceScatterSum uses Gloo's ReduceScatterHalvingDoubling, the only
// reduce-scatter this Gloo has (bound buffers, in place, int counts): each
// rank receives only its reduced shard, about half the bytes of a ring
// all-reduce. It runs on a staging copy, in pieces of at most
// GlooOptions::reduce_scatter_piece_bytes, and one instance is kept for
// reuse (construction registers buffers with every peer). 16-bit types are
// summed pairwise in fp32 and rounded back, as in all-reduce.
//
// World sizes that are not powers of two fall back to a ring all-reduce
// that keeps this rank's slice (twice the bytes): there the algorithm sends
// between its binary blocks without any acknowledgement, so a reused
// instance lets a fast rank overwrite data a peer has not reduced yet
// (wrong sums, seen at 5 ranks), and a fresh instance per call spins Gloo's
// device thread until the peers have registered theirs (milliseconds per
// call).
#include <algorithm>
#include <climits>
#include <cstring>
#include <exception>
#include <filesystem>
#include <memory>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "gloo/allgather.h"
#include "gloo/allreduce.h"
#include "gloo/barrier.h"
#include "gloo/math.h"
#include "gloo/reduce_scatter.h"
#include "gloo/rendezvous/context.h"
#include "gloo/rendezvous/file_store.h"
#include "gloo/transport/tcp/device.h"
#include "kernels/cpu/half.h"
#include "tidepool/communicator.h"

namespace tidepool {
namespace {

template <uint16_t (*kTo)(float), float (*kFrom)(uint16_t)>
void Sum16(void* c, const void* a, const void* b, size_t n) {
  auto* out = static_cast<uint16_t*>(c);
  const auto* x = static_cast<const uint16_t*>(a);
  const auto* y = static_cast<const uint16_t*>(b);
  for (size_t i = 0; i < n; ++i) out[i] = kTo(kFrom(x[i]) + kFrom(y[i]));
}

// x[i] += y[i] for gloo's bound-buffer algorithms (in place).
template <uint16_t (*kTo)(float), float (*kFrom)(uint16_t)>
void Acc16(uint16_t* x, const uint16_t* y, size_t n) {
  for (size_t i = 0; i < n; ++i) x[i] = kTo(kFrom(x[i]) + kFrom(y[i]));
}

const gloo::ReductionFunction<uint16_t> kSumBF16(
    gloo::CUSTOM, &Acc16<kernels::F32ToBF16Bits, kernels::BF16BitsToF32>);
const gloo::ReductionFunction<uint16_t> kSumF16(
    gloo::CUSTOM, &Acc16<kernels::F32ToF16Bits, kernels::F16BitsToF32>);

absl::Status Unsupported(DType dtype) {
  return absl::InvalidArgumentError(absl::StrCat(
      "communicator: unsupported dtype ", static_cast<int>(dtype)));
}

class GlooCommunicator final : public Communicator {
 public:
  GlooCommunicator(std::shared_ptr<gloo::Context> context, size_t piece_bytes)
      : context_(std::move(context)), piece_bytes_(piece_bytes) {}

  // A bound-buffer wait in this Gloo checks for a closed connection before
  // it checks for data that already arrived, so a peer that disconnects
  // right after its last reduce-scatter can fail a rank still finishing
  // that reduce-scatter. A last barrier (unbound buffers, which check data
  // first) keeps every rank connected until all are done; if a peer is
  // gone it fails fast, if one hangs it waits out the timeout.
  ~GlooCommunicator() override {
    absl::MutexLock lock(&mu_);
    if (bound_op_last_) {
      (void)Guard("closing barrier", [&] {
        gloo::BarrierOptions opts(context_);
        opts.setTag(next_tag_++);
        gloo::barrier(opts);
        return absl::OkStatus();
      });
    }
    DropReduceScatter();
  }

  int rank() const override { return context_->rank; }
  int world() const override { return context_->size; }
  const char* backend() const override { return "gloo"; }
  bool device_buffers() const override { return false; }

  absl::Status AllReduceSum(void* data, size_t count, DType dtype) override {
    if (count == 0) return absl::OkStatus();
    absl::MutexLock lock(&mu_);
    bound_op_last_ = false;
    return Guard("all-reduce", [&] {
      gloo::AllreduceOptions opts(context_);
      opts.setTag(next_tag_++);
      switch (dtype) {
        case DType::kF32:
          opts.setOutput(static_cast<float*>(data), count);
          opts.setReduceFunction(
              static_cast<void (*)(void*, const void*, const void*, size_t)>(
                  &gloo::sum<float>));
          break;
        case DType::kF64:
          opts.setOutput(static_cast<double*>(data), count);
          opts.setReduceFunction(
              static_cast<void (*)(void*, const void*, const void*, size_t)>(
                  &gloo::sum<double>));
          break;
        case DType::kBF16:
          opts.setOutput(static_cast<uint16_t*>(data), count);
          opts.setReduceFunction(
              &Sum16<kernels::F32ToBF16Bits, kernels::BF16BitsToF32>);
          break;
        case DType::kF16:
          opts.setOutput(static_cast<uint16_t*>(data), count);
          opts.setReduceFunction(
              &Sum16<kernels::F32ToF16Bits, kernels::F16BitsToF32>);
          break;
        default:
          return Unsupported(dtype);
      }
      gloo::allreduce(opts);
      return absl::OkStatus();
    });
  }

  absl::Status ReduceScatterSum(const void* send, void* recv,
                                size_t shard_count, DType dtype) override {
    if (shard_count == 0) return absl::OkStatus();
    if ((world() & (world() - 1)) != 0) {
      return ReduceScatterByAllReduce(send, recv, shard_count, dtype);
    }
    switch (dtype) {
      case DType::kF32:
        return ReduceScatter<float>(send, recv, shard_count, dtype,
                                    gloo::ReductionFunction<float>::sum);
      case DType::kF64:
        return ReduceScatter<double>(send, recv, shard_count, dtype,
                                     gloo::ReductionFunction<double>::sum);
      case DType::kBF16:
        return ReduceScatter<uint16_t>(send, recv, shard_count, dtype,
                                       &kSumBF16);
      case DType::kF16:
        return ReduceScatter<uint16_t>(send, recv, shard_count, dtype,
                                       &kSumF16);
      default:
        return Unsupported(dtype);
    }
  }

  absl::Status AllGather(const void* send, void* recv, size_t shard_count,
                         DType dtype) override {
    if (shard_count == 0) return absl::OkStatus();
    const size_t elem = DTypeSize(dtype);
    if (elem != 2 && elem != 4 && elem != 8) return Unsupported(dtype);
    absl::MutexLock lock(&mu_);
    bound_op_last_ = false;
    return Guard("all-gather", [&] {
      gloo::AllgatherOptions opts(context_);
      opts.setTag(next_tag_++);
      // Gloo needs a non-const input; it only reads it.
      char* in = static_cast<char*>(const_cast<void*>(send));
      char* out = static_cast<char*>(recv);
      if (elem == 2) {
        opts.setInput(reinterpret_cast<uint16_t*>(in), shard_count);
        opts.setOutput(reinterpret_cast<uint16_t*>(out), shard_count * world());
      } else if (elem == 4) {
        opts.setInput(reinterpret_cast<uint32_t*>(in), shard_count);
        opts.setOutput(reinterpret_cast<uint32_t*>(out), shard_count * world());
      } else {
        opts.setInput(reinterpret_cast<uint64_t*>(in), shard_count);
        opts.setOutput(reinterpret_cast<uint64_t*>(out), shard_count * world());
      }
      gloo::allgather(opts);
      return absl::OkStatus();
    });
  }

  absl::Status Barrier() override {
    absl::MutexLock lock(&mu_);
    bound_op_last_ = false;
    return Guard("barrier", [&] {
      gloo::BarrierOptions opts(context_);
      opts.setTag(next_tag_++);
      gloo::barrier(opts);
      return absl::OkStatus();
    });
  }

 private:
  // Ring all-reduce on a copy, keeping this rank's slice: twice the bytes,
  // for world sizes that are not powers of two (see the file comment).
  absl::Status ReduceScatterByAllReduce(const void* send, void* recv,
                                        size_t shard_count, DType dtype) {
    const size_t elem = DTypeSize(dtype);
    const size_t total = shard_count * world();
    std::vector<char> scratch(total * elem);
    std::memcpy(scratch.data(), send, total * elem);
    if (absl::Status s = AllReduceSum(scratch.data(), total, dtype); !s.ok()) {
      return s;
    }
    std::memcpy(recv, scratch.data() + rank() * shard_count * elem,
                shard_count * elem);
    return absl::OkStatus();
  }

  // Piece by piece: staging holds every rank's slice [a, a + len) of its
  // shard back to back; the algorithm leaves this rank's sum at the front.
  template <typename T>
  absl::Status ReduceScatter(const void* send, void* recv, size_t shard,
                             DType dtype,
                             const gloo::ReductionFunction<T>* fn) {
    const size_t world = static_cast<size_t>(this->world());
    // Gloo's byte counts are int; leave room for its rounding up.
    const size_t max_bytes = std::min<size_t>(piece_bytes_, INT_MAX / 2);
    const size_t piece =
        std::clamp<size_t>(max_bytes / (world * sizeof(T)), 1, shard);
    const T* in = static_cast<const T*>(send);
    T* out = static_cast<T*>(recv);
    absl::MutexLock lock(&mu_);
    absl::Status s = Guard("reduce-scatter", [&] {
      for (size_t a = 0; a < shard; a += piece) {
        const size_t len = std::min(piece, shard - a);
        T* staging = CachedReduceScatter<T>(dtype, len, fn);
        for (size_t r = 0; r < world; ++r) {
          std::memcpy(staging + r * len, in + r * shard + a, len * sizeof(T));
        }
        rs_.algorithm->run();
        std::memcpy(out + a, staging, len * sizeof(T));
      }
      bound_op_last_ = true;
      return absl::OkStatus();
    });
    if (!s.ok()) DropReduceScatter();  // its buffers may be mid-transfer
    return s;
  }

  // Gloo's bound-buffer algorithms are built to be constructed once and run
  // many times: construction registers buffers with every peer (and a peer
  // that runs ahead busy-waits until they exist). So the last one is kept
  // and reused while the (dtype, length) stays the same, as it does for
  // equal-sized blocks; one instance bounds the memory to about 3x a piece.
  // Every rank makes the same calls, so their caches agree.
  template <typename T>
  T* CachedReduceScatter(DType dtype, size_t len,
                         const gloo::ReductionFunction<T>* fn)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (rs_.algorithm == nullptr || rs_.dtype != dtype || rs_.len != len) {
      DropReduceScatter();
      const size_t world = static_cast<size_t>(this->world());
      rs_.staging.assign((len * world * sizeof(T) + 7) / 8, 0);
      T* data = reinterpret_cast<T*>(rs_.staging.data());
      rs_.algorithm = std::make_unique<gloo::ReduceScatterHalvingDoubling<T>>(
          context_, std::vector<T*>{data}, static_cast<int>(len * world),
          std::vector<int>(world, static_cast<int>(len)), fn);
      rs_.dtype = dtype;
      rs_.len = len;
    }
    return reinterpret_cast<T*>(rs_.staging.data());
  }

  void DropReduceScatter() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    try {
      rs_.algorithm.reset();  // Gloo's algorithm destructors may throw
    } catch (const std::exception&) {
    }
    rs_.len = 0;
  }

  template <typename F>
  absl::Status Guard(const char* what, F&& f) {
    try {
      return f();
    } catch (const std::exception& e) {
      return absl::UnavailableError(
          absl::StrCat("gloo ", what, " failed: ", e.what()));
    }
  }

  absl::Mutex mu_;
  std::shared_ptr<gloo::Context> context_;
  const size_t piece_bytes_;
  uint32_t next_tag_ ABSL_GUARDED_BY(mu_) = 1;
  struct CachedAlgorithm {
    DType dtype = DType::kF32;
    size_t len = 0;
    std::vector<uint64_t> staging;  // 8-byte aligned for any T
    std::unique_ptr<gloo::Algorithm> algorithm;
  };
  // Declared after context_: destroyed first, while the pairs still exist.
  CachedAlgorithm rs_ ABSL_GUARDED_BY(mu_);
  bool bound_op_last_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Communicator>> OpenGlooCommunicator(
    const GlooOptions& options) {
  if (options.world < 1 || options.rank < 0 || options.rank >= options.world) {
    return absl::InvalidArgumentError(absl::StrCat(
        "gloo: bad rank ", options.rank, " of world ", options.world));
  }
  if (options.world == 1) return MakeLocalCommunicator();
  if (options.store_dir.empty()) {
    return absl::InvalidArgumentError("gloo: store_dir is required");
  }
  try {
    std::error_code ec;
    std::filesystem::create_directories(options.store_dir, ec);
    gloo::transport::tcp::attr attr;
    attr.hostname = options.hostname;
    auto device = gloo::transport::tcp::CreateDevice(attr);
    gloo::rendezvous::FileStore store(options.store_dir);
    auto context = std::make_shared<gloo::rendezvous::Context>(options.rank,
                                                               options.world);
    context->setTimeout(options.timeout);
    context->connectFullMesh(store, device);
    return std::unique_ptr<Communicator>(std::make_unique<GlooCommunicator>(
        std::move(context), options.reduce_scatter_piece_bytes));
  } catch (const std::exception& e) {
    return absl::UnavailableError(absl::StrCat(
        "gloo: rank ", options.rank, " of ", options.world,
        " could not connect through ", options.store_dir, ": ", e.what()));
  }
}

}  // namespace tidepool
