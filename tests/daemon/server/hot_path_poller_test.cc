// The hot-path pollers (daemon/server/hot_path_poller.h) over a real
// MemoryManager on a sim device, the ring driven by hand from the test's
// threads: rings share the bounded threads, each ring is served in order
// while rings come and go on the same poller, and a removed ring is never
// touched again. Both ways of sleeping: on all doorbells at once
// (futex_waitv, where the kernel has it) and one ring per poller. Run under
// TSan by make test-tsan.
#include "daemon/server/hot_path_poller.h"

#include <unistd.h>

#include <atomic>
#include <cstring>
#include <thread>
#include <vector>

#include "common/futex.h"
#include "common/shared_memory.h"
#include "daemon/core/memory_manager.h"
#include "daemon/server/hot_path_server.h"
#include "gtest/gtest.h"
#include "proto/tidepool.pb.h"
#include "proto/wire.h"
#include "tests/daemon/sim_manager.h"

namespace tidepool {
namespace {

// One session and its ring, as a client sees it.
class Ring {
 public:
  static std::unique_ptr<Ring> Open(MemoryManager& manager,
                                    HotPathPollers& pollers) {
    auto ring = std::unique_ptr<Ring>(new Ring());
    ring->manager_ = &manager;
    auto session =
        manager.OpenSession({.policy = Policy::kCpu, .pid = ::getpid()});
    EXPECT_TRUE(session.ok()) << session.status();
    if (!session.ok()) return nullptr;
    ring->id_ = session->id;
    ring->token_ = session->token;
    auto r = manager.Register(session->id, session->token,
                              {{"a", DType::kU8, {4096}, Group::kParam},
                               {"b", DType::kU8, {4096}, Group::kParam}});
    EXPECT_TRUE(r.ok()) << r.status();
    if (!r.ok()) return nullptr;
    for (const auto& t : r->tensors) ring->tensors_.push_back(t.tensor_id);
    auto server =
        HotPathServer::Start(&pollers, &manager, session->id, session->token);
    EXPECT_TRUE(server.ok()) << server.status();
    if (!server.ok()) return nullptr;
    ring->server_ = std::move(*server);
    auto page = SharedMapping::Map(ring->server_->fd(), ring->server_->bytes());
    EXPECT_TRUE(page.ok()) << page.status();
    if (!page.ok()) return nullptr;
    ring->page_ = std::move(*page);
    return ring;
  }

  ~Ring() {
    server_.reset();
    if (manager_ != nullptr) (void)manager_->CloseSession(id_, token_);
  }

  // Posts request k: acquire (odd k) or release (even k) of one of the two
  // tensors, in turn; a request served out of order fails (an acquire of
  // a held tensor, a release of a free one).
  void Post(uint64_t k) {
    wire::HotPath* hp = this->hp();
    wire::HotPathRequestEntry& entry = hp->requests[wire::HotPathIndex(k)];
    std::memset(&entry.request, 0, sizeof(entry.request));
    const bool acquire = k % 2 == 1;
    entry.request.op = static_cast<uint32_t>(
        acquire ? wire::HotPathOp::kAcquire : wire::HotPathOp::kRelease);
    entry.request.arg = acquire ? static_cast<uint32_t>(v1::ACCESS_READ)
                                : static_cast<uint32_t>(v1::TENSOR_STATE_HOLD);
    entry.request.count = 1;
    entry.request.tensor_ids[0] = tensors_[(k - 1) / 2 % 2];
    entry.seq.store(k, std::memory_order_release);
    hp->request_bell.fetch_add(1, std::memory_order_seq_cst);
    if (hp->daemon_sleeping.load(std::memory_order_seq_cst) != 0) {
      FutexWakeAll(&hp->request_bell);
    }
  }

  // Waits for completion k; its status code.
  int Wait(uint64_t k) {
    wire::HotPath* hp = this->hp();
    auto& entry = hp->completions[wire::HotPathIndex(k)];
    hp->client_sleeping.store(1, std::memory_order_seq_cst);
    while (entry.seq.load(std::memory_order_acquire) != k) {
      const uint32_t bell = hp->completion_bell.load(std::memory_order_seq_cst);
      if (entry.seq.load(std::memory_order_acquire) == k) break;
      FutexWait(&hp->completion_bell, bell, 10'000'000);
    }
    return entry.completion.status_code;
  }

  // `pairs` acquire/release pairs, a ring's worth in flight at a time;
  // how many failed.
  int Run(uint64_t pairs) {
    int failed = 0;
    const uint64_t last = 2 * pairs;
    uint64_t posted = 0;
    for (uint64_t k = 1; k <= last; ++k) {
      while (posted < last && posted < k - 1 + wire::kHotPathRing) {
        Post(++posted);
      }
      if (Wait(k) != 0) ++failed;
    }
    return failed;
  }

 private:
  Ring() = default;
  wire::HotPath* hp() const {
    return reinterpret_cast<wire::HotPath*>(page_.data());
  }

  MemoryManager* manager_ = nullptr;
  uint64_t id_ = 0;
  Token token_{};
  std::vector<uint64_t> tensors_;
  std::unique_ptr<HotPathServer> server_;
  SharedMapping page_;
};

class HotPathPollersTest : public ::testing::TestWithParam<bool> {
 protected:
  bool one_ring_each() const { return GetParam(); }
};

INSTANTIATE_TEST_SUITE_P(Sleep, HotPathPollersTest, ::testing::Bool(),
                         [](const ::testing::TestParamInfo<bool>& info) {
                           return info.param ? "OneRingEach" : "AllBells";
                         });

// Six rings on at most three pollers: every ring is served, in order, and
// the threads stop at the bound (one per ring without futex_waitv).
TEST_P(HotPathPollersTest, RingsShareTheBoundedThreads) {
  auto manager = NewSimManager(64 << 20, 16 << 20);
  ASSERT_NE(manager, nullptr);
  HotPathPollers pollers(3, one_ring_each());
  std::vector<std::unique_ptr<Ring>> rings;
  for (int i = 0; i < 6; ++i) {
    rings.push_back(Ring::Open(*manager, pollers));
    ASSERT_NE(rings.back(), nullptr);
  }
  const bool shared = FutexWaitAnySupported() && !one_ring_each();
  EXPECT_EQ(pollers.threads(), shared ? 3u : 6u);
  std::vector<int> failed(rings.size(), -1);
  std::vector<std::thread> threads;
  for (size_t i = 0; i < rings.size(); ++i) {
    threads.emplace_back([&, i] { failed[i] = rings[i]->Run(200); });
  }
  for (auto& t : threads) t.join();
  for (size_t i = 0; i < rings.size(); ++i) {
    EXPECT_EQ(failed[i], 0) << "ring " << i;
  }
}

// One poller: two rings keep posting while other rings are added to it,
// used and removed (some with requests still queued). The steady rings
// never miss a request or get one out of order, and a removed ring, whose
// page is unmapped at once, is not touched again (ASan, TSan).
TEST_P(HotPathPollersTest, RingsComeAndGoWhileOthersAreServed) {
  auto manager = NewSimManager(64 << 20, 16 << 20);
  ASSERT_NE(manager, nullptr);
  HotPathPollers pollers(1, one_ring_each());
  auto a = Ring::Open(*manager, pollers);
  auto b = Ring::Open(*manager, pollers);
  ASSERT_NE(a, nullptr);
  ASSERT_NE(b, nullptr);
  std::atomic<bool> done{false};
  int failed_a = -1;
  int failed_b = -1;
  std::thread ta([&] { failed_a = a->Run(3000); });
  std::thread tb([&] { failed_b = b->Run(3000); });
  std::thread churn([&] {
    for (int round = 0; round < 40 && !done.load(); ++round) {
      auto c = Ring::Open(*manager, pollers);
      ASSERT_NE(c, nullptr);
      if (round % 2 == 0) {
        EXPECT_EQ(c->Run(5), 0) << "round " << round;
      } else {
        for (uint64_t k = 1; k <= wire::kHotPathRing; ++k) c->Post(k);
      }
    }
  });
  ta.join();
  tb.join();
  done.store(true);
  churn.join();
  EXPECT_EQ(failed_a, 0);
  EXPECT_EQ(failed_b, 0);
}

}  // namespace
}  // namespace tidepool
