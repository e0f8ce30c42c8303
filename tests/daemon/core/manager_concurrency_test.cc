// Sessions' requests in parallel: one session's request that moves no
// memory does not wait for another session's, and sessions that acquire,
// write, evict and release at once on one small device keep their bytes
// and the manager's indexes consistent (run under TSan by make test-tsan).
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <random>
#include <thread>
#include <vector>

#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "daemon/core/memory_manager.h"
#include "gtest/gtest.h"
#include "tests/daemon/sim_manager.h"

namespace tidepool {
namespace {

constexpr uint64_t kKiB = 1 << 10;

void AwaitCopies(MemoryManager& manager, uint64_t sequence) {
  while (manager.devices()[0]->CompletedSequence() < sequence) {
    std::this_thread::yield();
  }
}

// Blocks the first placed update it is told of until released, so that a
// test can hold one session's request inside the manager.
class StallingObserver : public ManagerObserver {
 public:
  void OnPlacedUpdate(size_t, bool) override {
    if (stalled_.exchange(true)) return;
    inside_.Notify();
    released_in_time_ = go_.WaitForNotificationWithTimeout(absl::Seconds(20));
  }
  absl::Notification inside_;
  absl::Notification go_;
  std::atomic<bool> stalled_{false};
  bool released_in_time_ = false;
};

// Session A is held inside an update (an AcquireWherePlaced that moves
// nothing); session B's resident acquire and its release complete
// meanwhile. Under one lock for every session, B would wait for A.
TEST(ManagerConcurrencyTest, ASessionDoesNotWaitForAnotherOnesBookkeeping) {
  SimManager pools =
      NewSimManager({.host_bytes = 16 << 20, .pool_bytes = 4 << 20});
  ASSERT_NE(pools.manager, nullptr);
  MemoryManager& manager = *pools.manager;
  StallingObserver observer;
  manager.SetObserver(&observer);
  const std::vector<TensorSpec> specs = {
      {"w", DType::kU8, {int64_t{4 * kKiB}}, Group::kParam}};
  auto a = manager.OpenSession({.policy = Policy::kCpu, .pid = getpid()});
  auto b = manager.OpenSession({.policy = Policy::kCpu, .pid = getpid()});
  ASSERT_TRUE(a.ok() && b.ok());
  auto ta = manager.Register(a->id, a->token, specs);
  auto tb = manager.Register(b->id, b->token, specs);
  ASSERT_TRUE(ta.ok() && tb.ok());
  const std::vector<uint64_t> a_tensor = {ta->tensors[0].tensor_id};
  const std::vector<uint64_t> b_tensor = {tb->tensors[0].tensor_id};
  // B's chunk becomes resident first (a load takes the core).
  ASSERT_TRUE(
      manager.Acquire(b->id, b->token, b_tensor, AccessMode::kRead).ok());
  ASSERT_TRUE(
      manager.Release(b->id, b->token, b_tensor, TensorState::kHold).ok());

  std::thread update([&] {
    auto r = manager.AcquireWherePlaced(a->id, a->token, a_tensor,
                                        AccessMode::kReadWrite);
    EXPECT_TRUE(r.ok()) << r.status();
    EXPECT_TRUE(r.ok() && r->on_host);
  });
  observer.inside_.WaitForNotification();
  auto acquired = manager.Acquire(b->id, b->token, b_tensor, AccessMode::kRead);
  EXPECT_TRUE(acquired.ok()) << acquired.status();
  EXPECT_TRUE(
      manager.Release(b->id, b->token, b_tensor, TensorState::kHold).ok());
  observer.go_.Notify();
  update.join();
  EXPECT_TRUE(observer.released_in_time_)
      << "session B's requests waited for session A's";
  EXPECT_TRUE(manager.CheckIndexes().ok());
  manager.SetObserver(nullptr);
}

struct Worker {
  uint64_t id = 0;
  Token token{};
  std::vector<uint64_t> tensors;
  std::vector<uint64_t> bytes;
  std::vector<uint8_t> version;  // every byte of tensor i holds version[i]
};

// Four sessions (cpu, cpu under a device quota, auto, static) on a device
// of 16 slots for ~40 chunks, each on its own thread: every acquire
// (device, host, placed) finds the bytes its session last wrote, through
// loads, evictions and write-backs that other sessions' requests cause.
TEST(ManagerConcurrencyTest, ParallelSessionsKeepTheirBytes) {
  SimManager pools =
      NewSimManager({.host_bytes = 64 << 20, .pool_bytes = 1 << 20});
  ASSERT_NE(pools.manager, nullptr);
  MemoryManager& manager = *pools.manager;
  const Policy policies[] = {Policy::kCpu, Policy::kCpu, Policy::kAuto,
                             Policy::kStatic};
  std::vector<Worker> workers;
  std::mt19937 rng(7);
  for (size_t w = 0; w < std::size(policies); ++w) {
    OpenParams params{.policy = policies[w], .pid = getpid()};
    if (w == 1) params.device_quota = 256 * kKiB;
    auto opened = manager.OpenSession(params);
    ASSERT_TRUE(opened.ok()) << opened.status();
    Worker worker{.id = opened->id, .token = opened->token};
    std::vector<TensorSpec> specs;
    for (int i = 0; i < 12; ++i) {
      const int64_t bytes = 20 * kKiB + rng() % (40 * kKiB);
      specs.push_back(
          {"t" + std::to_string(i), DType::kU8, {bytes}, Group::kParam});
    }
    auto placed = manager.Register(worker.id, worker.token, specs);
    ASSERT_TRUE(placed.ok()) << placed.status();
    for (const auto& t : placed->tensors) {
      worker.tensors.push_back(t.tensor_id);
      worker.bytes.push_back(t.bytes);
      worker.version.push_back(0);  // fresh host homes are zeros
    }
    workers.push_back(std::move(worker));
  }

  std::atomic<int> mismatches{0};
  std::atomic<int> failures{0};
  auto run = [&](Worker& w, uint32_t seed) {
    std::mt19937 r(seed);
    uint64_t op_seq = 0;
    for (int step = 0; step < 600; ++step) {
      const size_t i = r() % w.tensors.size();
      const std::vector<uint64_t> request = {w.tensors[i]};
      absl::StatusOr<AcquireResult> got;
      switch (r() % 3) {
        case 0:
          got = manager.AcquireOnHost(w.id, w.token, request,
                                      AccessMode::kReadWrite);
          break;
        case 1:
          got = manager.AcquireWherePlaced(w.id, w.token, request,
                                           AccessMode::kReadWrite);
          break;
        default: {
          OpContext op{.key = "op" + std::to_string(i), .seq = ++op_seq};
          got = manager.Acquire(w.id, w.token, request, AccessMode::kReadWrite,
                                &op);
        }
      }
      if (!got.ok()) {
        ADD_FAILURE() << got.status();
        ++failures;
        return;
      }
      AwaitCopies(manager, got->ready_sequence);
      uint8_t* base = got->on_host ? pools.host : pools.device;
      uint8_t* bytes = base + got->tensors[0].device_offset;
      const uint8_t want = w.version[i];
      if (std::count(bytes, bytes + w.bytes[i], want) !=
          static_cast<ptrdiff_t>(w.bytes[i])) {
        ++mismatches;
      }
      w.version[i] = static_cast<uint8_t>(want + 1);
      std::memset(bytes, w.version[i], w.bytes[i]);
      if (!manager.Release(w.id, w.token, request, TensorState::kHold).ok()) {
        ++failures;
        return;
      }
      if (step % 50 == 49) manager.MarkStep(w.id, w.token).IgnoreError();
    }
  };
  std::vector<std::thread> threads;
  for (size_t w = 0; w < workers.size(); ++w) {
    threads.emplace_back(run, std::ref(workers[w]), 100 + w);
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_EQ(mismatches.load(), 0);
  ASSERT_TRUE(manager.CheckIndexes().ok()) << manager.CheckIndexes();

  // Read back in the host homes, after the others' traffic has settled.
  for (Worker& w : workers) {
    for (size_t i = 0; i < w.tensors.size(); ++i) {
      auto got = manager.AcquireOnHost(w.id, w.token, {w.tensors[i]},
                                       AccessMode::kRead);
      ASSERT_TRUE(got.ok()) << got.status();
      AwaitCopies(manager, got->ready_sequence);
      const uint8_t* bytes = pools.host + got->tensors[0].device_offset;
      EXPECT_EQ(std::count(bytes, bytes + w.bytes[i], w.version[i]),
                static_cast<ptrdiff_t>(w.bytes[i]))
          << "session " << w.id << " tensor " << i;
      ASSERT_TRUE(
          manager.Release(w.id, w.token, {w.tensors[i]}, TensorState::kHold)
              .ok());
    }
  }
}

}  // namespace
}  // namespace tidepool
