// Shared memory regions backed by memfd: created by the daemon, passed to
// clients as file descriptors and mapped MAP_SHARED on both sides.
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

  uint8_t* data() const { return data_; }
  size_t size() const { return size_; }

 private:
  uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

// Creates an anonymous memfd of `size` bytes (zero-filled).
absl::StatusOr<UniqueFd> CreateMemfd(const std::string& name, size_t size);

// Size of the file behind `fd`.
absl::StatusOr<size_t> FdSize(int fd);

}  // namespace tidepool
