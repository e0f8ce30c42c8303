#include "daemon/memory/range_allocator.h"

#include <random>
#include <vector>

#include "gtest/gtest.h"

namespace tidepool {
namespace {

TEST(RangeAllocatorTest, AccountsUsedAndPeakAndCoalesces) {
  RangeAllocator a(16 << 20, 2 << 20);
  auto x = a.Allocate(1);  // rounds up to the granularity
  auto y = a.Allocate(4 << 20);
  auto z = a.Allocate(2 << 20);
  ASSERT_TRUE(x.ok() && y.ok() && z.ok());
  EXPECT_EQ(a.used(), 8u << 20);
  EXPECT_EQ(a.peak(), 8u << 20);
  ASSERT_TRUE(a.Free(*y).ok());
  EXPECT_EQ(a.used(), 4u << 20);
  EXPECT_EQ(a.peak(), 8u << 20);
  ASSERT_TRUE(a.Free(*x).ok());
  ASSERT_TRUE(a.Free(*z).ok());
  EXPECT_EQ(a.used(), 0u);
  // Everything coalesced back into one range.
  EXPECT_EQ(a.largest_free(), 16u << 20);
  EXPECT_TRUE(a.Allocate(16 << 20).ok());
}

TEST(RangeAllocatorTest, ExhaustionAndBadFreesAreErrors) {
  RangeAllocator a(4 << 20, 1 << 20);
  ASSERT_TRUE(a.Allocate(4 << 20).ok());
  auto more = a.Allocate(1);
  EXPECT_EQ(more.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_FALSE(a.Free(12345).ok());
  EXPECT_FALSE(a.Allocate(0).ok());
}

TEST(RangeAllocatorTest, RandomWorkloadNeverOverlapsAndBalances) {
  RangeAllocator a(64 << 20, 4096);
  std::mt19937 rng(3);
  std::vector<std::pair<uint64_t, uint64_t>> live;
  for (int i = 0; i < 5000; ++i) {
    if (live.empty() || rng() % 3 != 0) {
      const uint64_t size = 1 + rng() % (1 << 20);
      auto off = a.Allocate(size);
      if (!off.ok()) continue;
      for (const auto& [o, s] : live) {
        EXPECT_TRUE(*off + a.RoundUp(size) <= o || o + s <= *off);
      }
      live.push_back({*off, a.RoundUp(size)});
    } else {
      const size_t k = rng() % live.size();
      ASSERT_TRUE(a.Free(live[k].first).ok());
      live.erase(live.begin() + k);
    }
    uint64_t sum = 0;
    for (const auto& [o, s] : live) sum += s;
    ASSERT_EQ(a.used(), sum);
  }
}

TEST(RangeAllocatorTest, TakesTheSmallestRangeThatFitsAndKnowsTheLargest) {
  RangeAllocator a(32 << 20, 1 << 20);
  // Free ranges of 4, 1 and 2 MiB (in address order) between taken ones.
  std::vector<uint64_t> taken;
  for (uint64_t mib : {4, 1, 1, 1, 2, 1}) {
    taken.push_back(*a.Allocate(mib << 20));
  }
  ASSERT_TRUE(a.Free(taken[0]).ok());      // [0, 4)
  ASSERT_TRUE(a.Free(taken[2]).ok());      // [5, 6)
  ASSERT_TRUE(a.Free(taken[4]).ok());      // [7, 9)
  EXPECT_EQ(a.largest_free(), 22u << 20);  // the tail [10, 32)
  // A first fit would split the 4 MiB range; the best fit keeps it whole.
  EXPECT_EQ(*a.Allocate(2 << 20), 7u << 20);
  EXPECT_EQ(*a.Allocate(1 << 20), 5u << 20);
  EXPECT_EQ(*a.Allocate(3 << 20), 0u);
  EXPECT_EQ(*a.Allocate(22 << 20), 10u << 20);
  EXPECT_EQ(a.largest_free(), 1u << 20);  // [3, 4)
  EXPECT_FALSE(a.CanAllocate(2 << 20));
  EXPECT_TRUE(a.CanAllocate(1 << 20));
}

TEST(RangeAllocatorTest, AllocateAtTakesExactlyAFreeRange) {
  RangeAllocator a(16 << 20, 1 << 20);
  ASSERT_TRUE(a.AllocateAt(4 << 20, 2 << 20));  // from the middle of free
  EXPECT_EQ(a.used(), 2u << 20);
  EXPECT_FALSE(a.AllocateAt(5 << 20, 1 << 20));   // inside what is taken
  EXPECT_FALSE(a.AllocateAt(3 << 20, 2 << 20));   // overlaps it
  EXPECT_FALSE(a.AllocateAt(15 << 20, 2 << 20));  // past the end
  EXPECT_FALSE(a.AllocateAt(1, 1 << 20));         // unaligned
  // The two pieces left on either side are found.
  EXPECT_EQ(*a.Allocate(4 << 20), 0u);
  EXPECT_EQ(*a.Allocate(1 << 20), 6u << 20);
  ASSERT_TRUE(a.Free(4 << 20).ok());
  ASSERT_TRUE(a.AllocateAt(4 << 20, 2 << 20));  // freed, and there again
  EXPECT_EQ(a.used(), 7u << 20);
}

}  // namespace
}  // namespace tidepool
