// Packs tensors into chunks in registration order, one open chunk per group:
// a tensor never straddles two chunks, and a tensor larger than the chunk
// size gets a chunk of its own, sized to fit it.
#pragma once

#include <cstdint>
#include <map>
#include <optional>

namespace tidepool {

// Offsets of tensors inside a chunk are aligned to this many bytes, enough
// for any vectorised CPU or CUDA access.
inline constexpr uint64_t kTensorAlignment = 256;

class ChunkPacker {
 public:
  explicit ChunkPacker(uint64_t chunk_size) : chunk_size_(chunk_size) {}

  struct Slot {
    bool new_chunk;            // the caller creates a chunk of chunk_bytes
    bool appendable;           // new chunk that later tensors may share
    uint64_t chunk_bytes;      // size of the chunk (valid when new_chunk)
    uint64_t offset_in_chunk;  // where the tensor starts
  };

  // Places a tensor of `bytes` (> 0) of group `group`. When `new_chunk` and
  // `appendable`, the caller then calls SetOpenChunk(group, id).
  Slot Place(int group, uint64_t bytes);
  void SetOpenChunk(int group, uint64_t chunk_id) {
    open_[group].chunk_id = chunk_id;
  }
  std::optional<uint64_t> OpenChunk(int group) const;

  uint64_t chunk_size() const { return chunk_size_; }

 private:
  struct Open {
    uint64_t chunk_id = 0;
    uint64_t used = 0;
    bool valid = false;
  };
  uint64_t chunk_size_;
  std::map<int, Open> open_;
};

}  // namespace tidepool
