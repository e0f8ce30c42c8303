// Wire formats that do not travel over gRPC: the fd-socket handshake that
// hands a session its pool file descriptors, and the per-device control page
// in shared memory that carries the sim backend's arrival sequence.
//
// Everything here is plain data with fixed layout: offsets, never pointers;
// atomics are lock-free so that they work across processes.
#pragma once

#include <atomic>
#include <cstdint>

namespace tidepool::wire {

inline constexpr uint32_t kAttachMagic = 0x31415054;  // "TPA1"
inline constexpr uint32_t kAttachVersion = 1;
inline constexpr size_t kTokenBytes = 16;
inline constexpr size_t kCudaIpcHandleBytes = 64;  // cudaIpcEventHandle_t

// Client -> daemon, the first and only message on a fresh fd-socket
// connection. The connection then stays open for the session's lifetime:
// when it closes (the client exited or died), the session is reclaimed.
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

// Daemon -> client. On success the fds arrive with it, in this order:
// host pool memfd, device pool fd (memfd or VMM POSIX fd), control page.
struct AttachReply {
  uint32_t magic;
  int32_t status_code;  // absl::StatusCode
  char message[256];
  Backend backend;
  int32_t device_ordinal;
  uint64_t host_pool_bytes;
  uint64_t device_pool_bytes;
  uint64_t control_page_bytes;
  uint32_t fd_count;
  // cuda backend: event recorded on the host->device copy stream after
  // every batch; a client stream waits on it to see the bytes arrive.
  uint8_t arrival_event[kCudaIpcHandleBytes];
};

inline constexpr uint32_t kControlMagic = 0x4c435054;  // "TPCL"

// One per device, shared by the daemon and every client of that device.
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

}  // namespace tidepool::wire
