// The manager's incremental indexes (which chunks are resident, which may
// be evicted and in what order, which hold busy tensors) against a full
// scan, after every request of randomised multi-session workloads under
// every policy: an index that drifts would evict a chunk being computed on
// or miss one that could go.
#include <unistd.h>

#include <algorithm>
#include <map>
#include <random>
#include <vector>

#include "daemon/core/memory_manager.h"
#include "gtest/gtest.h"
#include "tests/daemon/sim_manager.h"

namespace tidepool {
namespace {

constexpr uint64_t kKiB = 1 << 10;

struct Client {
  uint64_t id = 0;
  Token token{};
  Policy policy = Policy::kCpu;
  std::vector<uint64_t> tensors;
  // Requests acquired and not yet released.
  std::vector<std::vector<uint64_t>> held;
};

class ManagerIndexTest : public ::testing::TestWithParam<uint32_t> {};

TEST_P(ManagerIndexTest, IndexesMatchAScanAfterEveryRequest) {
  std::mt19937 rng(GetParam());
  // 16 slots of 64 KiB: evictions all the time.
  std::unique_ptr<MemoryManager> owned = NewSimManager(64 << 20, 1 << 20);
  ASSERT_NE(owned, nullptr);
  MemoryManager& manager = *owned;

  const Policy policies[] = {Policy::kCpu, Policy::kAuto, Policy::kStatic,
                             Policy::kCpu};
  std::vector<Client> clients;
  for (Policy policy : policies) {
    OpenParams params{.policy = policy, .pid = getpid()};
    if (clients.size() == 3) params.device_quota = 256 * kKiB;
    auto opened = manager.OpenSession(params);
    ASSERT_TRUE(opened.ok()) << opened.status();
    Client c{.id = opened->id, .token = opened->token, .policy = policy};
    std::vector<TensorSpec> specs;
    for (int i = 0; i < 40; ++i) {
      const int64_t bytes = 1 + rng() % (48 * kKiB);
      specs.push_back({"t" + std::to_string(i),
                       DType::kU8,
                       {bytes},
                       static_cast<Group>(rng() % 4)});
    }
    auto placed = manager.Register(c.id, c.token, specs);
    ASSERT_TRUE(placed.ok()) << placed.status();
    for (const auto& t : placed->tensors) c.tensors.push_back(t.tensor_id);
    clients.push_back(std::move(c));
  }
  ASSERT_TRUE(manager.CheckIndexes().ok());

  const TensorState targets[] = {TensorState::kHold, TensorState::kHoldAfterBwd,
                                 TensorState::kFree};
  uint64_t op_seq = 0;
  for (int step = 0; step < 1500; ++step) {
    Client& c = clients[rng() % clients.size()];
    const int what = rng() % 10;
    if (what < 5 && c.held.size() < 3) {
      // Acquire 1..4 distinct tensors not held now.
      std::vector<uint64_t> request;
      for (int k = 0, n = 1 + rng() % 4; k < n; ++k) {
        const uint64_t t = c.tensors[rng() % c.tensors.size()];
        bool busy =
            std::find(request.begin(), request.end(), t) != request.end();
        for (const auto& h : c.held) {
          busy |= std::find(h.begin(), h.end(), t) != h.end();
        }
        if (!busy) request.push_back(t);
      }
      if (request.empty()) continue;
      const AccessMode mode =
          rng() % 2 ? AccessMode::kRead : AccessMode::kReadWrite;
      absl::StatusOr<AcquireResult> r;
      switch (rng() % 4) {
        case 0:
          r = manager.AcquireOnHost(c.id, c.token, request, mode);
          break;
        case 1:
          r = manager.AcquireWherePlaced(c.id, c.token, request, mode);
          break;
        default: {
          OpContext op{.key = "op" + std::to_string(rng() % 6),
                       .seq = ++op_seq};
          r = manager.Acquire(c.id, c.token, request, mode, &op);
        }
      }
      // Refusals (the device full of COMPUTE chunks, a chunk in use on the
      // other side) are part of the workload; they must leave the indexes
      // as consistent as successes do.
      if (r.ok()) c.held.push_back(request);
    } else if (what < 9 && !c.held.empty()) {
      const size_t k = rng() % c.held.size();
      ASSERT_TRUE(
          manager.Release(c.id, c.token, c.held[k], targets[rng() % 3]).ok());
      c.held.erase(c.held.begin() + k);
    } else if (what == 9) {
      ASSERT_TRUE(manager.MarkStep(c.id, c.token).ok());
      if (rng() % 8 == 0) {
        ASSERT_TRUE(manager.devices()[0]->Drain().ok());
      }
    }
    absl::Status consistent = manager.CheckIndexes();
    ASSERT_TRUE(consistent.ok()) << "step " << step << ": " << consistent;
  }
  // A session that goes away takes its chunks out of the device's index.
  ASSERT_TRUE(manager.CloseSession(clients[0].id, clients[0].token).ok());
  EXPECT_TRUE(manager.CheckIndexes().ok());
}

INSTANTIATE_TEST_SUITE_P(Seeds, ManagerIndexTest, ::testing::Range(1u, 7u));

// An auto session that follows its plan: a step of 24 ops over 24 chunks
// on a device of 16 slots (so prefetches and evictions go on all the time),
// and then one that holds all of them. The plan's count of chunks off the
// device (what lets a request skip the prefetcher) is checked with the
// rest after every request.
TEST(PlannedIndexTest, IndexesMatchAScanWhileFollowingAPlan) {
  for (uint64_t pool : {uint64_t{1} << 20, uint64_t{4} << 20}) {
    std::unique_ptr<MemoryManager> manager = NewSimManager(64 << 20, pool);
    ASSERT_NE(manager, nullptr);
    auto s = manager->OpenSession({.policy = Policy::kAuto, .pid = getpid()});
    ASSERT_TRUE(s.ok()) << s.status();
    std::vector<TensorSpec> specs;
    for (int i = 0; i < 24; ++i) {
      specs.push_back({"t" + std::to_string(i),
                       DType::kU8,
                       {static_cast<int64_t>(64 * kKiB)},
                       Group::kParam});
    }
    auto placed = manager->Register(s->id, s->token, specs);
    ASSERT_TRUE(placed.ok()) << placed.status();
    uint64_t seq = 0;
    for (int step = 0; step < 6; ++step) {
      for (int k = 0; k < 24; ++k) {
        const std::vector<uint64_t> t = {placed->tensors[k].tensor_id};
        OpContext op{.key = "op" + std::to_string(k), .seq = ++seq};
        ASSERT_TRUE(
            manager
                ->Acquire(s->id, s->token, t,
                          k % 2 ? AccessMode::kReadWrite : AccessMode::kRead,
                          &op)
                .ok());
        absl::Status consistent = manager->CheckIndexes();
        ASSERT_TRUE(consistent.ok()) << "step " << step << ": " << consistent;
        ASSERT_TRUE(
            manager->Release(s->id, s->token, t, TensorState::kHold).ok());
        consistent = manager->CheckIndexes();
        ASSERT_TRUE(consistent.ok()) << "step " << step << ": " << consistent;
      }
      auto marked = manager->MarkStep(s->id, s->token);
      ASSERT_TRUE(marked.ok()) << marked.status();
      if (step >= 2) {
        ASSERT_TRUE(marked->has_value());
        EXPECT_EQ((*marked)->state, PlacementState::kPlanned);
      }
    }
  }
}

class HostSlabTest : public ::testing::Test {
 protected:
  void SetUp() override {
    manager_ = NewSimManager(256 << 20, 4 << 20);
    ASSERT_NE(manager_, nullptr);
  }

  static std::vector<TensorSpec> Specs(int chunks) {
    std::vector<TensorSpec> specs;
    for (int i = 0; i < chunks; ++i) {  // one chunk each
      specs.push_back({"t" + std::to_string(i),
                       DType::kU8,
                       {static_cast<int64_t>(64 * kKiB)},
                       Group::kParam});
    }
    return specs;
  }

  std::unique_ptr<MemoryManager> manager_;
};

// A model of many chunks costs its client a few mappings, not one per
// chunk: the kernel allows 65530 per process.
TEST_F(HostSlabTest, OneRegisterOfManyChunksIsOneHostPiece) {
  auto s = manager_->OpenSession({.policy = Policy::kCpu, .pid = getpid()});
  ASSERT_TRUE(s.ok());
  auto placed = manager_->Register(s->id, s->token, Specs(1000));
  ASSERT_TRUE(placed.ok()) << placed.status();
  ASSERT_EQ(placed->new_chunks.size(), 1000u);
  const std::vector<MappingGrant> grants = manager_->TakeGrants(s->id, 5000);
  ASSERT_EQ(grants.size(), 1u);
  EXPECT_FALSE(grants[0].device);
  EXPECT_EQ(grants[0].bytes, 1000 * 64 * kKiB);
  // Every home lies inside the piece, none overlaps another.
  std::vector<uint64_t> homes;
  for (const ChunkView& c : placed->new_chunks) {
    ASSERT_TRUE(c.host_offset.has_value());
    EXPECT_GE(*c.host_offset, grants[0].offset);
    EXPECT_LE(*c.host_offset + c.bytes, grants[0].offset + grants[0].bytes);
    homes.push_back(*c.host_offset);
  }
  std::sort(homes.begin(), homes.end());
  EXPECT_EQ(std::adjacent_find(homes.begin(), homes.end()), homes.end());
  EXPECT_TRUE(manager_->CheckIndexes().ok());
  ASSERT_TRUE(manager_->CloseSession(s->id, s->token).ok());
  EXPECT_EQ(manager_->host_pool_stats().used, 0u);
}

// A Register that fails half-way (the host quota) gives back the slab it
// had planned, with the chunks it had made and those it had not.
TEST_F(HostSlabTest, AFailedRegisterGivesItsSlabBack) {
  auto s = manager_->OpenSession({.policy = Policy::kCpu,
                                  .host_quota = 40 * 64 * kKiB + (1 << 20),
                                  .pid = getpid()});
  ASSERT_TRUE(s.ok());
  ASSERT_TRUE(manager_->Register(s->id, s->token, Specs(10)).ok());
  const uint64_t used = manager_->host_pool_stats().used;
  auto failed = manager_->Register(s->id, s->token, Specs(100));
  EXPECT_EQ(failed.status().code(), absl::StatusCode::kResourceExhausted)
      << failed.status();
  EXPECT_EQ(manager_->host_pool_stats().used, used);
  EXPECT_TRUE(manager_->CheckIndexes().ok());
  // The session goes on: a Register that fits still works.
  EXPECT_TRUE(manager_->Register(s->id, s->token, Specs(20)).ok());
  EXPECT_TRUE(manager_->CheckIndexes().ok());
}

}  // namespace
}  // namespace tidepool
