// The daemon's engine: sessions, their tensors and chunks, the pools they
// live in, and the moves between them. Every RPC and the fd socket end up
// here. Copies are only *submitted* under the locks (the backends run them
// asynchronously), so a slow transfer never blocks other sessions'
// bookkeeping.
//
// Locking: `mu_` guards the shared core (the session and chunk maps, the
// allocators, the host slabs). A request that moves no memory and touches
// only its own session's state (an acquire of resident chunks, a release,
// when no plan drives prefetches) holds `mu_` shared and its session's
// own `mu`, so that sessions that share nothing run in parallel. Anything
// else (loads, evictions, opening and closing, every view) holds `mu_`
// exclusively, which excludes every shared holder and so needs no session
// lock. Hence: a session's fields and its chunks' are written under `mu_`
// exclusively, or under `mu_` shared plus the session's `mu`.
//
//   MemoryManager manager(options, std::move(host_pool), std::move(devices));
//   auto opened = manager.OpenSession({.policy = Policy::kCpu, .pid = pid});
//   auto placed = manager.Register(opened->id, opened->token, specs);
//   auto where = manager.Acquire(id, token, {tensor_id}, AccessMode::kRead);
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/unix_socket.h"
#include "daemon/backend/device_backend.h"
#include "daemon/memory/host_pool.h"
#include "daemon/memory/range_allocator.h"
#include "daemon/policy/eviction_index.h"
#include "daemon/policy/eviction_policy.h"
#include "daemon/policy/placement.h"
#include "daemon/registry/chunk_packer.h"
#include "daemon/registry/tensor_state.h"
#include "proto/convert.h"
#include "proto/wire.h"
#include "tidepool/types.h"

namespace tidepool {

using Token = std::array<uint8_t, wire::kTokenBytes>;

struct ManagerOptions {
  uint64_t chunk_size = 64ull << 20;
  Policy default_policy = Policy::kCpu;
  absl::Duration attach_timeout = absl::Seconds(10);
  // Limits on a single request, so that a bad client cannot make the daemon
  // do unbounded work.
  size_t max_tensors_per_request = 1 << 20;
  size_t max_name_bytes = 1024;
  size_t max_dims = 16;
  // Sessions open at once (each attached one has a hot-path thread).
  size_t max_sessions = 1024;
  // Residency events kept for tidepoolctl's timeline (a ring: the oldest
  // are overwritten). 0 disables the log.
  size_t residency_event_capacity = 100000;
  // Defaults of the `auto` and `static` policies (a session may override
  // them at open).
  PlacementConfig placement;
  // Bytes of an op's key, at most.
  size_t max_op_key_bytes = 1024;
  // A session may choose its own chunk size in [min, max] (and no larger
  // than the host pool), e.g. one searched for its model.
  uint64_t min_session_chunk_size = 64ull << 10;
  uint64_t max_session_chunk_size = 1ull << 30;
  // Sessions one process and one user may have open at once, counted by
  // the credentials of the connection that opened them (OpenParams::peer;
  // sessions opened without one count towards max_sessions only), so that
  // one client cannot take every slot.
  size_t max_sessions_per_pid = 64;
  size_t max_sessions_per_uid = 256;
  // Tensor metadata a session may make the daemon keep: tensors, and their
  // bookkeeping in bytes (TensorMetadataBytes). A session with a host
  // quota is charged the metadata against that quota too.
  size_t max_tensors_per_session = 1 << 19;
  uint64_t max_metadata_bytes_per_session = 64ull << 20;
};

struct OpenParams {
  std::string device;  // name, UUID or ordinal; empty: the first device
  std::optional<Policy> policy;
  uint64_t device_quota = 0;
  uint64_t host_quota = 0;
  int32_t pid = 0;
  std::string client_name;
  // `auto` / `static` settings; empty: the daemon's defaults.
  std::optional<PlacementConfig> placement;
  // This session's chunk size; 0: ManagerOptions::chunk_size.
  uint64_t chunk_size = 0;
  // Who opened it, as the kernel says (SO_PEERCRED of the gRPC
  // connection); absent in-process. pid 0: a peer outside the daemon's pid
  // namespace, whose pid cannot be checked.
  std::optional<PeerCredentials> peer;
};

struct OpenedSession {
  uint64_t id;
  Token token;
  Policy policy;
  const DeviceDescription* device;
  uint64_t chunk_size;
  uint64_t host_pool_bytes;
};

struct ChunkView {
  uint64_t id;
  uint64_t bytes;
  Group group;
  bool on_device;
  bool dirty;
  std::optional<uint64_t> host_offset;
  std::optional<uint64_t> device_offset;
};

struct TensorPlacementView {
  uint64_t tensor_id;
  uint64_t chunk_id;
  uint64_t offset_in_chunk;
  uint64_t bytes;
};

struct RegisterResult {
  std::vector<TensorPlacementView> tensors;
  std::vector<ChunkView> new_chunks;
};

struct TensorAddressView {
  uint64_t tensor_id;
  uint64_t device_offset;
  uint64_t bytes;
};

struct AcquireResult {
  std::vector<TensorAddressView> tensors;
  uint64_t ready_sequence;
  bool on_host = false;  // offsets are into the host pool
  // The session's mapping generation: the client must have mapped every
  // grant up to it (TakeGrants) before it touches the tensors.
  uint64_t map_generation = 0;
};

// A piece of a pool that one session's client must map at `offset` of its
// view of that pool: a chunk's host home, or a device slot (sim). Only the
// owning session's client ever receives `fd`.
struct MappingGrant {
  bool device = false;
  uint64_t offset = 0;
  uint64_t bytes = 0;
  uint64_t generation = 0;  // 1, 2, ... per session
  std::shared_ptr<UniqueFd> fd;
};

struct SessionStatsView {
  uint64_t id = 0;
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
  // Prefetch (auto): loads started ahead of the acquire that needs them,
  // and what became of them.
  uint64_t prefetches = 0;
  uint64_t prefetch_bytes = 0;
  uint64_t prefetch_hits = 0;  // arrived before the acquire
  uint64_t prefetch_late = 0;  // still in flight at the acquire
  // Of prefetch_late: issued only during the op just before the use, so the
  // link had at most that op's time to bring it (no room or no plan earlier).
  uint64_t prefetch_late_short_lead = 0;
  uint64_t prefetch_wasted = 0;  // evicted before any use
  // The daemon's heap held for the session's tensors (TensorMetadataBytes).
  uint64_t metadata_bytes = 0;
};

struct PoolStatsView {
  uint64_t capacity = 0;
  uint64_t used = 0;
  uint64_t peak = 0;
};

struct StatsView {
  SessionStatsView session;
  std::optional<PlacementStatsView> placement;  // auto and static only
  PoolStatsView device_pool;
  PoolStatsView host_pool;
  uint32_t sessions = 0;
};

enum class ReclaimReason { kClosed, kDisconnected, kAttachTimeout };
absl::string_view ReclaimReasonName(ReclaimReason reason);

// kHostAccess: the device copy is dropped because the client is about to
// write the host home (AcquireOnHost read-write).
enum class EvictionCause { kCapacity, kQuota, kHostAccess };
enum class PrefetchOutcome { kHit, kLate, kWasted };

// Told about events as they happen (for metrics); called under the
// manager's locks, so implementations must be quick and must not call back,
// and from several sessions' requests at once (OnPlacedUpdate), so they
// must be thread-safe.
class ManagerObserver {
 public:
  virtual ~ManagerObserver() = default;
  virtual void OnSessionOpened(size_t device, Policy policy) {}
  virtual void OnSessionReclaimed(size_t device, Policy policy,
                                  ReclaimReason reason) {}
  virtual void OnEviction(size_t device, EvictionCause cause, bool clean) {}
  virtual void OnPrefetch(size_t device, PrefetchOutcome outcome) {}
  // One successful AcquireWherePlaced (an optimizer update), served on the
  // device or in the host homes.
  virtual void OnPlacedUpdate(size_t device, bool on_device) {}
};

// A consistent picture of the daemon's memory, for scrapes and tidepoolctl.
struct ManagerSnapshot {
  static constexpr int kStates = 5;  // indexed by TensorState
  struct Device {
    PoolStatsView pool;
    // Chunk bytes by [on device?][state]; a chunk's state is its tensors'
    // most active one (COMPUTE > READY_FOR_REDUCE > HOLD_AFTER_BWD > HOLD >
    // FREE).
    uint64_t chunk_bytes[2][kStates] = {};
    std::map<Policy, int> sessions;
  };
  PoolStatsView host_pool;
  std::vector<Device> devices;
};

// Residency log (tidepoolctl timeline/trace): what happened to a chunk.
// Times are when the daemon decided the move (copies run asynchronously).
enum class ResidencyEventKind {
  kCreated,
  kLoaded,
  kEvicted,
  kAcquired,
  kReleased
};
absl::string_view ResidencyEventKindName(ResidencyEventKind kind);

struct ResidencyEventView {
  uint64_t sequence = 0;  // daemon-wide, increasing
  absl::Time time;
  uint64_t session_id = 0;
  uint64_t chunk_id = 0;
  ResidencyEventKind kind = ResidencyEventKind::kCreated;
  bool on_device = false;  // where the chunk is after the event
  bool dirty = false;      // evicted: a write-back was needed
};

// Admin views (tidepoolctl); no token needed.
struct SessionInfoView {
  uint64_t id = 0;
  int32_t pid = 0;
  std::string client_name;
  Policy policy = Policy::kCpu;
  size_t device = 0;
  bool attached = false;
  absl::Time opened_at;
  uint64_t device_quota = 0;
  uint64_t host_quota = 0;
  SessionStatsView stats;
};

struct ChunkDetailView {
  ChunkView chunk;
  TensorState state = TensorState::kFree;  // most active of its tensors
  bool computing = false;
  std::vector<std::string> tensors;  // names, in placement order
};

struct TraceView {
  struct Op {
    std::string key;
    std::vector<uint64_t> chunks;
    std::vector<uint64_t> written;
    uint64_t non_model_bytes = 0;
    uint64_t budget_bytes = 0;
  };
  struct Update {  // a placed acquire's chunks and where the plan runs it
    std::vector<uint64_t> chunks;
    bool on_device = false;
  };
  Policy policy = Policy::kAuto;
  PlacementStatsView stats;
  std::vector<Op> ops;
  std::vector<Update> updates;
  uint64_t measured_capacity = 0;
};

struct TimelineView {
  std::vector<ResidencyEventView> events;  // oldest first
  std::vector<ChunkDetailView> chunks;     // empty once the session ended
  bool truncated = false;  // older events of the session were overwritten
};

// What the fd socket sends a freshly attached client.
struct AttachGrant {
  DeviceBackend* backend;
  uint64_t host_pool_bytes;  // the size of the client's host-pool view
};

class MemoryManager {
 public:
  MemoryManager(ManagerOptions options, HostPool host_pool,
                std::vector<std::unique_ptr<DeviceBackend>> devices);
  ~MemoryManager();

  absl::StatusOr<OpenedSession> OpenSession(const OpenParams& params);
  absl::Status CloseSession(uint64_t id, const Token& token);
  absl::StatusOr<RegisterResult> Register(uint64_t id, const Token& token,
                                          const std::vector<TensorSpec>& specs);
  // `op`, when given, names the op the acquire belongs to (auto's trace and
  // plan); a new `op->seq` starts a new op.
  absl::StatusOr<AcquireResult> Acquire(uint64_t id, const Token& token,
                                        const std::vector<uint64_t>& tensors,
                                        AccessMode mode,
                                        const OpContext* op = nullptr);
  // Makes the tensors COMPUTE in their host homes, for work on the CPU (the
  // optimizer's host-resident shards): a dirty device copy is written back
  // first; a read-write acquire also drops the device copy, which the
  // client is about to make stale. Offsets in the result are into the host
  // pool. Chunks without a host home (policy cuda) are refused.
  absl::StatusOr<AcquireResult> AcquireOnHost(
      uint64_t id, const Token& token, const std::vector<uint64_t>& tensors,
      AccessMode mode);
  // Makes the tensors COMPUTE where the session's policy places the update
  // they are for (the optimizer step of a parameter block): on the device
  // (as Acquire) or in their host homes (as AcquireOnHost); the result says
  // which. Not an op of the step: it may come from another thread at any
  // time. auto records it during warm-up and then follows the plan; cuda:
  // device; cpu, and auto while not planned: host.
  absl::StatusOr<AcquireResult> AcquireWherePlaced(
      uint64_t id, const Token& token, const std::vector<uint64_t>& tensors,
      AccessMode mode);
  // The client finished a training step (auto: ends warm-up recording,
  // re-synchronises the plan). Sessions of other policies: a no-op.
  absl::StatusOr<std::optional<PlacementStatsView>> MarkStep(
      uint64_t id, const Token& token);
  absl::Status Release(uint64_t id, const Token& token,
                       const std::vector<uint64_t>& tensors,
                       TensorState target);
  absl::StatusOr<StatsView> Stats(uint64_t id, const Token& token);
  absl::StatusOr<std::vector<ChunkView>> Chunks(uint64_t id,
                                                const Token& token);

  // fd socket: checks the token and that the peer is the process that
  // opened the session, then marks the session attached.
  absl::StatusOr<AttachGrant> Attach(const wire::AttachRequest& request,
                                     const PeerCredentials& peer);
  // The session's fd-socket connection closed: reclaim it (no-op when the
  // session already closed).
  void Detached(uint64_t id);
  // Reclaims sessions that did not attach within the timeout.
  void ReapUnattached(absl::Time now);
  // Up to `max` of the session's mapping grants not yet taken, oldest first
  // (the fd socket passes them to the session's client, and to no one
  // else). Empty for an unknown session.
  std::vector<MappingGrant> TakeGrants(uint64_t session_id, size_t max);

  // Not owned; must outlive the manager. Set before serving.
  void SetObserver(ManagerObserver* observer) { observer_ = observer; }

  // Daemon-wide views for metrics and tests.
  ManagerSnapshot Snapshot() const;
  size_t session_count() const;
  // Compares the incremental indexes (residency, eviction order, busy
  // tensors, host slabs' homes) with a scan of every chunk; INTERNAL naming the
  // first difference. O(n): for tests.
  absl::Status CheckIndexes() const;
  // Tensor metadata of all open sessions, in bytes (0 once all closed).
  uint64_t metadata_bytes() const;
  // The daemon's heap a registered tensor with a name of `name_bytes`
  // costs, as charged to its session.
  static uint64_t TensorMetadataBytes(size_t name_bytes);
  PoolStatsView host_pool_stats() const;
  PoolStatsView device_pool_stats(size_t device) const;
  const std::vector<std::unique_ptr<DeviceBackend>>& devices() const {
    return devices_;
  }
  const ManagerOptions& options() const { return options_; }

  // Admin views for tidepoolctl. An unknown session id is NOT_FOUND.
  std::vector<SessionInfoView> ListSessions() const;
  absl::StatusOr<std::vector<ChunkDetailView>> SessionChunks(uint64_t id) const;
  // The session's most recent `max_events` residency events (0: all still
  // in the ring). A session that ended still has its recorded events.
  absl::StatusOr<TimelineView> Timeline(uint64_t id, size_t max_events) const;
  // The recorded warm-up trace of an auto session (FAILED_PRECONDITION for
  // policies that record none).
  absl::StatusOr<TraceView> RecordedTrace(uint64_t id) const;
  uint64_t residency_events_recorded() const;
  absl::Time started_at() const { return started_at_; }

 private:
  struct Tensor {
    uint64_t id;
    std::string name;
    DType dtype;
    Group group;
    uint64_t chunk_id;
    uint64_t offset;
    uint64_t bytes;
    TensorState state = TensorState::kFree;
    bool on_host = false;  // COMPUTE through the host pool (AcquireOnHost)
  };
  struct Chunk {
    uint64_t id;
    uint64_t session_id;
    size_t device;
    Group group;
    uint64_t bytes;
    std::optional<uint64_t> host_offset;    // absent: device-only (cuda)
    std::optional<uint64_t> host_slab;      // the slab its home is in
    std::optional<uint64_t> device_offset;  // present: resident
    bool dirty = false;  // the device copy is newer than the host home
    int compute_count = 0;
    int host_compute_count = 0;        // of compute_count, acquired on the host
    uint64_t host_ready_sequence = 0;  // the write-back a host reader awaits
    uint64_t last_use_tick = 0;
    uint64_t arrival_sequence = 0;   // the load that brought it in
    bool prefetched = false;         // loaded ahead of use, not yet acquired
    uint64_t prefetch_acquires = 0;  // the session's acquires at the prefetch
    std::vector<uint64_t> tensors;
    int busy_tensors = 0;  // of `tensors`, those not FREE
  };
  struct Session {
    // With mu_ shared: this session's requests (see the top of the file).
    // Behind a pointer so that a Session stays movable.
    std::unique_ptr<absl::Mutex> mu = std::make_unique<absl::Mutex>();
    uint64_t id;
    Token token;
    Policy policy;
    size_t device;
    uint64_t device_quota;
    uint64_t host_quota;
    int32_t pid;
    std::string client_name;
    std::optional<PeerCredentials> peer;  // OpenParams::peer
    bool attached = false;
    absl::Time opened_at;
    ChunkPacker packer;
    std::map<uint64_t, Tensor> tensors;
    std::vector<uint64_t> chunks;  // registration order
    // Its chunks with a device copy, and of those the ones that may be
    // evicted now (Reindex keeps both).
    std::set<uint64_t> resident;
    std::set<uint64_t> dirty_resident;  // of those, the dirty ones
    // Chunks the plan's ops touch that are not resident, counted for plan
    // generation `counted_plan` (0: not counted): none means nothing to
    // prefetch, known in O(1) (PlanPrefetchWork).
    uint64_t counted_plan = 0;
    size_t plan_missing = 0;
    EvictionIndex evictable;
    SessionStatsView stats;
    // auto and static: the session's placement state; null otherwise.
    std::unique_ptr<SessionPlacement> placement;
    // Pieces of the pools its client has yet to map (TakeGrants).
    std::deque<MappingGrant> grants;
    uint64_t grant_generation = 0;
  };
  struct Device {
    std::unique_ptr<RangeAllocator> allocator;
    // Its open sessions, whose eviction indexes together order every chunk
    // on the device that may be evicted now (DeviceVictim).
    std::set<uint64_t> sessions;
  };

  absl::StatusOr<Session*> Authenticate(uint64_t id, const Token& token)
      ABSL_SHARED_LOCKS_REQUIRED(mu_);
  // A request's tensor list: not empty, within max_tensors_per_request.
  absl::Status CheckRequestSize(const std::vector<uint64_t>& tensor_ids) const;
  // Checks that every tensor may become COMPUTE (registered here, listed
  // once, legal transition, its chunk not in use on the other side) and
  // returns their chunks in first-use order.
  // Holds mu_ shared and the session's lock, or mu_ exclusively; so do the
  // helpers below marked ABSL_SHARED_LOCKS_REQUIRED(mu_).
  absl::StatusOr<std::vector<uint64_t>> CheckAcquire(
      const Session& session, const std::vector<uint64_t>& tensor_ids,
      bool on_host) const ABSL_SHARED_LOCKS_REQUIRED(mu_);
  // What the placement wants done ahead of use now (auto, planned):
  // write-backs of chunks a host update takes next, and loads. Changes
  // nothing, so a request can ask without the core whether it needs it.
  struct PrefetchWork {
    std::vector<uint64_t> write_backs;
    std::vector<PrefetchAction> actions;
    bool empty() const { return write_backs.empty() && actions.empty(); }
  };
  // What an acquire served without the core leaves for the core to do:
  // the limit a new op set (auto, static) is exceeded, or the plan wants
  // write-backs or loads ahead.
  struct CoreWork {
    bool enforce_limit = false;
    PrefetchWork prefetch;  // planned after the acquire
    bool any() const { return enforce_limit || !prefetch.empty(); }
  };
  // An acquire that moves no memory now (see the top of the file): its
  // chunks resident (or, on the host, no device copy to write back or
  // drop). nullopt: it needs more, and nothing was changed. With `work`
  // (Acquire: a device acquire of the op sequence, `op` as there) the
  // placement sees the op, and `work` says what the core must do after;
  // null for the acquires that are no ops (on the host, placed).
  absl::StatusOr<std::optional<AcquireResult>> AcquireWithoutMoves(
      Session& session, const std::vector<uint64_t>& tensor_ids,
      AccessMode mode, bool on_host, const OpContext* op, CoreWork* work)
      ABSL_SHARED_LOCKS_REQUIRED(mu_);
  // Tells the session's placement (if any) of a device acquire of `needed`
  // chunks; true when it began a new op.
  bool NoteOp(Session& session, const std::vector<uint64_t>& needed,
              AccessMode mode, const OpContext* op)
      ABSL_SHARED_LOCKS_REQUIRED(mu_);
  // Counts the prefetched chunks among `needed` as hits or late ones.
  void NotePrefetchUse(Session& session, const std::vector<uint64_t>& needed)
      ABSL_SHARED_LOCKS_REQUIRED(mu_);
  void DoCoreWork(Session& session, const CoreWork& work)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Makes the checked tensors (of `needed` chunks, every one resident when
  // !on_host) COMPUTE, records the acquire and says where they are.
  AcquireResult EnterCompute(Session& session,
                             const std::vector<uint64_t>& tensor_ids,
                             const std::vector<uint64_t>& needed,
                             AccessMode mode, bool on_host)
      ABSL_SHARED_LOCKS_REQUIRED(mu_);
  // Where an update's tensors are (AcquireWherePlaced): their chunks, and
  // whether all have host homes and all a device copy not in host use.
  struct UpdateSite {
    std::vector<SessionPlacement::Touch> touches;
    bool host_homes = true;
    bool resident = true;
  };
  absl::StatusOr<UpdateSite> LocateUpdate(
      const Session& session, const std::vector<uint64_t>& tensor_ids,
      AccessMode mode) const ABSL_SHARED_LOCKS_REQUIRED(mu_);
  // Release's checks and transitions, without the prefetch it may start.
  absl::Status ReleaseTensors(Session& session,
                              const std::vector<uint64_t>& tensor_ids,
                              TensorState target)
      ABSL_SHARED_LOCKS_REQUIRED(mu_);
  // The bodies of Acquire (`sequenced`: part of the op sequence auto
  // traces and plans) and AcquireOnHost, after authentication.
  absl::StatusOr<AcquireResult> AcquireOnDevice(
      Session& session, const std::vector<uint64_t>& tensor_ids,
      AccessMode mode, const OpContext* op, bool sequenced)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<AcquireResult> AcquireInHostHome(
      Session& session, const std::vector<uint64_t>& tensor_ids,
      AccessMode mode) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<size_t> ResolveDevice(const std::string& name) const;
  // Makes room for `bytes` in `session`'s device pool (and quota), adding
  // write-backs of victims to `batch`. `pinned` chunks are never victims.
  absl::Status MakeRoom(Session& session, uint64_t bytes,
                        const std::vector<uint64_t>& pinned, CopyBatch& batch)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Evict(Chunk& chunk, EvictionCause cause, CopyBatch& batch)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The device's next victim in LRU order (the least of its sessions'
  // first candidates that are not `skip`).
  std::optional<uint64_t> DeviceVictim(
      size_t device, const std::function<bool(uint64_t)>& skip) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Brings the chunk's entries in its session's indexes (resident,
  // evictable) up to date after its residency, use count, last use or
  // dirtiness changed. O(log n).
  void Reindex(const Chunk& chunk) ABSL_SHARED_LOCKS_REQUIRED(mu_);
  // A tensor of `chunk` goes from `from` to `to` (busy_tensors).
  static void CountTransition(Chunk& chunk, TensorState from, TensorState to);
  // Adds a copy of the chunk's device bytes to its host home to `batch`;
  // the chunk is clean after it, and SubmitBatch makes host readers wait.
  void QueueWriteBack(Chunk& chunk, Session& owner, CopyBatch& batch)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The session's own movable device chunks, except `pinned`.
  std::vector<EvictionCandidate> OwnCandidates(
      const Session& session, const std::vector<uint64_t>& pinned) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // A new op began: evicts (the placement's choice) until the session is
  // within its placement's limit, or nothing of it can move.
  void EnforceLimit(Session& session, const std::vector<uint64_t>& pinned,
                    CopyBatch& batch) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  PrefetchWork PlanPrefetchWork(Session& session) const
      ABSL_SHARED_LOCKS_REQUIRED(mu_);
  // The chunks `plan`'s ops touch that are not among the session's
  // resident ones, counted afresh (what Session::plan_missing keeps).
  static size_t PlanChunksOffDevice(const Session& session, const Plan& plan);
  // Starts that work, as planned now (RunPrefetch) or earlier without the
  // core (ApplyPrefetch: each step is checked against the state now).
  void RunPrefetch(Session& session) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void ApplyPrefetch(Session& session, const PrefetchWork& work)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // A host home carved out of a slab (HostSlab).
  struct HostHome {
    uint64_t slab;
    uint64_t offset;
  };
  // `home`: where the chunk's host home is, in a slab PlanHostHomes made;
  // absent: a slab of one.
  absl::StatusOr<uint64_t> CreateChunk(Session& session, Group group,
                                       uint64_t bytes, CopyBatch& batch,
                                       std::optional<HostHome> home)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Host homes for the chunks a Register of `sizes` will create, in order,
  // packed into slabs: one memfd, one pin and one mapping for many homes,
  // so that neither the daemon nor the client spends a mapping (the kernel
  // allows 65530 per process) and a descriptor per chunk. An entry is
  // absent where no slab could be had (the chunk gets a home of its own).
  std::vector<std::optional<HostHome>> PlanHostHomes(
      Session& session, const std::vector<TensorSpec>& specs,
      const std::vector<uint64_t>& sizes) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // A slab of `bytes` for `homes` chunks of `session`: allocated, backed by
  // a fresh memfd, pinned, and granted to the session's client.
  absl::StatusOr<uint64_t> NewHostSlab(Session& session, uint64_t bytes,
                                       int homes)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // A chunk of the slab is gone (or was never made): the last one frees
  // the slab's pages and range.
  void ReleaseSlabHome(uint64_t slab) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void DestroyChunk(uint64_t chunk_id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // A device slot for a chunk of `owner`: allocated (a slot parked for the
  // owner first), backed, and granted to the owner's client when new.
  absl::StatusOr<uint64_t> PlaceSlot(Session& owner, uint64_t bytes,
                                     CopyBatch& batch)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void FreeSlot(size_t device, uint64_t owner, uint64_t offset, uint64_t bytes)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Grant(Session& session, bool device, uint64_t offset, uint64_t bytes,
             std::shared_ptr<UniqueFd> fd) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Reclaim(uint64_t id, ReclaimReason reason) ABSL_LOCKS_EXCLUDED(mu_);
  static TensorState ChunkState(const Chunk& chunk, const Session& session);
  absl::StatusOr<uint64_t> SubmitBatch(size_t device, CopyBatch batch)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  static ChunkView View(const Chunk& chunk);
  ChunkDetailView Detail(const Chunk& chunk, const Session& session) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void RecordEvent(const Chunk& chunk, ResidencyEventKind kind,
                   bool dirty = false) ABSL_SHARED_LOCKS_REQUIRED(mu_)
      ABSL_LOCKS_EXCLUDED(events_mu_);

  const ManagerOptions options_;
  const absl::Time started_at_ = absl::Now();
  ManagerObserver* observer_ = nullptr;
  ManagerObserver null_observer_;
  ManagerObserver& observer() {
    return observer_ ? *observer_ : null_observer_;
  }
  HostPool host_pool_;
  std::vector<std::unique_ptr<DeviceBackend>> devices_;

  mutable absl::Mutex mu_;
  RangeAllocator host_allocator_ ABSL_GUARDED_BY(mu_);
  std::vector<Device> device_state_ ABSL_GUARDED_BY(mu_);
  std::map<uint64_t, Session> sessions_ ABSL_GUARDED_BY(mu_);
  std::map<uint64_t, Chunk> chunks_ ABSL_GUARDED_BY(mu_);
  // Host slabs by offset: several chunks' homes of one session, made by one
  // Register, backed by one memfd. They live as long as their chunks, which
  // all go together (the session's end, or the Register's undo).
  struct HostSlab {
    uint64_t bytes = 0;
    size_t device = 0;  // pinned for this device's copies
    int homes = 0;      // chunks planned in it and not yet destroyed
  };
  std::map<uint64_t, HostSlab> host_slabs_ ABSL_GUARDED_BY(mu_);
  uint64_t next_session_id_ ABSL_GUARDED_BY(mu_) = 1;
  uint64_t next_chunk_id_ ABSL_GUARDED_BY(mu_) = 1;
  uint64_t next_tensor_id_ ABSL_GUARDED_BY(mu_) = 1;
  // Orders uses for LRU across sessions; requests of different sessions
  // take ticks concurrently.
  std::atomic<uint64_t> tick_{0};
  // The residency log: a ring of options_.residency_event_capacity events;
  // event n (0-based, counting every one recorded) is at n % capacity.
  // Its own lock, taken last: sessions' requests record concurrently.
  mutable absl::Mutex events_mu_ ABSL_ACQUIRED_AFTER(mu_);
  std::vector<ResidencyEventView> events_ ABSL_GUARDED_BY(events_mu_);
  uint64_t events_recorded_ ABSL_GUARDED_BY(events_mu_) = 0;
};

}  // namespace tidepool
