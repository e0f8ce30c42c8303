// The sim backend's copy engine with several copy workers: batches split
// across them still land in submission order, write-backs finish before
// the installs that withdraw what they read and before the loads that
// follow them, and every copy reaches the copy observer once, whole.
#include "daemon/backend/sim_backend.h"

#include <atomic>
#include <cstring>
#include <vector>

#include "daemon/memory/host_pool.h"
#include "gtest/gtest.h"
#include "proto/wire.h"

namespace tidepool {
namespace {

constexpr uint64_t kMiB = 1 << 20;

class SimBackendTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto host = HostPool::Create(512 * kMiB);
    ASSERT_TRUE(host.ok()) << host.status();
    host_ = std::make_unique<HostPool>(std::move(*host));
    // The host ranges the tests copy from and to.
    auto fd = host_->Back(0, 512 * kMiB);
    ASSERT_TRUE(fd.ok()) << fd.status();
  }

  std::unique_ptr<SimBackend> Backend(int workers, double link_gbps = 0) {
    BackendOptions b;
    b.pool_bytes = 256 * kMiB;
    b.sim_copy_workers = workers;
    b.sim_link_gbps = link_gbps;
    auto sim = SimBackend::Create(b, host_->data(), host_->size());
    EXPECT_TRUE(sim.ok()) << sim.status();
    return sim.ok() ? std::move(*sim) : nullptr;
  }

  // Fills host [offset, +bytes) with a pattern that differs per `seed`.
  void Fill(uint64_t offset, uint64_t bytes, uint8_t seed) {
    uint8_t* p = host_->data() + offset;
    for (uint64_t i = 0; i < bytes; ++i) {
      p[i] = static_cast<uint8_t>(seed + i * 131 + (i >> 12));
    }
  }

  std::unique_ptr<HostPool> host_;
};

TEST_F(SimBackendTest, CopyWorkersFollowTheConfig) {
  EXPECT_EQ(Backend(4)->copy_workers(), 4);
  EXPECT_EQ(Backend(1)->copy_workers(), 1);
  EXPECT_GE(Backend(0)->copy_workers(), 1);  // the default
  // A modelled link carries one copy at a time.
  EXPECT_EQ(Backend(4, /*link_gbps=*/10)->copy_workers(), 1);
  BackendOptions b;
  b.pool_bytes = 256 * kMiB;
  b.sim_copy_workers = 17;
  EXPECT_FALSE(SimBackend::Create(b, host_->data(), host_->size()).ok());
  b.sim_copy_workers = -1;
  EXPECT_FALSE(SimBackend::Create(b, host_->data(), host_->size()).ok());
}

// Large and tiny batches alternate, all submitted at once: whenever the
// control page (what clients wait on) says sequence s arrived, the bytes of
// batch s and of every batch before it are in place, however much sooner a
// later, tiny batch could have been done.
TEST_F(SimBackendTest, ArrivalNeverRunsAheadOfAnEarlierBatch) {
  auto sim = Backend(4);
  ASSERT_NE(sim, nullptr);
  auto page = SharedMapping::MapReadOnly(sim->control_page_fd(),
                                         sim->control_page_bytes());
  ASSERT_TRUE(page.ok()) << page.status();
  const auto* control =
      reinterpret_cast<const wire::ControlPage*>(page->data());
  struct Load {
    uint64_t host, device, bytes, sequence;
  };
  std::vector<Load> loads;
  uint64_t device = 0, host = 0;
  for (int i = 0; i < 12; ++i) {
    const uint64_t bytes = i % 2 == 0 ? 16 * kMiB : 64 << 10;
    Fill(host, bytes, static_cast<uint8_t>(i + 1));
    loads.push_back({host, device, bytes, 0});
    device += bytes;
    host += bytes;
  }
  for (Load& l : loads) {
    CopyBatch batch;
    auto fd = sim->BackSlot(l.device, l.bytes, /*owner=*/1, batch);
    ASSERT_TRUE(fd.ok()) << fd.status();
    batch.to_device.push_back(CopyOp{l.host, l.device, l.bytes});
    auto seq = sim->Submit(std::move(batch));
    ASSERT_TRUE(seq.ok()) << seq.status();
    l.sequence = *seq;
  }
  uint8_t* dev = sim->HostVisibleDeviceMemory();
  uint64_t checked = 0;  // batches up to here were seen in place
  const uint64_t last = loads.back().sequence;
  while (checked < last) {
    const uint64_t arrived =
        control->arrived_sequence.load(std::memory_order_acquire);
    ASSERT_GE(arrived, checked);  // never goes back
    // The backend's own view is never behind the page's. Reading it also
    // orders this thread after the copies for ThreadSanitizer, which cannot
    // tie this mapping of the control page to the backend's (another
    // address of the same memfd).
    ASSERT_GE(sim->CompletedSequence(), arrived);
    for (const Load& l : loads) {
      if (l.sequence <= checked || l.sequence > arrived) continue;
      ASSERT_EQ(std::memcmp(dev + l.device, host_->data() + l.host, l.bytes), 0)
          << "sequence " << arrived << " arrived before batch " << l.sequence
          << " had landed";
    }
    checked = arrived;
  }
  EXPECT_EQ(sim->CompletedSequence(), last);
}

// One batch evicts a dirty chunk (write-back from its slot to its host
// home), gives the slot's range a fresh backing (the old one is withdrawn)
// and loads that very home into it: the home must get the old contents
// whole, and the load must see the finished write-back, not zeros or a
// mixture.
TEST_F(SimBackendTest, WriteBacksFinishBeforeInstallsAndLoads) {
  auto sim = Backend(4);
  ASSERT_NE(sim, nullptr);
  const uint64_t bytes = 32 * kMiB;
  const uint64_t source = 0, home = 64 * kMiB;
  Fill(source, bytes, 7);
  {
    CopyBatch batch;
    ASSERT_TRUE(sim->BackSlot(0, bytes, /*owner=*/1, batch).ok());
    batch.to_device.push_back(CopyOp{source, 0, bytes});
    ASSERT_TRUE(sim->Submit(std::move(batch)).ok());
    ASSERT_TRUE(sim->Drain().ok());
  }
  sim->ReleaseSlot(0, bytes, /*owner=*/1);  // parked; owner 2 takes it over
  std::memset(host_->data() + home, 0xEE, bytes);
  CopyBatch batch;
  batch.to_host.push_back(CopyOp{home, 0, bytes});
  auto fd = sim->BackSlot(0, bytes, /*owner=*/2, batch);
  ASSERT_TRUE(fd.ok()) << fd.status();
  ASSERT_NE(*fd, nullptr);  // a fresh backing, installed by this batch
  ASSERT_EQ(batch.installs.size(), 1u);
  ASSERT_EQ(batch.installs[0].retire.size(), 1u);
  batch.to_device.push_back(CopyOp{home, 0, bytes});
  ASSERT_TRUE(sim->Submit(std::move(batch)).ok());
  ASSERT_TRUE(sim->Drain().ok());
  EXPECT_EQ(std::memcmp(host_->data() + home, host_->data() + source, bytes), 0)
      << "the write-back did not read the old backing in full";
  EXPECT_EQ(std::memcmp(sim->HostVisibleDeviceMemory(), host_->data() + source,
                        bytes),
            0)
      << "the load did not see the finished write-back";
}

// A copy split across workers is still one transfer to the observer (the
// metrics count transfers and bytes), and zero fills are none.
TEST_F(SimBackendTest, TheObserverHearsOfEachCopyOnceWhole) {
  auto sim = Backend(4);
  ASSERT_NE(sim, nullptr);
  std::atomic<int> to_device{0}, to_host{0};
  std::atomic<uint64_t> bytes_to_device{0}, bytes_to_host{0};
  sim->SetCopyObserver([&](bool dev, uint64_t bytes, double seconds) {
    EXPECT_GE(seconds, 0);
    (dev ? to_device : to_host)++;
    (dev ? bytes_to_device : bytes_to_host) += bytes;
  });
  CopyBatch batch;
  ASSERT_TRUE(sim->BackSlot(0, 64 * kMiB, /*owner=*/1, batch).ok());
  batch.to_device.push_back(CopyOp{0, 0, 24 * kMiB});
  batch.to_device.push_back(CopyOp{32 * kMiB, 24 * kMiB, 64 << 10});
  batch.zero_device.push_back(CopyOp{0, 32 * kMiB, 8 * kMiB});
  ASSERT_TRUE(sim->Submit(std::move(batch)).ok());
  CopyBatch write_back;  // of a slot installed by the batch before
  write_back.to_host.push_back(CopyOp{128 * kMiB, 0, 16 * kMiB});
  ASSERT_TRUE(sim->Submit(std::move(write_back)).ok());
  ASSERT_TRUE(sim->Drain().ok());
  EXPECT_EQ(to_device.load(), 2);
  EXPECT_EQ(bytes_to_device.load(), 24 * kMiB + (64 << 10));
  EXPECT_EQ(to_host.load(), 1);
  EXPECT_EQ(bytes_to_host.load(), 16 * kMiB);
}

}  // namespace
}  // namespace tidepool
