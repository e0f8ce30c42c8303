#include "daemon/registry/chunk_packer.h"

namespace tidepool {
namespace {
uint64_t AlignUp(uint64_t v) {
  return (v + kTensorAlignment - 1) & ~(kTensorAlignment - 1);
}
}  // namespace

ChunkPacker::Slot ChunkPacker::Place(int group, uint64_t bytes) {
  if (bytes > chunk_size_) {
    // Its own chunk; the group's open chunk stays open for smaller tensors.
    return Slot{true, false, AlignUp(bytes), 0};
  }
  Open& open = open_[group];
  const uint64_t offset = AlignUp(open.used);
  if (open.valid && offset + bytes <= chunk_size_) {
    open.used = offset + bytes;
    return Slot{false, false, 0, offset};
  }
  open.valid = true;
  open.used = bytes;
  return Slot{true, true, chunk_size_, 0};
}

std::optional<uint64_t> ChunkPacker::OpenChunk(int group) const {
  auto it = open_.find(group);
  if (it == open_.end() || !it->second.valid) return std::nullopt;
  return it->second.chunk_id;
}

}  // namespace tidepool
