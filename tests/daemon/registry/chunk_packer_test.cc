#include "daemon/registry/chunk_packer.h"

#include <map>
#include <vector>

#include "gtest/gtest.h"

namespace tidepool {
namespace {

constexpr uint64_t kChunk = 1 << 20;

struct Placed {
  uint64_t chunk;
  uint64_t offset;
  uint64_t bytes;
};

// Packs `sizes` of one group, numbering chunks like a registry would.
std::vector<Placed> Pack(ChunkPacker& packer,
                         const std::vector<uint64_t>& sizes,
                         std::map<uint64_t, uint64_t>* chunk_bytes,
                         int group = 0) {
  static uint64_t next_id = 1;
  std::vector<Placed> out;
  for (uint64_t size : sizes) {
    ChunkPacker::Slot slot = packer.Place(group, size);
    uint64_t chunk;
    if (slot.new_chunk) {
      chunk = next_id++;
      (*chunk_bytes)[chunk] = slot.chunk_bytes;
      if (slot.appendable) packer.SetOpenChunk(group, chunk);
    } else {
      chunk = *packer.OpenChunk(group);
    }
    out.push_back({chunk, slot.offset_in_chunk, size});
  }
  return out;
}

TEST(ChunkPackerTest, TensorsNeverStraddleChunksAndDoNotOverlap) {
  ChunkPacker packer(kChunk);
  std::vector<uint64_t> sizes;
  for (int i = 0; i < 200; ++i) sizes.push_back(1 + (i * 7919) % (kChunk / 3));
  std::map<uint64_t, uint64_t> chunk_bytes;
  auto placed = Pack(packer, sizes, &chunk_bytes);
  std::map<uint64_t, std::vector<Placed>> by_chunk;
  for (const auto& p : placed) {
    EXPECT_LE(p.offset + p.bytes, chunk_bytes[p.chunk]);
    EXPECT_EQ(p.offset % kTensorAlignment, 0u);
    by_chunk[p.chunk].push_back(p);
  }
  for (auto& [chunk, list] : by_chunk) {
    for (size_t i = 1; i < list.size(); ++i) {
      EXPECT_GE(list[i].offset, list[i - 1].offset + list[i - 1].bytes);
    }
  }
  // Registration order is kept: chunk ids and offsets never go backwards.
  for (size_t i = 1; i < placed.size(); ++i) {
    EXPECT_TRUE(placed[i].chunk > placed[i - 1].chunk ||
                placed[i].offset > placed[i - 1].offset);
  }
}

TEST(ChunkPackerTest, OversizeTensorGetsItsOwnChunkAndSmallOnesContinue) {
  ChunkPacker packer(kChunk);
  std::map<uint64_t, uint64_t> chunk_bytes;
  auto placed =
      Pack(packer, {1000, 3 * kChunk + 5, 2000, kChunk}, &chunk_bytes);
  EXPECT_NE(placed[1].chunk, placed[0].chunk);
  EXPECT_EQ(placed[1].offset, 0u);
  EXPECT_GE(chunk_bytes[placed[1].chunk], 3 * kChunk + 5);
  // The small tensor after it shares the first tensor's chunk.
  EXPECT_EQ(placed[2].chunk, placed[0].chunk);
  // Exactly a chunk: a fresh chunk, since the open one has no room left.
  EXPECT_NE(placed[3].chunk, placed[0].chunk);
  EXPECT_EQ(chunk_bytes[placed[3].chunk], kChunk);
}

TEST(ChunkPackerTest, GroupsNeverShareChunks) {
  ChunkPacker packer(kChunk);
  std::map<uint64_t, uint64_t> chunk_bytes;
  auto params = Pack(packer, {100, 100}, &chunk_bytes, /*group=*/1);
  auto states = Pack(packer, {100, 100}, &chunk_bytes, /*group=*/3);
  EXPECT_EQ(params[0].chunk, params[1].chunk);
  EXPECT_EQ(states[0].chunk, states[1].chunk);
  EXPECT_NE(params[0].chunk, states[0].chunk);
}

}  // namespace
}  // namespace tidepool
