// libtidepool: the in-process client of tidepoold. A Session binds this
// process to one device of the node's daemon, registers tensors (which the
// daemon packs into chunks), and acquires them for computation: acquire
// makes a tensor COMPUTE and returns where its bytes are in this process's
// mapping of the device pool; release hands it back to the daemon, which may
// then evict its chunk to the host pool.
//
//   auto session = tidepool::Session::Open({.policy = tidepool::Policy::kCpu});
//   if (!session.ok()) return session.status();
//   auto tensors = (*session)->Register({{"w0", tidepool::DType::kF32,
//   {1024}}}); auto got = (*session)->Acquire({(*tensors)[0].id},
//                                  tidepool::AccessMode::kReadWrite);
//   float* w0 = static_cast<float*>((*got)[0].data);  // valid until release
//   ... compute on w0 (on the sim backend: CPU memory; cuda: device memory)
//   (*session)->Release({(*tensors)[0].id}, tidepool::TensorState::kHold);
//
// Addresses: a tensor's address is stable while it is COMPUTE. Once released,
// its chunk may be evicted and later brought back to a different place in
// the pool, so the next Acquire may return another address; never keep a
// pointer across a release.
//
// Errors are absl::Status; no exception leaves the library. If the daemon
// dies, calls fail with UNAVAILABLE and the mappings stay valid, so a
// trainer can still read what it holds and save its state. All methods are
// thread-safe.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "tidepool/types.h"

struct CUstream_st;  // cudaStream_t without the CUDA headers

namespace tidepool {

using CudaStream = CUstream_st*;

inline constexpr char kDefaultSocket[] = "/run/tidepool/tidepoold.sock";

// How an `auto` session plans. kGeminiLike and kLru exist for comparison
// benchmarks (bench/policy) only.
enum class Planner { kDefault, kGeminiLike, kLru };

// Settings of the `auto` and `static` policies (docs/policy.md); unset
// ones take the daemon's defaults.
struct PlacementOptions {
  uint32_t warmup_steps = 0;  // steps recorded before planning; 0: default
  std::optional<double> margin_ratio;  // of the measured device capacity
  bool prefetch = true;
  Planner planner = Planner::kDefault;
  // `static`: fractions of parameter / optimizer-state chunks kept on the
  // host (the rest, first registered first, stay on the device).
  std::optional<double> static_param_offload;
  std::optional<double> static_optim_offload;
  uint32_t lookahead_ops = 0;  // prefetch window in ops; 0: a whole step
};

struct SessionOptions {
  std::string socket = kDefaultSocket;  // the daemon's gRPC socket
  std::string device;            // name, GPU UUID or ordinal; empty: the first
  std::optional<Policy> policy;  // empty: the daemon's default
  uint64_t device_quota_bytes = 0;  // 0: no per-session limit
  uint64_t host_quota_bytes = 0;
  std::string client_name;
  // This session's chunk size in bytes (a multiple of 256 within the
  // daemon's bounds, by default 64 KiB..1 GiB); 0: the daemon's.
  uint64_t chunk_size_bytes = 0;
  std::optional<PlacementOptions> placement;
  // Acquire and release through the shared-memory hot path (microseconds)
  // instead of a gRPC round trip, when the daemon offers one. Requests with
  // more than 64 tensors or a longer op key than 120 bytes use gRPC.
  bool hot_path = true;
};

struct DeviceInfo {
  std::string name;
  std::string uuid;
  std::string backend;  // "sim" or "cuda"
  uint64_t capacity_bytes = 0;
};

struct TensorInfo {
  uint64_t id = 0;
  uint64_t chunk_id = 0;
  uint64_t offset_in_chunk = 0;
  uint64_t bytes = 0;
};

struct AcquiredTensor {
  uint64_t id = 0;
  // Host memory (sim, or AcquireOnHost) or device memory (cuda).
  void* data = nullptr;
  uint64_t bytes = 0;
};

// What AcquireWherePlaced returns: where the policy put the tensors, and
// their addresses there (device memory, or host memory on sim and when
// !on_device).
struct PlacedTensors {
  bool on_device = false;
  std::vector<AcquiredTensor> tensors;
};

struct ChunkState {
  uint64_t id = 0;
  uint64_t bytes = 0;
  Group group = Group::kOther;
  bool on_device = false;
  bool dirty = false;
};

struct SessionStats {
  uint64_t bytes_to_device = 0;
  uint64_t bytes_to_host = 0;
  uint64_t evictions = 0;
  uint64_t clean_evictions = 0;
  uint64_t device_bytes = 0;
  uint64_t peak_device_bytes = 0;
  uint64_t host_bytes = 0;
  uint64_t chunks = 0;
  uint64_t tensors = 0;
  uint64_t acquires = 0;
  uint64_t device_pool_capacity = 0;
  uint64_t device_pool_used = 0;
  uint64_t host_pool_capacity = 0;
  uint64_t host_pool_used = 0;
  uint32_t sessions = 0;
  // Prefetch (auto): loads started ahead of use and their outcomes.
  uint64_t prefetches = 0;
  uint64_t prefetch_bytes = 0;
  uint64_t prefetch_hits = 0;  // arrived before the acquire
  uint64_t prefetch_late = 0;  // still in flight at the acquire
  // Of prefetch_late: issued only during the op just before the use.
  uint64_t prefetch_late_short_lead = 0;
  uint64_t prefetch_wasted = 0;  // evicted before any use
};

// Where an auto/static session's planner stands.
struct PlacementStatus {
  // "recording" (warm-up), "planned", "fallback" (left the plan; LRU until
  // the step ends, then re-recording) or "none" (cpu, cuda).
  std::string state = "none";
  uint64_t plan_ops = 0;
  uint64_t replans = 0;
  uint64_t planned_ops = 0;
  uint64_t unplanned_ops = 0;
  // AcquireWherePlaced calls served on the device / in the host homes so
  // far, and the optimizer-state bytes the plan keeps on the device.
  uint64_t updates_on_device = 0;
  uint64_t updates_on_host = 0;
  uint64_t kept_bytes = 0;
  // Known ops that came out of the recorded order (an evaluation pass)
  // and where the plan picked up again at their recorded position.
  uint64_t resyncs = 0;
  uint64_t steps = 0;
  std::string last_divergence;
};

class Session {
 public:
  // Connects to the daemon, opens a session and maps its pools.
  static absl::StatusOr<std::unique_ptr<Session>> Open(
      const SessionOptions& options);
  ~Session();  // closes the session; the daemon reclaims its memory

  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  // Registers tensors in the order the model first uses them. Returns one
  // TensorInfo per spec, in order. All or nothing.
  absl::StatusOr<std::vector<TensorInfo>> Register(
      const std::vector<TensorSpec>& specs);

  // Makes the tensors COMPUTE and returns their addresses, in order. On the
  // sim backend it returns once the bytes are in place. On cuda, work
  // enqueued on `stream` after this call sees the bytes (the stream waits on
  // the daemon's arrival event; no CPU thread blocks).
  absl::StatusOr<std::vector<AcquiredTensor>> Acquire(
      std::span<const uint64_t> tensor_ids, AccessMode mode,
      CudaStream stream = nullptr);

  // Makes the tensors COMPUTE in their host homes, for work on the CPU
  // (e.g. a CPU optimizer step over host-resident state): returns host
  // pointers once the bytes there are current (a dirty device copy is
  // written back first). kReadWrite drops the device copy, so nothing
  // moves back later. Release as usual. Not for policy kCuda, whose chunks
  // live only on the device.
  absl::StatusOr<std::vector<AcquiredTensor>> AcquireOnHost(
      std::span<const uint64_t> tensor_ids, AccessMode mode);

  // Makes the tensors COMPUTE where the session's policy places the update
  // they are for, such as the optimizer step of one parameter block
  // (gradient, master weights, moments): on the device, for GPU work
  // (ordered on `stream` as Acquire), or in their host homes, for CPU work
  // (as AcquireOnHost). `auto` keeps a block's state on the device when it
  // fits beside the parameters for the whole step and on the host
  // otherwise, re-deciding with every plan; `cuda`: device; `cpu`: host.
  // Not part of the op sequence: safe to call from a worker thread while
  // the trainer runs its ops. Release as usual.
  absl::StatusOr<PlacedTensors> AcquireWherePlaced(
      std::span<const uint64_t> tensor_ids, AccessMode mode,
      CudaStream stream = nullptr);

  // Ends COMPUTE: `target` is kHold (after forward), kHoldAfterBwd (after
  // backward) or kFree (contents no longer needed). On cuda, work already
  // enqueued on `stream` finishes before the daemon moves the chunks.
  //
  // Over the hot path a release is posted and not waited for: the daemon
  // runs it in order, before anything the session asks for next. If it
  // fails there (say, a tensor that was not acquired), the failure is
  // returned by the session's next Acquire, AcquireOnHost,
  // AcquireWherePlaced, Release, MarkStep, Flush or Close, whose message
  // says "an earlier Release failed"; that call then does nothing (Close
  // still closes). Requests over gRPC return their own failure, as ever.
  absl::Status Release(std::span<const uint64_t> tensor_ids, TensorState target,
                       CudaStream stream = nullptr);

  // Waits until the daemon has run every release posted so far and returns
  // the failure of one not yet returned, if any.
  absl::Status Flush();

  // Ops and steps, for `auto`. BeginOp names the op the following acquires
  // belong to, by a key stable across steps (module name + phase, such as
  // "layer3.mlp/fwd" — never a position), with the framework's allocated
  // non-model bytes (activations, workspaces) during it. It costs no round
  // trip: the key travels with the next acquires. MarkStep ends a training
  // step: the first step(s) are the warm-up the daemon records. Harmless
  // under other policies.
  void BeginOp(std::string key, uint64_t non_model_bytes = 0);
  absl::StatusOr<PlacementStatus> MarkStep();

  absl::StatusOr<SessionStats> Stats();
  absl::StatusOr<PlacementStatus> Placement();
  absl::StatusOr<std::vector<ChunkState>> Chunks();

  // Closes the session now (the destructor does it otherwise).
  absl::Status Close();

  uint64_t id() const;
  Policy policy() const;
  const DeviceInfo& device() const;
  uint64_t chunk_size() const;

  class Impl;

 private:
  explicit Session(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace tidepool
