// Communicator over Gloo (Debian's libgloo-dev 0.5): TCP transport on the
// given address, rendezvous through a FileStore directory shared by all
// ranks. Gloo reports errors by throwing; every call catches at this
// boundary and returns a Status instead.
//
// Debian's Gloo 0.5 offers reduce-scatter only as the old bound-buffer
// halving-doubling algorithm, so ReduceScatterSum runs Gloo's ring
// all-reduce on a copy and keeps this rank's slice (twice the bytes of a
// true reduce-scatter; correct for any world size). Ring all-reduce gives
// every rank bit-identical sums.
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

absl::Status Unsupported(DType dtype) {
  return absl::InvalidArgumentError(absl::StrCat(
      "communicator: unsupported dtype ", static_cast<int>(dtype)));
}

class GlooCommunicator final : public Communicator {
 public:
  explicit GlooCommunicator(std::shared_ptr<gloo::Context> context)
      : context_(std::move(context)) {}

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
    const size_t elem = DTypeSize(dtype);
    const size_t total = shard_count * world();
    std::vector<char> scratch(total * elem);
    if (total > 0) std::memcpy(scratch.data(), send, total * elem);
    if (absl::Status s = AllReduceSum(scratch.data(), total, dtype); !s.ok()) {
      return s;
    }
    if (shard_count > 0) {
      std::memcpy(recv, scratch.data() + rank() * shard_count * elem,
                  shard_count * elem);
    }
    return absl::OkStatus();
  }

  absl::Status AllGather(const void* send, void* recv, size_t shard_count,
                         DType dtype) override {
    if (shard_count == 0) return absl::OkStatus();
    const size_t elem = DTypeSize(dtype);
    if (elem != 2 && elem != 4 && elem != 8) return Unsupported(dtype);
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
    return std::unique_ptr<Communicator>(
        std::make_unique<GlooCommunicator>(std::move(context)));
  } catch (const std::exception& e) {
    return absl::UnavailableError(absl::StrCat(
        "gloo: rank ", options.rank, " of ", options.world,
        " could not connect through ", options.store_dir, ": ", e.what()));
  }
}

}  // namespace tidepool
