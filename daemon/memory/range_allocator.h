// Best-fit allocator of offsets in a fixed-size region, with coalescing.
// Both pools hand out chunk homes and slots with it; it knows nothing about
// what lives in them. Free ranges are indexed by offset (to coalesce) and by
// size (to pick), so every operation is O(log n) in the number of ranges.
// Not thread-safe: its owner holds the lock.
#pragma once

#include <cstdint>
#include <map>
#include <set>
#include <utility>

#include "absl/status/statusor.h"

namespace tidepool {

class RangeAllocator {
 public:
  // `alignment` must be a power of two; every offset and size is rounded to
  // it.
  RangeAllocator(uint64_t capacity, uint64_t alignment);

  // The smallest free range with room for `size` bytes (the lowest such
  // offset on a tie), or RESOURCE_EXHAUSTED.
  absl::StatusOr<uint64_t> Allocate(uint64_t size);
  // Allocates exactly [offset, offset + size) if it is free (a slot reused
  // where its backing already is); false otherwise.
  bool AllocateAt(uint64_t offset, uint64_t size);
  // Frees a range returned by Allocate. Freeing anything else is an error.
  absl::Status Free(uint64_t offset);

  // Whether an Allocate(size) would succeed now.
  bool CanAllocate(uint64_t size) const;
  uint64_t RoundUp(uint64_t size) const {
    return (size + alignment_ - 1) & ~(alignment_ - 1);
  }

  uint64_t capacity() const { return capacity_; }
  uint64_t used() const { return used_; }
  uint64_t peak() const { return peak_; }
  uint64_t largest_free() const;
  void ResetPeak() { peak_ = used_; }

 private:
  uint64_t capacity_;
  uint64_t alignment_;
  uint64_t used_ = 0;
  uint64_t peak_ = 0;
  void AddFree(uint64_t offset, uint64_t size);
  // Removes the free range at `it` from both indexes.
  void EraseFree(std::map<uint64_t, uint64_t>::iterator it);

  std::map<uint64_t, uint64_t> free_;                // offset -> size
  std::set<std::pair<uint64_t, uint64_t>> by_size_;  // (size, offset)
  std::map<uint64_t, uint64_t> allocated_;           // offset -> size
};

}  // namespace tidepool
