// The node's pinned host memory pool: one memfd, mapped in the daemon and in
// every client, in which every chunk has its host home.
#pragma once

#include <cstdint>

#include "absl/status/statusor.h"
#include "common/shared_memory.h"
#include "common/unique_fd.h"

namespace tidepool {

class HostPool {
 public:
  static absl::StatusOr<HostPool> Create(uint64_t bytes);

  int fd() const { return fd_.get(); }
  uint8_t* data() const { return mapping_.data(); }
  uint64_t size() const { return mapping_.size(); }

 private:
  UniqueFd fd_;
  SharedMapping mapping_;
};

}  // namespace tidepool
