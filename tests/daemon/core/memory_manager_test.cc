// The manager against a real sim backend, in process: pool accounting,
// eviction rules and what they cost in bytes moved.
#include "daemon/core/memory_manager.h"

#include <unistd.h>

#include <chrono>
#include <cstring>
#include <thread>

#include "gtest/gtest.h"
#include "tests/daemon/sim_manager.h"

namespace tidepool {
namespace {

constexpr uint64_t kMiB = 1 << 20;

class MemoryManagerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    SimManager sim = NewSimManager({.host_bytes = 256 * kMiB,
                                    .pool_bytes = 16 * kMiB,  // 4 chunks
                                    .chunk_size = 4 * kMiB});
    ASSERT_NE(sim.manager, nullptr);
    manager_ = std::move(sim.manager);
    host_ = sim.host;
    device_ = sim.device;
    auto s = manager_->OpenSession({.policy = Policy::kCpu, .pid = getpid()});
    ASSERT_TRUE(s.ok());
    id_ = s->id;
    token_ = s->token;
  }

  std::vector<uint64_t> RegisterChunks(int n) {
    std::vector<TensorSpec> specs;
    for (int i = 0; i < n; ++i) {
      specs.push_back({"c" + std::to_string(i),
                       DType::kU8,
                       {static_cast<int64_t>(4 * kMiB)},
                       Group::kParam});
    }
    auto r = manager_->Register(id_, token_, specs);
    EXPECT_TRUE(r.ok()) << r.status();
    std::vector<uint64_t> ids;
    for (const auto& t : r->tensors) ids.push_back(t.tensor_id);
    return ids;
  }

  // Acquires one tensor and waits for its bytes.
  uint8_t* Use(uint64_t id, AccessMode mode) {
    auto r = manager_->Acquire(id_, token_, {id}, mode);
    EXPECT_TRUE(r.ok()) << r.status();
    EXPECT_TRUE(manager_->devices()[0]->Drain().ok());
    return device_ + r->tensors[0].device_offset;
  }

  void Done(uint64_t id, TensorState target = TensorState::kHold) {
    ASSERT_TRUE(manager_->Release(id_, token_, {id}, target).ok());
  }

  StatsView Stats() { return *manager_->Stats(id_, token_); }

  uint8_t* host_ = nullptr;
  uint8_t* device_ = nullptr;
  std::unique_ptr<MemoryManager> manager_;
  uint64_t id_ = 0;
  Token token_{};
};

TEST_F(MemoryManagerTest, DirtyChunksAreWrittenBackAndCleanOnesDropped) {
  auto ids = RegisterChunks(8);
  // Write chunk 0, then stream the other seven through the 4-slot device.
  std::memset(Use(ids[0], AccessMode::kReadWrite), 0x11, 4 * kMiB);
  Done(ids[0]);
  for (int i = 1; i < 8; ++i) {
    Use(ids[i], AccessMode::kRead);
    Done(ids[i]);
  }
  StatsView s = Stats();
  EXPECT_EQ(s.session.bytes_to_device, 8 * 4 * kMiB);
  EXPECT_EQ(s.session.bytes_to_host, 4 * kMiB);  // only chunk 0 was dirty
  EXPECT_EQ(s.session.evictions, 4u);
  EXPECT_EQ(s.session.clean_evictions, 3u);
  EXPECT_EQ(s.device_pool.used, 16 * kMiB);
  EXPECT_EQ(s.device_pool.peak, 16 * kMiB);
  EXPECT_EQ(s.host_pool.used, 8 * 4 * kMiB);
  // Chunk 0's bytes came back intact.
  const uint8_t* p = Use(ids[0], AccessMode::kRead);
  EXPECT_EQ(p[0], 0x11);
  EXPECT_EQ(p[4 * kMiB - 1], 0x11);
}

TEST_F(MemoryManagerTest, ComputeChunksAreNeverEvicted) {
  auto ids = RegisterChunks(6);
  uint8_t* held = Use(ids[0], AccessMode::kReadWrite);
  std::memset(held, 0x22, 4 * kMiB);
  for (int i = 1; i < 6; ++i) {
    Use(ids[i], AccessMode::kRead);
    Done(ids[i]);
  }
  // Still COMPUTE: same place, same bytes, though five others cycled through.
  auto chunks = manager_->Chunks(id_, token_);
  ASSERT_TRUE(chunks.ok());
  EXPECT_TRUE((*chunks)[0].on_device);
  EXPECT_EQ(held[0], 0x22);
  EXPECT_EQ(held[4 * kMiB - 1], 0x22);
}

TEST_F(MemoryManagerTest, FreedChunksAreEvictedWithoutWriteBack) {
  auto ids = RegisterChunks(5);
  std::memset(Use(ids[0], AccessMode::kReadWrite), 0x33, 4 * kMiB);
  Done(ids[0], TensorState::kFree);
  for (int i = 1; i < 5; ++i) {
    Use(ids[i], AccessMode::kRead);
    Done(ids[i]);
  }
  EXPECT_EQ(Stats().session.bytes_to_host, 0u);
}

TEST_F(MemoryManagerTest, QuotaLimitsTheSessionNotOthers) {
  auto limited = manager_->OpenSession(
      {.policy = Policy::kCpu, .device_quota = 8 * kMiB, .pid = getpid()});
  ASSERT_TRUE(limited.ok());
  std::vector<TensorSpec> specs;
  for (int i = 0; i < 3; ++i) {
    specs.push_back({"q" + std::to_string(i),
                     DType::kU8,
                     {static_cast<int64_t>(4 * kMiB)},
                     Group::kParam});
  }
  auto r = manager_->Register(limited->id, limited->token, specs);
  ASSERT_TRUE(r.ok());
  std::vector<uint64_t> all;
  for (const auto& t : r->tensors) all.push_back(t.tensor_id);
  // Three chunks at once exceed the 8 MiB quota although the device has room.
  EXPECT_EQ(
      manager_->Acquire(limited->id, limited->token, all, AccessMode::kRead)
          .status()
          .code(),
      absl::StatusCode::kResourceExhausted);
  // One at a time works: the session evicts its own chunks.
  for (uint64_t t : all) {
    ASSERT_TRUE(
        manager_->Acquire(limited->id, limited->token, {t}, AccessMode::kRead)
            .ok());
    ASSERT_TRUE(
        manager_->Release(limited->id, limited->token, {t}, TensorState::kHold)
            .ok());
  }
  auto ls = manager_->Stats(limited->id, limited->token);
  EXPECT_LE(ls->session.peak_device_bytes, 8 * kMiB);
  EXPECT_EQ(ls->session.evictions, 1u);
}

TEST_F(MemoryManagerTest, ClosingReturnsEveryByte) {
  RegisterChunks(6);
  auto ids = RegisterChunks(2);
  Use(ids[0], AccessMode::kReadWrite);
  ASSERT_TRUE(manager_->CloseSession(id_, token_).ok());
  EXPECT_EQ(manager_->session_count(), 0u);
  EXPECT_EQ(manager_->host_pool_stats().used, 0u);
  EXPECT_EQ(manager_->device_pool_stats(0).used, 0u);
  EXPECT_EQ(manager_->Stats(id_, token_).status().code(),
            absl::StatusCode::kPermissionDenied);
}

TEST_F(MemoryManagerTest, UnattachedSessionsAreReaped) {
  RegisterChunks(2);
  manager_->ReapUnattached(absl::Now() + absl::Minutes(5));
  EXPECT_EQ(manager_->session_count(), 0u);
  EXPECT_EQ(manager_->host_pool_stats().used, 0u);
}

TEST_F(MemoryManagerTest, HostHomesAreZeroedWhenReused) {
  auto ids = RegisterChunks(1);
  std::memset(Use(ids[0], AccessMode::kReadWrite), 0x44, 4 * kMiB);
  Done(ids[0]);
  ASSERT_TRUE(manager_->CloseSession(id_, token_).ok());
  auto s = manager_->OpenSession({.policy = Policy::kCpu, .pid = getpid()});
  ASSERT_TRUE(s.ok());
  id_ = s->id;
  token_ = s->token;
  auto again = RegisterChunks(1);
  const uint8_t* p = Use(again[0], AccessMode::kRead);
  EXPECT_EQ(p[0], 0);
  EXPECT_EQ(p[4 * kMiB - 1], 0);
}

TEST_F(MemoryManagerTest, SessionCountIsBounded) {
  const size_t limit = manager_->options().max_sessions;
  while (manager_->session_count() < limit) {
    ASSERT_TRUE(
        manager_->OpenSession({.policy = Policy::kCpu, .pid = getpid()}).ok());
  }
  EXPECT_EQ(manager_->OpenSession({.policy = Policy::kCpu, .pid = getpid()})
                .status()
                .code(),
            absl::StatusCode::kResourceExhausted);
  // The first session is untouched.
  EXPECT_TRUE(manager_->Stats(id_, token_).ok());
}

TEST_F(MemoryManagerTest, OpenRejectsBadParameters) {
  EXPECT_EQ(manager_->OpenSession({.pid = 0}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(manager_->OpenSession({.device = "GPU-nope", .pid = getpid()})
                .status()
                .code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(
      manager_
          ->OpenSession({.pid = getpid(), .client_name = std::string(100, 'x')})
          .status()
          .code(),
      absl::StatusCode::kInvalidArgument);
}

TEST_F(MemoryManagerTest, EachSessionPacksWithItsOwnChunkSize) {
  auto small = manager_->OpenSession(
      {.policy = Policy::kCpu, .pid = getpid(), .chunk_size = 1 * kMiB});
  ASSERT_TRUE(small.ok()) << small.status();
  EXPECT_EQ(small->chunk_size, 1 * kMiB);
  // Three 400 KiB tensors: two share the first 1 MiB chunk, the third
  // opens a second one; the default session would put all three in one.
  std::vector<TensorSpec> specs;
  for (int i = 0; i < 3; ++i) {
    specs.push_back(
        {"t" + std::to_string(i), DType::kU8, {400 << 10}, Group::kParam});
  }
  auto mine = manager_->Register(small->id, small->token, specs);
  ASSERT_TRUE(mine.ok()) << mine.status();
  EXPECT_EQ(mine->tensors[0].chunk_id, mine->tensors[1].chunk_id);
  EXPECT_NE(mine->tensors[1].chunk_id, mine->tensors[2].chunk_id);
  auto theirs = manager_->Register(id_, token_, specs);
  ASSERT_TRUE(theirs.ok()) << theirs.status();
  EXPECT_EQ(theirs->tensors[0].chunk_id, theirs->tensors[2].chunk_id);
  EXPECT_EQ(manager_->OpenSession({.pid = getpid()})->chunk_size, 4 * kMiB);
}

TEST_F(MemoryManagerTest, SessionChunkSizeOutOfRangeIsRefused) {
  for (uint64_t bad : {uint64_t{4096}, uint64_t{1 * kMiB + 1},
                       uint64_t{512 * kMiB}, uint64_t{1} << 40}) {
    auto s = manager_->OpenSession({.pid = getpid(), .chunk_size = bad});
    EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_NE(s.status().message().find("chunk_size"), std::string::npos);
  }
}

}  // namespace
}  // namespace tidepool

namespace tidepool {
namespace {

class HostAcquireTest : public MemoryManagerTest {
 protected:
  uint8_t* UseOnHost(uint64_t id, AccessMode mode) {
    auto r = manager_->AcquireOnHost(id_, token_, {id}, mode);
    EXPECT_TRUE(r.ok()) << r.status();
    EXPECT_TRUE(manager_->devices()[0]->Drain().ok());
    return host_ + r->tensors[0].device_offset;
  }
};

TEST_F(HostAcquireTest, HostSeesDeviceWritesAfterWriteBack) {
  auto ids = RegisterChunks(1);
  std::memset(Use(ids[0], AccessMode::kReadWrite), 0x55, 4 * kMiB);
  Done(ids[0]);
  const uint8_t* p = UseOnHost(ids[0], AccessMode::kRead);
  EXPECT_EQ(p[0], 0x55);
  EXPECT_EQ(p[4 * kMiB - 1], 0x55);
  Done(ids[0]);
  // A read keeps the (now clean) device copy: no further transfer.
  auto chunks = manager_->Chunks(id_, token_);
  EXPECT_TRUE((*chunks)[0].on_device);
  EXPECT_FALSE((*chunks)[0].dirty);
  EXPECT_EQ(Stats().session.bytes_to_host, 4 * kMiB);
}

TEST_F(HostAcquireTest, HostWritesReachTheDeviceNextTime) {
  auto ids = RegisterChunks(1);
  Use(ids[0], AccessMode::kRead);
  Done(ids[0]);
  // Writing on the host drops the clean device copy without a transfer.
  std::memset(UseOnHost(ids[0], AccessMode::kReadWrite), 0x66, 4 * kMiB);
  auto chunks = manager_->Chunks(id_, token_);
  EXPECT_FALSE((*chunks)[0].on_device);
  EXPECT_EQ(Stats().session.bytes_to_host, 0u);
  Done(ids[0]);
  const uint8_t* d = Use(ids[0], AccessMode::kRead);
  EXPECT_EQ(d[0], 0x66);
  EXPECT_EQ(d[4 * kMiB - 1], 0x66);
}

TEST_F(HostAcquireTest, AChunkIsComputedOnInOnePlaceAtATime) {
  std::vector<TensorSpec> specs = {{"a", DType::kU8, {1024}, Group::kParam},
                                   {"b", DType::kU8, {1024}, Group::kParam}};
  auto r = manager_->Register(id_, token_, specs);
  ASSERT_TRUE(r.ok());
  const uint64_t a = r->tensors[0].tensor_id, b = r->tensors[1].tensor_id;
  ASSERT_EQ(r->tensors[0].chunk_id, r->tensors[1].chunk_id);
  ASSERT_TRUE(
      manager_->AcquireOnHost(id_, token_, {a}, AccessMode::kRead).ok());
  EXPECT_EQ(
      manager_->Acquire(id_, token_, {b}, AccessMode::kRead).status().code(),
      absl::StatusCode::kFailedPrecondition);
  Done(a);
  ASSERT_TRUE(manager_->Acquire(id_, token_, {b}, AccessMode::kRead).ok());
  EXPECT_EQ(manager_->AcquireOnHost(id_, token_, {a}, AccessMode::kRead)
                .status()
                .code(),
            absl::StatusCode::kFailedPrecondition);
}

TEST_F(HostAcquireTest, DeviceOnlyChunksHaveNoHostSide) {
  auto s = manager_->OpenSession({.policy = Policy::kCuda, .pid = getpid()});
  ASSERT_TRUE(s.ok());
  auto r = manager_->Register(s->id, s->token,
                              {{"w", DType::kF32, {16}, Group::kParam}});
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(manager_
                ->AcquireOnHost(s->id, s->token, {r->tensors[0].tensor_id},
                                AccessMode::kRead)
                .status()
                .code(),
            absl::StatusCode::kFailedPrecondition);
}

// Counts the observer's placed updates by [on_device].
class PlacedUpdateCounter : public ManagerObserver {
 public:
  void OnPlacedUpdate(size_t device, bool on_device) override {
    EXPECT_EQ(device, 0u);
    ++updates[on_device ? 1 : 0];
  }
  int updates[2] = {};
};

TEST_F(HostAcquireTest, PlacedAcquiresFollowThePolicy) {
  PlacedUpdateCounter observer;
  manager_->SetObserver(&observer);
  // cpu: where the chunks are now. On the device, nothing moves.
  auto ids = RegisterChunks(2);
  std::memset(Use(ids[0], AccessMode::kReadWrite), 0x77, 4 * kMiB);
  Done(ids[0]);
  auto placed =
      manager_->AcquireWherePlaced(id_, token_, {ids[0]}, AccessMode::kRead);
  ASSERT_TRUE(placed.ok()) << placed.status();
  EXPECT_FALSE(placed->on_host);
  EXPECT_EQ(device_[placed->tensors[0].device_offset], 0x77);
  Done(ids[0]);
  EXPECT_EQ(Stats().session.bytes_to_host, 0u);
  // A set not all on the device: in the host homes, after writing back the
  // device's newer copy.
  placed = manager_->AcquireWherePlaced(id_, token_, {ids[0], ids[1]},
                                        AccessMode::kRead);
  ASSERT_TRUE(placed.ok()) << placed.status();
  EXPECT_TRUE(placed->on_host);
  ASSERT_TRUE(manager_->devices()[0]->Drain().ok());
  EXPECT_EQ(host_[placed->tensors[0].device_offset], 0x77);
  ASSERT_TRUE(
      manager_->Release(id_, token_, {ids[0], ids[1]}, TensorState::kHold)
          .ok());
  // cuda: on the device, where its chunks live.
  auto s = manager_->OpenSession({.policy = Policy::kCuda, .pid = getpid()});
  ASSERT_TRUE(s.ok());
  auto r = manager_->Register(s->id, s->token,
                              {{"w", DType::kF32, {16}, Group::kMaster}});
  ASSERT_TRUE(r.ok());
  auto on_device = manager_->AcquireWherePlaced(
      s->id, s->token, {r->tensors[0].tensor_id}, AccessMode::kReadWrite);
  ASSERT_TRUE(on_device.ok()) << on_device.status();
  EXPECT_FALSE(on_device->on_host);
  // Bad input gets the errors of any acquire.
  EXPECT_EQ(
      manager_->AcquireWherePlaced(id_, token_, {999999}, AccessMode::kRead)
          .status()
          .code(),
      absl::StatusCode::kNotFound);
  EXPECT_EQ(manager_->AcquireWherePlaced(id_, token_, {}, AccessMode::kRead)
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(manager_
                ->AcquireWherePlaced(s->id, s->token, {r->tensors[0].tensor_id},
                                     AccessMode::kRead)
                .status()
                .code(),
            absl::StatusCode::kFailedPrecondition);  // already COMPUTE
  // Each successful placed acquire is reported once, by where it ran (cpu
  // and cuda sessions too, which have no placement); failures are not.
  EXPECT_EQ(observer.updates[1], 2);  // cpu resident, cuda
  EXPECT_EQ(observer.updates[0], 1);  // cpu, not all resident
  manager_->SetObserver(nullptr);
}

// A host reader of a chunk that was just evicted must wait for its
// write-back, which a slow link keeps in flight.
TEST(HostReadAfterEvictionTest, WaitsForTheWriteBack) {
  SimManager sim = NewSimManager({.pool_bytes = 8 * kMiB,  // two chunks
                                  .chunk_size = 4 * kMiB,
                                  .link_gbps = 0.05});  // 4 MiB: ~80 ms
  ASSERT_NE(sim.manager, nullptr);
  MemoryManager& manager = *sim.manager;
  uint8_t* host_mem = sim.host;
  uint8_t* device = sim.device;
  auto s = manager.OpenSession({.policy = Policy::kCpu, .pid = getpid()});
  ASSERT_TRUE(s.ok());
  std::vector<TensorSpec> specs;
  for (int i = 0; i < 3; ++i) {
    specs.push_back({"c" + std::to_string(i),
                     DType::kU8,
                     {static_cast<int64_t>(4 * kMiB)},
                     Group::kParam});
  }
  auto r = manager.Register(s->id, s->token, specs);
  ASSERT_TRUE(r.ok());
  std::vector<uint64_t> ids;
  for (const auto& t : r->tensors) ids.push_back(t.tensor_id);
  DeviceBackend& backend = *manager.devices()[0];
  auto wait = [&](uint64_t sequence) {
    while (backend.CompletedSequence() < sequence) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
  };
  auto a = manager.Acquire(s->id, s->token, {ids[0]}, AccessMode::kReadWrite);
  ASSERT_TRUE(a.ok());
  wait(a->ready_sequence);
  std::memset(device + a->tensors[0].device_offset, 0x5a, 4 * kMiB);
  ASSERT_TRUE(
      manager.Release(s->id, s->token, {ids[0]}, TensorState::kHold).ok());
  // Two other chunks take the device, one request at a time: chunk 0's
  // write-back queues behind the first (slow) load.
  auto first = manager.Acquire(s->id, s->token, {ids[1]}, AccessMode::kRead);
  ASSERT_TRUE(first.ok()) << first.status();
  auto second = manager.Acquire(s->id, s->token, {ids[2]}, AccessMode::kRead);
  ASSERT_TRUE(second.ok()) << second.status();
  auto h = manager.AcquireOnHost(s->id, s->token, {ids[0]}, AccessMode::kRead);
  ASSERT_TRUE(h.ok()) << h.status();
  wait(h->ready_sequence);  // what the client library does
  const uint8_t* p = host_mem + h->tensors[0].device_offset;
  EXPECT_EQ(p[0], 0x5a);
  EXPECT_EQ(p[4 * kMiB - 1], 0x5a);
}

}  // namespace
}  // namespace tidepool
