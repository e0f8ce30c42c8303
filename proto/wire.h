// Wire formats that do not travel over gRPC: the fd-socket handshake that
// hands a session its control and hot-path pages, the mapping requests over
// the same connection that hand it the pieces of the pools its chunks live
// in, and the per-device control page in shared memory that carries the
// arrival sequence.
//
// Everything here is plain data with fixed layout: offsets, never pointers;
// atomics are lock-free so that they work across processes.
#pragma once

#include <atomic>
#include <cstdint>

namespace tidepool::wire {

inline constexpr uint32_t kAttachMagic = 0x31415054;  // "TPA1"
// 3: pools come in per-session pieces (MapRequest); the control page is
// read-only.
inline constexpr uint32_t kAttachVersion = 3;
inline constexpr size_t kTokenBytes = 16;
inline constexpr size_t kCudaIpcHandleBytes = 64;  // cudaIpcEventHandle_t

// Client -> daemon, the first message on a fresh fd-socket connection. The
// connection then stays open for the session's lifetime: when it closes
// (the client exited or died), the session is reclaimed. After the reply
// the client sends only MapRequests.
struct AttachRequest {
  uint32_t magic;
  uint32_t version;
  uint64_t session_id;
  uint8_t token[kTokenBytes];
  // cuda backend: the client's "released" interprocess event, which the
  // daemon's copy streams wait on before moving this session's chunks.
  uint8_t has_release_event;
  uint8_t release_event[kCudaIpcHandleBytes];
};

enum class Backend : uint32_t { kSim = 1, kCuda = 2 };

// Daemon -> client. On success the fds arrive with it, in this order: the
// control page (map it read-only), the session's hot-path channel (HotPath
// below) and, on cuda, the device pool's VMM POSIX fd. The host pool (and
// the sim device pool) are address space the client reserves, of the sizes
// given, in which it maps the pieces that MapReplies hand it.
struct AttachReply {
  uint32_t magic;
  int32_t status_code;  // absl::StatusCode
  char message[256];
  Backend backend;
  int32_t device_ordinal;
  uint64_t host_pool_bytes;
  uint64_t device_pool_bytes;
  uint64_t control_page_bytes;
  uint64_t hot_path_bytes;
  uint32_t fd_count;
  // cuda backend: event recorded on the host->device copy stream after
  // every batch; a client stream waits on it to see the bytes arrive.
  uint8_t arrival_event[kCudaIpcHandleBytes];
};

// Client -> daemon on an attached connection: "send me my pending pieces".
inline constexpr uint32_t kMapMagic = 0x4d505054;   // "TPPM"
inline constexpr uint32_t kMaxPiecesPerReply = 16;  // fds per message

struct MapRequest {
  uint32_t magic;
  uint32_t reserved;
};

// Daemon -> client: up to kMaxPiecesPerReply pieces, one fd each (in
// order), for the client to map at `offset` of its view of the pool named.
// `generation` counts the session's pieces (1, 2, ...); a reply with count 0
// means nothing is pending.
struct MapPiece {
  uint32_t device;  // 0: host pool, 1: device pool
  uint32_t reserved;
  uint64_t offset;
  uint64_t bytes;
  uint64_t generation;
};

struct MapReply {
  uint32_t magic;
  uint32_t count;
  MapPiece pieces[kMaxPiecesPerReply];
};

inline constexpr uint32_t kControlMagic = 0x4c435054;  // "TPCL"

// One per device, shared by the daemon and every client of that device;
// clients map it read-only (its memfd is sealed against writable mappings).
struct ControlPage {
  uint32_t magic;
  uint32_t version;
  // Host->device copies submitted with sequence <= this value are complete.
  std::atomic<uint64_t> arrived_sequence;
  // Bumped after every advance of arrived_sequence; clients futex-wait here.
  std::atomic<uint32_t> arrived_wake;
  uint32_t reserved;
};

static_assert(std::atomic<uint64_t>::is_always_lock_free);
static_assert(std::atomic<uint32_t>::is_always_lock_free);

// The hot path: acquire and release without a gRPC round trip. One per
// session, in a memfd both sides map: a ring of kHotPathRing request
// entries the client fills and as many completion entries the daemon
// fills. Request k (k = 1, 2, ...) lives in requests[(k - 1) % kHotPathRing]
// and is published by storing k into that entry's `seq` after the request;
// its completion lives at the same index of `completions`, published the
// same way. The daemon serves requests strictly in order, one at a time.
// The client posts request k only after reading completion k - kHotPathRing
// (so neither side overwrites an entry the other still reads). Releases are
// posted without waiting; an acquire waits for its own completion and so
// for every request before it.
//
// Doorbells: after publishing, each side bumps its bell and futex-wakes it
// only if the other side said it may sleep (`*_sleeping`; the sleeper sets
// it, re-checks the entry, then futex-waits on the bell: seq_cst on both
// sides, so either the sleeper sees the entry or the poster sees the flag).
// Both sides spin first (common/spin_wait.h), adaptively.
//
// Requests that do not fit (more tensors or a longer op key) go over gRPC.
// Everything the client wrote is copied and checked by the daemon before
// use: garbage (an entry `seq` that is neither the old nor the expected
// value, bad counts, unknown operations) gets an error completion for the
// entry the daemon expected next, nothing else. Version 2: the ring (1 had
// one slot each way). Version 3: step marks (kMarkStep) travel the ring
// too, so that a step costs the daemon no gRPC thread, whose wake-ups
// preempt the spinning ends (common/spin_wait.h backs off for a while
// after a preemption). Version 4: each entry carries when it was posted,
// so that an end that slept can tell how soon after its spin gave up the
// other end posted (common/spin_wait.h), not only when it woke up.
inline constexpr uint32_t kHotPathMagic = 0x50485054;  // "TPHP"
inline constexpr uint32_t kHotPathVersion = 4;
inline constexpr uint32_t kHotPathRing = 16;
inline constexpr uint32_t kHotPathMaxTensors = 64;
inline constexpr uint32_t kHotPathMaxKey = 120;
inline constexpr uint32_t kHotPathMaxPlacement = 256;

enum class HotPathOp : uint32_t {
  kAcquire = 1,        // arg: tidepool.v1.AccessMode value
  kAcquireOnHost = 2,  // arg: tidepool.v1.AccessMode value
  kRelease = 3,        // arg: tidepool.v1.TensorState value
  kAcquirePlaced = 4,  // arg: tidepool.v1.AccessMode value
  kMarkStep = 5,       // no tensors, arg 0; as the MarkStep RPC
};

struct HotPathRequest {
  uint32_t op;  // HotPathOp
  uint32_t arg;
  uint32_t count;    // tensor ids used
  uint32_t key_len;  // bytes of op_key used; 0: no op context
  uint64_t op_seq;
  uint64_t non_model_bytes;
  // How many failed completions the client had read when it posted this
  // request. The daemon counts the failed completions it posted; an
  // acquire whose count is behind (an earlier request, a release posted
  // without waiting, failed and the client did not know yet) is not run:
  // it completes with kAborted, so the client can return the earlier
  // failure without holding tensors it does not know it holds.
  uint64_t failures_seen;
  char op_key[kHotPathMaxKey];
  uint64_t tensor_ids[kHotPathMaxTensors];
};

struct HotPathCompletion {
  int32_t status_code;  // absl::StatusCode
  uint32_t count;
  uint32_t on_host;          // acquires: offsets are into the host pool
  uint32_t placement_bytes;  // kMarkStep: bytes of `placement` used
  uint64_t ready_sequence;
  uint64_t map_generation;  // as AcquireResponse.map_generation
  char message[320];        // long enough for every error the manager returns
  uint64_t offsets[kHotPathMaxTensors];  // into the pool the op names
  uint64_t sizes[kHotPathMaxTensors];
  // kMarkStep of an auto or static session: its tidepool.v1.PlacementStatus,
  // serialized, last_divergence shortened to fit; 0 bytes otherwise.
  char placement[kHotPathMaxPlacement];
};

struct HotPathRequestEntry {
  alignas(64) std::atomic<uint64_t> seq;  // k once request k is in place
  // CLOCK_MONOTONIC ns when the client posted it. Only a hint for the
  // daemon's spin: a wrong value costs at most a bounded spin.
  std::atomic<uint64_t> posted_ns;
  HotPathRequest request;
};

struct HotPathCompletionEntry {
  alignas(64) std::atomic<uint64_t> seq;  // k once completion k is in place
  std::atomic<uint64_t> posted_ns;        // CLOCK_MONOTONIC ns, as above
  HotPathCompletion completion;
};

struct HotPath {
  uint32_t magic;
  uint32_t version;       // kHotPathVersion
  uint32_t ring_entries;  // kHotPathRing
  // Client -> daemon doorbell, and the daemon's "I may sleep on it".
  alignas(64) std::atomic<uint32_t> request_bell;
  std::atomic<uint32_t> daemon_sleeping;
  // Daemon -> client doorbell, and the client's "I may sleep on it".
  alignas(64) std::atomic<uint32_t> completion_bell;
  std::atomic<uint32_t> client_sleeping;
  HotPathRequestEntry requests[kHotPathRing];
  HotPathCompletionEntry completions[kHotPathRing];
};

// Where request or completion k (k >= 1) lives.
inline constexpr uint32_t HotPathIndex(uint64_t k) {
  return static_cast<uint32_t>((k - 1) % kHotPathRing);
}

}  // namespace tidepool::wire
