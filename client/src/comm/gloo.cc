// Communicator over Gloo (Debian's libgloo-dev 0.5): TCP transport on the
// given address, rendezvous through a FileStore directory shared by all
// ranks. Gloo reports errors by throwing; every call catches at this
// boundary and returns a Status instead.
//
// ReduceScatterSum is an all-to-all (gloo::alltoall, unbound buffers) of
// the ranks' slices followed by a local sum in rank order: each rank
// receives only its peers' slices of its own shard, (world - 1) / world of
// the buffer, as few bytes as a halving-doubling reduce-scatter moves and
// about half those of a ring all-reduce. It runs in pieces of at most
// GlooOptions::reduce_scatter_piece_bytes. 16-bit types are summed
// pairwise in fp32 and rounded back, as in all-reduce.
//
// Not Gloo's ReduceScatterHalvingDoubling: on every rank but 0 its run()
// moves the reduced shard to the front of the buffer with a memcpy while
// its own earlier send of that front region to a peer may still be in
// flight (Gloo's TCP pair finishes a partial write later, from the same
// memory, and run() never waits for its data sends), so the peer could
// receive part of this rank's reduced shard in place of its gradient:
// wrong sums on rank 0, now and then, when rank 1 came late to the
// collective (two-rank training was nondeterministic through it). Its
// sends between binary blocks (worlds that are not a power of two) are
// unacknowledged as well. gloo::alltoall waits for every send and receive.
#include <algorithm>
#include <climits>
#include <cstdint>
#include <cstring>
#include <exception>
#include <filesystem>
#include <memory>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "gloo/allgather.h"
#include "gloo/allreduce.h"
#include "gloo/alltoall.h"
#include "gloo/barrier.h"
#include "gloo/math.h"
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

// x[i] += y[i], in place: the reduce-scatter's local sum.
template <typename T>
void Acc(T* x, const T* y, size_t n) {
  for (size_t i = 0; i < n; ++i) x[i] += y[i];
}
template <uint16_t (*kTo)(float), float (*kFrom)(uint16_t)>
void Acc16(uint16_t* x, const uint16_t* y, size_t n) {
  for (size_t i = 0; i < n; ++i) x[i] = kTo(kFrom(x[i]) + kFrom(y[i]));
}

absl::Status Unsupported(DType dtype) {
  return absl::InvalidArgumentError(absl::StrCat(
      "communicator: unsupported dtype ", static_cast<int>(dtype)));
}

// Reduce-scatter reads and all-gather writes shard_count * world elements:
// a count whose byte size overflows size_t is refused before any buffer is
// touched, as an unsupported dtype is.
absl::Status CheckShard(size_t shard_count, int world, size_t elem) {
  if (shard_count > SIZE_MAX / static_cast<size_t>(world) / elem) {
    return absl::InvalidArgumentError(
        absl::StrCat("communicator: ", shard_count, " elements of ", elem,
                     " bytes times world ", world, " overflow"));
  }
  return absl::OkStatus();
}

class GlooCommunicator final : public Communicator {
 public:
  GlooCommunicator(std::shared_ptr<gloo::Context> context, size_t piece_bytes)
      : context_(std::move(context)), piece_bytes_(piece_bytes) {}

  int rank() const override { return context_->rank; }
  int world() const override { return context_->size; }
  const char* backend() const override { return "gloo"; }
  bool device_buffers() const override { return false; }

  absl::Status AllReduceSum(void* data, size_t count, DType dtype) override {
    if (count == 0) return absl::OkStatus();
    absl::MutexLock lock(&mu_);
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
    switch (dtype) {
      case DType::kF32:
        return ReduceScatter<float>(send, recv, shard_count, &Acc<float>);
      case DType::kF64:
        return ReduceScatter<double>(send, recv, shard_count, &Acc<double>);
      case DType::kBF16:
        return ReduceScatter<uint16_t>(
            send, recv, shard_count,
            &Acc16<kernels::F32ToBF16Bits, kernels::BF16BitsToF32>);
      case DType::kF16:
        return ReduceScatter<uint16_t>(
            send, recv, shard_count,
            &Acc16<kernels::F32ToF16Bits, kernels::F16BitsToF32>);
      default:
        return Unsupported(dtype);
    }
  }

  absl::Status AllGather(const void* send, void* recv, size_t shard_count,
                         DType dtype) override {
    if (shard_count == 0) return absl::OkStatus();
    const size_t elem = DTypeSize(dtype);
    if (elem != 2 && elem != 4 && elem != 8) return Unsupported(dtype);
    if (auto s = CheckShard(shard_count, world(), elem); !s.ok()) return s;
    absl::MutexLock lock(&mu_);
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
    return Guard("barrier", [&] {
      gloo::BarrierOptions opts(context_);
      opts.setTag(next_tag_++);
      gloo::barrier(opts);
      return absl::OkStatus();
    });
  }

 private:
  // Piece by piece: an all-to-all of [a, a + len) of every rank's slice
  // (the input holds them back to back, rank-major, as send does when one
  // piece covers the shard), after which the output holds every rank's
  // slice of this rank's shard, summed here in rank order.
  template <typename T>
  absl::Status ReduceScatter(const void* send, void* recv, size_t shard,
                             void (*acc)(T*, const T*, size_t)) {
    if (auto s = CheckShard(shard, this->world(), sizeof(T)); !s.ok()) {
      return s;
    }
    const size_t world = static_cast<size_t>(this->world());
    // Gloo's byte counts are int; leave room for its rounding up.
    const size_t max_bytes = std::min<size_t>(piece_bytes_, INT_MAX / 2);
    const size_t piece =
        std::clamp<size_t>(max_bytes / (world * sizeof(T)), 1, shard);
    // Gloo needs a non-const input; it only reads it.
    T* in = static_cast<T*>(const_cast<void*>(send));
    T* out = static_cast<T*>(recv);
    // Uninitialised: every element is written before it is read.
    std::unique_ptr<T[]> staging(piece < shard ? new T[piece * world]
                                               : nullptr);
    std::unique_ptr<T[]> gathered(new T[piece * world]);
    absl::MutexLock lock(&mu_);
    return Guard("reduce-scatter", [&] {
      for (size_t a = 0; a < shard; a += piece) {
        const size_t len = std::min(piece, shard - a);
        T* input = in;
        if (piece < shard) {
          input = staging.get();
          for (size_t r = 0; r < world; ++r) {
            std::memcpy(input + r * len, in + r * shard + a, len * sizeof(T));
          }
        }
        gloo::AlltoallOptions opts(context_);
        opts.setTag(next_tag_++);
        opts.setInput(input, len * world);
        opts.setOutput(gathered.get(), len * world);
        gloo::alltoall(opts);
        std::memcpy(out + a, gathered.get(), len * sizeof(T));
        for (size_t r = 1; r < world; ++r) {
          acc(out + a, gathered.get() + r * len, len);
        }
      }
      return absl::OkStatus();
    });
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
