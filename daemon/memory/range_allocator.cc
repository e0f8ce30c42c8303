#include "daemon/memory/range_allocator.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace tidepool {

RangeAllocator::RangeAllocator(uint64_t capacity, uint64_t alignment)
    : capacity_(capacity & ~(alignment - 1)), alignment_(alignment) {
  if (capacity_ > 0) AddFree(0, capacity_);
}

void RangeAllocator::AddFree(uint64_t offset, uint64_t size) {
  free_.emplace(offset, size);
  by_size_.emplace(size, offset);
}

void RangeAllocator::EraseFree(std::map<uint64_t, uint64_t>::iterator it) {
  by_size_.erase({it->second, it->first});
  free_.erase(it);
}

absl::StatusOr<uint64_t> RangeAllocator::Allocate(uint64_t size) {
  if (size == 0) return absl::InvalidArgumentError("allocation of 0 bytes");
  const uint64_t rounded = RoundUp(size);
  auto fit = by_size_.lower_bound({rounded, 0});
  if (fit != by_size_.end()) {
    const uint64_t offset = fit->second;
    const uint64_t rest = fit->first - rounded;
    EraseFree(free_.find(offset));
    if (rest > 0) AddFree(offset + rounded, rest);
    allocated_.emplace(offset, rounded);
    used_ += rounded;
    peak_ = std::max(peak_, used_);
    return offset;
  }
  return absl::ResourceExhaustedError(absl::StrCat(
      "no free range of ", rounded, " bytes (", used_, " of ", capacity_,
      " bytes in use, largest free ", largest_free(), ")"));
}

bool RangeAllocator::AllocateAt(uint64_t offset, uint64_t size) {
  if (size == 0 || offset % alignment_ != 0) return false;
  const uint64_t rounded = RoundUp(size);
  auto it = free_.upper_bound(offset);
  if (it == free_.begin()) return false;
  --it;
  const uint64_t start = it->first;
  const uint64_t length = it->second;
  if (offset + rounded > start + length) return false;
  EraseFree(it);
  if (offset > start) AddFree(start, offset - start);
  if (offset + rounded < start + length) {
    AddFree(offset + rounded, start + length - offset - rounded);
  }
  allocated_.emplace(offset, rounded);
  used_ += rounded;
  peak_ = std::max(peak_, used_);
  return true;
}

absl::Status RangeAllocator::Free(uint64_t offset) {
  auto it = allocated_.find(offset);
  if (it == allocated_.end()) {
    return absl::InternalError(
        absl::StrCat("free of unallocated offset ", offset));
  }
  uint64_t start = offset;
  uint64_t size = it->second;
  allocated_.erase(it);
  used_ -= size;
  auto next = free_.lower_bound(start);
  if (next != free_.end() && next->first == start + size) {
    size += next->second;
    auto after = std::next(next);
    EraseFree(next);
    next = after;
  }
  if (next != free_.begin()) {
    auto prev = std::prev(next);
    if (prev->first + prev->second == start) {
      start = prev->first;
      size += prev->second;
      EraseFree(prev);
    }
  }
  AddFree(start, size);
  return absl::OkStatus();
}

bool RangeAllocator::CanAllocate(uint64_t size) const {
  return largest_free() >= RoundUp(size);
}

uint64_t RangeAllocator::largest_free() const {
  return by_size_.empty() ? 0 : by_size_.rbegin()->first;
}

}  // namespace tidepool
