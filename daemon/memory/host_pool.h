// The node's pinned host memory pool, in which every chunk has its host home.
//
// The pool is address space reserved once in the daemon. Each backed range
// (a slab of one session's host homes) is a memfd of its own, mapped at its
// offset when its chunks are created; the fd goes to the session's client
// (which maps it at the same offset of its own reservation) and to no one else,
// so a client can reach its own homes only. Destroying the home punches its
// pages out of the memfd, so nothing of it outlives the chunk, whoever still
// maps it.
//
//   auto pool = HostPool::Create(64ull << 30);
//   auto fd = pool->Back(offset, bytes);   // send *fd to the owner
//   ... pool->data() + offset is the home, zero-filled ...
//   pool->Withdraw(offset, bytes);
#pragma once

#include <cstdint>

#include "absl/status/statusor.h"
#include "common/shared_memory.h"
#include "common/unique_fd.h"

namespace tidepool {

class HostPool {
 public:
  static absl::StatusOr<HostPool> Create(uint64_t bytes);

  // Backs [offset, offset + bytes) with a fresh zero-filled memfd and
  // returns it (for the owner's client).
  absl::StatusOr<UniqueFd> Back(uint64_t offset, uint64_t bytes);
  // Frees the range's pages and reserves it again.
  absl::Status Withdraw(uint64_t offset, uint64_t bytes);

  uint8_t* data() const { return region_.data(); }
  uint64_t size() const { return region_.size(); }

 private:
  ReservedRegion region_;
};

}  // namespace tidepool
