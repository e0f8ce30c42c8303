// The manager's residency log and admin views (what tidepoolctl shows):
// events follow loads, evictions, acquires and releases; the log is a
// bounded ring; unknown sessions are NOT_FOUND.
#include <unistd.h>

#include "daemon/core/memory_manager.h"
#include "gtest/gtest.h"
#include "tests/daemon/sim_manager.h"

namespace tidepool {
namespace {

constexpr uint64_t kMiB = 1 << 20;

class ResidencyLogTest : public ::testing::Test {
 protected:
  void Start(size_t capacity) {
    ManagerOptions options;
    options.residency_event_capacity = capacity;
    manager_ = NewSimManager({.pool_bytes = 8 * kMiB,  // 2 chunks of 4 MiB
                              .chunk_size = 4 * kMiB,
                              .options = options})
                   .manager;
    ASSERT_NE(manager_, nullptr);
    auto s = manager_->OpenSession(
        {.policy = Policy::kCpu, .pid = getpid(), .client_name = "trainer"});
    ASSERT_TRUE(s.ok());
    id_ = s->id;
    token_ = s->token;
    std::vector<TensorSpec> specs;
    for (int i = 0; i < 3; ++i) {
      specs.push_back({"w" + std::to_string(i),
                       DType::kU8,
                       {static_cast<int64_t>(4 * kMiB)},
                       Group::kParam});
    }
    auto r = manager_->Register(id_, token_, specs);
    ASSERT_TRUE(r.ok()) << r.status();
    for (const auto& t : r->tensors) tensors_.push_back(t.tensor_id);
  }

  void Use(uint64_t tensor, AccessMode mode) {
    ASSERT_TRUE(manager_->Acquire(id_, token_, {tensor}, mode).ok());
    ASSERT_TRUE(
        manager_->Release(id_, token_, {tensor}, TensorState::kHold).ok());
  }

  std::unique_ptr<MemoryManager> manager_;
  uint64_t id_ = 0;
  Token token_{};
  std::vector<uint64_t> tensors_;
};

TEST_F(ResidencyLogTest, EventsFollowTheChunks) {
  Start(1000);
  // 3 chunks through a 2-chunk device: the third use evicts the first.
  Use(tensors_[0], AccessMode::kReadWrite);
  Use(tensors_[1], AccessMode::kRead);
  Use(tensors_[2], AccessMode::kRead);
  auto t = manager_->Timeline(id_, 0);
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_FALSE(t->truncated);
  ASSERT_EQ(t->chunks.size(), 3u);
  std::vector<std::pair<uint64_t, ResidencyEventKind>> got;
  for (const auto& e : t->events) {
    EXPECT_EQ(e.session_id, id_);
    got.push_back({e.chunk_id, e.kind});
  }
  const uint64_t c0 = t->chunks[0].chunk.id, c1 = t->chunks[1].chunk.id,
                 c2 = t->chunks[2].chunk.id;
  using K = ResidencyEventKind;
  const std::vector<std::pair<uint64_t, ResidencyEventKind>> want = {
      {c0, K::kCreated}, {c1, K::kCreated},  {c2, K::kCreated},
      {c0, K::kLoaded},  {c0, K::kAcquired}, {c0, K::kReleased},
      {c1, K::kLoaded},  {c1, K::kAcquired}, {c1, K::kReleased},
      {c0, K::kEvicted}, {c2, K::kLoaded},   {c2, K::kAcquired},
      {c2, K::kReleased}};
  EXPECT_EQ(got, want);
  // The eviction of the written chunk needed a write-back; it is on the
  // host after it, and sequences and times only grow.
  for (size_t i = 0; i < t->events.size(); ++i) {
    const auto& e = t->events[i];
    if (e.kind == K::kEvicted) {
      EXPECT_TRUE(e.dirty);
      EXPECT_FALSE(e.on_device);
    }
    if (e.kind == K::kLoaded) {
      EXPECT_TRUE(e.on_device);
    }
    if (i > 0) {
      EXPECT_GT(e.sequence, t->events[i - 1].sequence);
      EXPECT_GE(e.time, t->events[i - 1].time);
    }
  }
  // Chunk details: names, states, where each is now.
  EXPECT_EQ(t->chunks[0].tensors, std::vector<std::string>{"w0"});
  EXPECT_FALSE(t->chunks[0].chunk.on_device);
  EXPECT_TRUE(t->chunks[2].chunk.on_device);
  EXPECT_EQ(t->chunks[2].state, TensorState::kHold);
  // The most recent events only.
  auto last = manager_->Timeline(id_, 4);
  ASSERT_TRUE(last.ok());
  ASSERT_EQ(last->events.size(), 4u);
  EXPECT_TRUE(last->truncated);
  EXPECT_EQ(last->events.back().sequence, t->events.back().sequence);
}

TEST_F(ResidencyLogTest, TheLogIsABoundedRing) {
  Start(16);
  for (int round = 0; round < 50; ++round) {
    for (uint64_t t : tensors_) Use(t, AccessMode::kRead);
  }
  EXPECT_GT(manager_->residency_events_recorded(), 16u * 10);
  auto t = manager_->Timeline(id_, 0);
  ASSERT_TRUE(t.ok());
  EXPECT_EQ(t->events.size(), 16u);  // never more than the ring holds
  EXPECT_TRUE(t->truncated);
  for (size_t i = 1; i < t->events.size(); ++i) {
    EXPECT_EQ(t->events[i].sequence, t->events[i - 1].sequence + 1);
  }
  EXPECT_EQ(t->events.back().sequence,
            manager_->residency_events_recorded() - 1);
}

TEST_F(ResidencyLogTest, DisabledLogRecordsNothing) {
  Start(0);
  Use(tensors_[0], AccessMode::kRead);
  auto t = manager_->Timeline(id_, 0);
  ASSERT_TRUE(t.ok());  // the session exists: chunks, no events
  EXPECT_TRUE(t->events.empty());
  EXPECT_EQ(t->chunks.size(), 3u);
}

TEST_F(ResidencyLogTest, AdminViewsAndUnknownSessions) {
  Start(1000);
  Use(tensors_[0], AccessMode::kReadWrite);
  auto sessions = manager_->ListSessions();
  ASSERT_EQ(sessions.size(), 1u);
  EXPECT_EQ(sessions[0].id, id_);
  EXPECT_EQ(sessions[0].pid, getpid());
  EXPECT_EQ(sessions[0].client_name, "trainer");
  EXPECT_EQ(sessions[0].stats.chunks, 3u);
  EXPECT_EQ(sessions[0].stats.bytes_to_device, 4 * kMiB);
  auto chunks = manager_->SessionChunks(id_);
  ASSERT_TRUE(chunks.ok());
  ASSERT_EQ(chunks->size(), 3u);
  EXPECT_TRUE((*chunks)[0].chunk.on_device);
  EXPECT_TRUE((*chunks)[0].chunk.dirty);

  EXPECT_EQ(manager_->SessionChunks(id_ + 100).status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(manager_->Timeline(id_ + 100, 0).status().code(),
            absl::StatusCode::kNotFound);
  // A closed session's events stay readable until the ring overwrites them.
  ASSERT_TRUE(manager_->CloseSession(id_, token_).ok());
  EXPECT_TRUE(manager_->ListSessions().empty());
  EXPECT_EQ(manager_->SessionChunks(id_).status().code(),
            absl::StatusCode::kNotFound);
  auto t = manager_->Timeline(id_, 0);
  ASSERT_TRUE(t.ok());
  EXPECT_TRUE(t->chunks.empty());
  EXPECT_FALSE(t->events.empty());
}

}  // namespace
}  // namespace tidepool
