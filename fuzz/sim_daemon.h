// What the fuzz targets share: the daemon's MemoryManager on a sim device,
// built in process the way tidepoold builds it (daemon/main.cc), once per
// fuzzer process; each input opens its own sessions and closes them, so
// that inputs do not depend on one another through the pools.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "daemon/core/memory_manager.h"

namespace tidepool::fuzz {

// 64 MiB host pool, a 16 MiB sim device, 1 MiB chunks.
MemoryManager& SimManager();

// Reads the input front to back; past its end every read is zero.
class Bytes {
 public:
  Bytes(const uint8_t* data, size_t size) : data_(data), size_(size) {}
  bool empty() const { return pos_ >= size_; }
  uint8_t U8() { return empty() ? 0 : data_[pos_++]; }
  // Up to `n` bytes (fewer at the end).
  std::vector<uint8_t> Take(size_t n);

 private:
  const uint8_t* data_;
  size_t size_;
  size_t pos_ = 0;
};

}  // namespace tidepool::fuzz
