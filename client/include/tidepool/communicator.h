// Collectives for the sharded optimizer: a Communicator sums gradients
// across the ranks of a data-parallel job (reduce-scatter), gathers updated
// parameter shards back (all-gather) and all-reduces the step's scalars
// (gradient norm, overflow flag). Implementations wrap existing engines:
// Gloo (host buffers; the sim backend and CPU tests) and NCCL (device
// buffers; GPU servers). A world of one rank needs no engine at all.
//
//   tidepool::GlooOptions o{.rank = r, .world = 4, .store_dir = "/tmp/job7"};
//   absl::StatusOr<std::unique_ptr<tidepool::Communicator>> comm =
//       tidepool::OpenGlooCommunicator(o);
//   if (!comm.ok()) return comm.status();
//   // send: world * shard elements; recv: this rank's summed shard
//   absl::Status s = (*comm)->ReduceScatterSum(send, recv, shard,
//                                              tidepool::DType::kF32);
//
// Every rank must issue the same collectives in the same order. Methods of
// one Communicator may be called from several threads; they are serialized.
// Errors are absl::Status (a peer that went away, a timeout); no exception
// leaves a Communicator.
#pragma once

#include <chrono>
#include <cstddef>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "tidepool/types.h"

namespace tidepool {

class Communicator {
 public:
  virtual ~Communicator() = default;

  virtual int rank() const = 0;
  virtual int world() const = 0;
  // "local", "gloo" or "nccl".
  virtual const char* backend() const = 0;
  // True when buffers are device memory (NCCL), false for host memory.
  virtual bool device_buffers() const = 0;

  // data[0, count) = sum over ranks, in place. dtype: kF32, kF64, kBF16 or
  // kF16 (16-bit types are summed in fp32 and rounded back).
  virtual absl::Status AllReduceSum(void* data, size_t count, DType dtype) = 0;

  // send holds world() * shard_count elements; recv gets elements
  // [rank * shard_count, (rank + 1) * shard_count) summed over ranks.
  // send and recv must not overlap.
  virtual absl::Status ReduceScatterSum(const void* send, void* recv,
                                        size_t shard_count, DType dtype) = 0;

  // recv (world() * shard_count elements) = every rank's send, in rank order.
  virtual absl::Status AllGather(const void* send, void* recv,
                                 size_t shard_count, DType dtype) = 0;

  virtual absl::Status Barrier() = 0;
};

// World of one: every collective is a copy (or nothing).
std::unique_ptr<Communicator> MakeLocalCommunicator();

struct GlooOptions {
  int rank = 0;
  int world = 1;
  // Rendezvous directory shared by all ranks (gloo::rendezvous::FileStore).
  // Use a fresh one per job: stale keys from an earlier job break it.
  std::string store_dir;
  // Address the TCP transport listens on (loopback for a single node).
  std::string hostname = "127.0.0.1";
  std::chrono::milliseconds timeout{60000};
  // Largest reduce-scatter Gloo runs at once (all ranks' slices together);
  // bigger ones run in pieces. Bounds the staging memory (about 2x this) and
  // keeps Gloo's int byte counts in range. Must be equal on all ranks.
  size_t reduce_scatter_piece_bytes = size_t{64} << 20;
};

// Connects all ranks over Gloo's TCP transport. World 1 returns a local
// communicator without touching the store.
absl::StatusOr<std::unique_ptr<Communicator>> OpenGlooCommunicator(
    const GlooOptions& options);

struct NcclOptions {
  int rank = 0;
  int world = 1;
  // Directory shared by all ranks: rank 0 writes the ncclUniqueId there.
  std::string id_dir;
  void* stream = nullptr;  // cudaStream_t the collectives are enqueued on
  std::chrono::milliseconds timeout{60000};
};

// NCCL on device buffers; collectives are enqueued on options.stream and
// the calls return once enqueued (the host does not wait). Unimplemented
// where the build has no CUDA.
absl::StatusOr<std::unique_ptr<Communicator>> OpenNcclCommunicator(
    const NcclOptions& options);

}  // namespace tidepool
