// The warm-up trace recorder's bounds: what a client that sends a new op
// key with every acquire can make the daemon hold.
#include "daemon/policy/trace.h"

#include <malloc.h>

#include <memory>
#include <string>

#include "gtest/gtest.h"

namespace tidepool {
namespace {

std::string Key(int i) {
  return "model.layers." + std::to_string(i) + ".mlp.experts.down_proj/fwd";
}

TEST(TraceRecorderTest, AStepWithinTheBoundsIsKept) {
  TraceRecorder rec(/*max_ops=*/100, /*max_touches=*/1000,
                    /*max_bytes=*/1 << 20);
  for (int i = 0; i < 100; ++i) {
    rec.BeginOp(Key(i), 0, 0);
    rec.Touch(i % 7, 4096, /*write=*/i % 2 == 0);
  }
  EXPECT_FALSE(rec.overflowed());
  EXPECT_GT(rec.bytes(), 0u);
  std::optional<Trace> t = rec.EndStep();
  ASSERT_TRUE(t.has_value());
  EXPECT_EQ(t->ops.size(), 100u);
  EXPECT_EQ(rec.bytes(), 0u);  // the next step starts from nothing
}

TEST(TraceRecorderTest, DistinctKeysPastTheByteBoundAbandonTheStep) {
  constexpr size_t kMaxBytes = 256 << 10;
  TraceRecorder rec(/*max_ops=*/1 << 20, /*max_touches=*/1 << 22, kMaxBytes);
  for (int i = 0; i < 60000; ++i) {
    rec.BeginOp(Key(i) + std::string(200, 'k'), 0, 0);
    rec.Touch(i, 4096, /*write=*/false);
    ASSERT_LE(rec.bytes(), kMaxBytes + 4096) << "op " << i;
  }
  EXPECT_TRUE(rec.overflowed());
  EXPECT_EQ(rec.ops(), 0u);  // dropped at once, not at the end of the step
  EXPECT_FALSE(rec.EndStep().has_value());
  EXPECT_EQ(rec.bytes(), 0u);
  // The next step records again.
  rec.BeginOp("fwd", 0, 0);
  rec.Touch(1, 4096, false);
  EXPECT_TRUE(rec.EndStep().has_value());
}

TEST(TraceRecorderTest, TheOpBoundHolds) {
  TraceRecorder rec(/*max_ops=*/10, /*max_touches=*/1 << 22, 1 << 20);
  for (int i = 0; i < 11; ++i) rec.BeginOp(Key(i), 0, 0);
  EXPECT_TRUE(rec.overflowed());
  EXPECT_FALSE(rec.EndStep().has_value());
}

// Bytes the heap has handed out: small blocks and the large ones mmap'ed
// apart (a long vector's buffer).
size_t HeapInUse() {
  const struct mallinfo2 m = mallinfo2();
  return m.uordblks + m.hblkhd;
}

// The estimate is what the heap really gives the recorder (glibc's
// accounting of bytes in use), within a quarter, for long and short keys.
TEST(TraceRecorderTest, TheByteEstimateMatchesTheHeap) {
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
  GTEST_SKIP() << "a sanitizer's allocator: mallinfo2 does not see its heap";
#endif
  for (size_t key_bytes : {8, 40, 300}) {
    auto rec = std::make_unique<TraceRecorder>(1 << 20, 1 << 22, 1ull << 40);
    std::string key(key_bytes, 'k');
    const size_t before = HeapInUse();
    for (int i = 0; i < 20000; ++i) {
      key.replace(0, std::min<size_t>(key_bytes, 6),
                  std::to_string(i % 100000));
      rec->BeginOp(key, 0, 0);
      rec->Touch(i % 5000, 4096, /*write=*/true);
      rec->Touch((i + 1) % 5000, 4096, /*write=*/false);
    }
    const double used = static_cast<double>(HeapInUse() - before);
    const double estimate = static_cast<double>(rec->bytes());
    EXPECT_GT(estimate, 0.75 * used) << key_bytes << "-byte keys";
    EXPECT_LT(estimate, 1.25 * used) << key_bytes << "-byte keys";
  }
}

}  // namespace
}  // namespace tidepool
