// HostPool: homes backed piece by piece, each by a sealed memfd that only
// its owner receives, and punched when the home goes.
#include "daemon/memory/host_pool.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstring>

#include "gtest/gtest.h"

namespace tidepool {
namespace {

constexpr uint64_t kMiB = 1 << 20;

bool AllBytes(const uint8_t* p, uint64_t n, uint8_t v) {
  for (uint64_t i = 0; i < n; ++i) {
    if (p[i] != v) return false;
  }
  return true;
}

TEST(HostPoolTest, AHomeIsAZeroedSealedPieceSharedWithItsOwnerOnly) {
  auto pool = HostPool::Create(16 * kMiB);
  ASSERT_TRUE(pool.ok()) << pool.status();
  auto fd = pool->Back(2 * kMiB, kMiB);
  ASSERT_TRUE(fd.ok()) << fd.status();
  uint8_t* home = pool->data() + 2 * kMiB;
  EXPECT_TRUE(AllBytes(home, kMiB, 0));
  // The owner's view of the piece is the same memory.
  auto* owner = static_cast<uint8_t*>(
      ::mmap(nullptr, kMiB, PROT_READ | PROT_WRITE, MAP_SHARED, fd->get(), 0));
  ASSERT_NE(owner, MAP_FAILED);
  std::memset(home, 0x7e, kMiB);
  EXPECT_TRUE(AllBytes(owner, kMiB, 0x7e));
  // The piece is exactly the home: no neighbour is reachable through it.
  struct stat st;
  ASSERT_EQ(::fstat(fd->get(), &st), 0);
  EXPECT_EQ(static_cast<uint64_t>(st.st_size), kMiB);
  EXPECT_NE(::ftruncate(fd->get(), 0), 0);
  EXPECT_NE(::ftruncate(fd->get(), 2 * kMiB), 0);

  // Withdrawn: the owner's mapping sees zeros, and a late write into the
  // daemon's view of the range (a copy that was still running) lands
  // nowhere near the piece.
  ASSERT_TRUE(pool->Withdraw(2 * kMiB, kMiB).ok());
  EXPECT_TRUE(AllBytes(owner, kMiB, 0));
  std::memset(home, 0x11, kMiB);
  EXPECT_TRUE(AllBytes(owner, kMiB, 0));
  // The range backs the next home afresh.
  auto again = pool->Back(2 * kMiB, kMiB);
  ASSERT_TRUE(again.ok());
  EXPECT_TRUE(AllBytes(home, kMiB, 0));
  EXPECT_TRUE(AllBytes(owner, kMiB, 0));
  ::munmap(owner, kMiB);
}

TEST(HostPoolTest, RangesMustBePageAlignedAndInside) {
  auto pool = HostPool::Create(4 * kMiB);
  ASSERT_TRUE(pool.ok());
  EXPECT_FALSE(pool->Back(100, kMiB).ok());
  EXPECT_FALSE(pool->Back(0, 100).ok());
  EXPECT_FALSE(pool->Back(3 * kMiB, 2 * kMiB).ok());
  EXPECT_FALSE(pool->Back(~0ull - 4095, 4096).ok());
}

TEST(ReservedRegionDeathTest, AClientsUnbackedSpaceFaultsTheClientAlone) {
  auto region = ReservedRegion::Reserve(4 * kMiB, ReservedRegion::kClient);
  ASSERT_TRUE(region.ok());
  uint8_t* p = region->data();
  EXPECT_DEATH({ p[kMiB] = 1; }, "");
}

}  // namespace
}  // namespace tidepool
