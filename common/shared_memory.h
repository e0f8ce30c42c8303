// Shared memory regions backed by memfd: created by the daemon, passed to
// clients as file descriptors and mapped MAP_SHARED on both sides.
//
// Every memfd is sealed against shrinking and growing at creation, so a
// client that truncates what it was given cannot make the daemon (or
// another client) fault. Pages that only the daemon writes are also sealed
// against new writable mappings (SealAgainstWrites) after the daemon mapped
// them, and clients map them read-only.
//
// A pool is a ReservedRegion: address space reserved once, in which pieces
// backed by separate memfds are mapped at fixed offsets as they are handed
// out. Each client maps only the pieces of its own session, so the MMU, not
// trust, keeps sessions apart.
//
//   auto fd = CreateMemfd("tidepool-chunk", bytes);       // sealed
//   auto region = ReservedRegion::Reserve(pool_bytes, ReservedRegion::kDaemon);
//   region->MapAt(offset, bytes, fd->get());
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "common/unique_fd.h"

namespace tidepool {

// A MAP_SHARED mapping of a file descriptor; unmapped on destruction.
class SharedMapping {
 public:
  SharedMapping() = default;
  SharedMapping(SharedMapping&& other) noexcept;
  SharedMapping& operator=(SharedMapping&& other) noexcept;
  SharedMapping(const SharedMapping&) = delete;
  SharedMapping& operator=(const SharedMapping&) = delete;
  ~SharedMapping();

  // Maps `size` bytes of `fd` read-write.
  static absl::StatusOr<SharedMapping> Map(int fd, size_t size);
  // Maps `size` bytes of `fd` read-only (pages the daemon alone writes).
  static absl::StatusOr<SharedMapping> MapReadOnly(int fd, size_t size);

  uint8_t* data() const { return data_; }
  size_t size() const { return size_; }

  // Takes ownership of an existing mapping.
  static SharedMapping Adopt(uint8_t* data, size_t size) {
    SharedMapping m;
    m.data_ = data;
    m.size_ = size;
    return m;
  }

 private:
  uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

// Creates an anonymous memfd of `size` bytes (zero-filled), sealed against
// shrinking and growing.
absl::StatusOr<UniqueFd> CreateMemfd(const std::string& name, size_t size);

// Seals `fd` against writable mappings made from now on (and against further
// seals); mappings made before, such as the daemon's own, stay writable.
absl::Status SealAgainstWrites(int fd);

// Address space of a fixed size in which memfd-backed pieces are mapped at
// chosen offsets. Unbacked space is PROT_NONE in a client (touching it
// faults the client alone) and private zero memory in the daemon (a late
// copy into a range whose backing was withdrawn lands nowhere harmful).
class ReservedRegion {
 public:
  enum Kind { kClient, kDaemon };
  ReservedRegion() = default;
  ReservedRegion(ReservedRegion&& other) noexcept;
  ReservedRegion& operator=(ReservedRegion&& other) noexcept;
  ReservedRegion(const ReservedRegion&) = delete;
  ReservedRegion& operator=(const ReservedRegion&) = delete;
  ~ReservedRegion();

  static absl::StatusOr<ReservedRegion> Reserve(size_t size, Kind kind);

  // Maps `bytes` of `fd` (from its start) read-write at `offset`, replacing
  // whatever was mapped there. `offset` and `bytes` must be page-aligned.
  absl::Status MapAt(uint64_t offset, uint64_t bytes, int fd);
  // Withdraws the backing of [offset, offset + bytes): the pages are
  // punched out of their memfd (so every other mapping of it, such as a
  // client's, sees zeros from now on and the memory is freed) and the
  // range is reserved space again.
  absl::Status Withdraw(uint64_t offset, uint64_t bytes);

  uint8_t* data() const { return data_; }
  size_t size() const { return size_; }

 private:
  absl::Status Check(uint64_t offset, uint64_t bytes) const;
  absl::Status Unback(uint64_t offset, uint64_t bytes);

  uint8_t* data_ = nullptr;
  size_t size_ = 0;
  Kind kind_ = kClient;
};

// Size of the file behind `fd`.
absl::StatusOr<size_t> FdSize(int fd);

}  // namespace tidepool
