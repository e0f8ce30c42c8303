#include "kernels/cpu/thread_pool.h"

#include <algorithm>
#include <atomic>
#include <set>
#include <thread>
#include <vector>

#include "gtest/gtest.h"

namespace tidepool::kernels {
namespace {

TEST(ThreadPoolTest, ParallelForCoversEveryIndexOnce) {
  ThreadPool pool(AllowedCpus());
  for (size_t n : {size_t{0}, size_t{1}, size_t{63}, size_t{16384},
                   size_t{100003}, size_t{1} << 20}) {
    std::vector<std::atomic<int>> hits(n);
    pool.ParallelFor(n, 64, [&](size_t begin, size_t end) {
      EXPECT_EQ(begin % 64, 0u);
      for (size_t i = begin; i < end; ++i) hits[i].fetch_add(1);
    });
    for (size_t i = 0; i < n; ++i)
      ASSERT_EQ(hits[i].load(), 1) << i << "/" << n;
  }
}

TEST(ThreadPoolTest, RunOnAllRunsEachWorkerOnce) {
  // More workers than CPUs, unpinned, still each runs exactly once.
  ThreadPool pool({0, 0, 0, 0, 0}, /*pin=*/false);
  for (int round = 0; round < 200; ++round) {
    std::vector<std::atomic<int>> seen(pool.num_threads());
    pool.RunOnAll([&](int i) { seen[i].fetch_add(1); });
    for (auto& s : seen) ASSERT_EQ(s.load(), 1);
  }
}

TEST(ThreadPoolTest, ConcurrentCallersAreSerialized) {
  ThreadPool pool(AllowedCpus());
  std::atomic<long> total{0};
  auto caller = [&] {
    for (int i = 0; i < 100; ++i) {
      pool.ParallelFor(100000, 64, [&](size_t b, size_t e) {
        total.fetch_add(static_cast<long>(e - b));
      });
    }
  };
  std::thread a(caller), b(caller);
  a.join();
  b.join();
  EXPECT_EQ(total.load(), 2L * 100 * 100000);
}

TEST(ThreadPoolTest, WorkersArePinned) {
  const std::vector<int> cpus = AllowedCpus();
  ThreadPool pool(cpus);
  std::vector<int> where(pool.num_threads(), -1);
  pool.RunOnAll([&](int i) { where[i] = sched_getcpu(); });
  for (int i = 0; i < pool.num_threads(); ++i) EXPECT_EQ(where[i], cpus[i]);
}

TEST(ThreadPoolTest, SplitRangeIsContiguousAndAligned) {
  for (size_t n : {size_t{1}, size_t{1000}, size_t{1000003}}) {
    size_t next = 0;
    for (int t = 0; t < 7; ++t) {
      size_t b = 0, e = 0;
      ThreadPool::SplitRange(n, 64, 7, t, &b, &e);
      EXPECT_EQ(b, std::min(n, next));
      if (b < n) {
        EXPECT_EQ(b % 64, 0u);
      }
      next = std::max(next, e);
    }
    EXPECT_EQ(next, n);
  }
}

TEST(ThreadPoolTest, NumaNodesPartitionAllowedCpus) {
  const std::vector<int> allowed = AllowedCpus();
  std::set<int> seen;
  for (const auto& node : NumaNodeCpus()) {
    ASSERT_FALSE(node.empty());
    for (int c : node) {
      EXPECT_TRUE(std::binary_search(allowed.begin(), allowed.end(), c));
      EXPECT_TRUE(seen.insert(c).second) << "cpu " << c << " in two nodes";
    }
  }
  EXPECT_FALSE(seen.empty());
}

TEST(ThreadPoolTest, DefaultPoolUsesEveryAllowedCpu) {
  EXPECT_EQ(DefaultThreadPool()->num_threads(),
            static_cast<int>(AllowedCpus().size()));
}

}  // namespace
}  // namespace tidepool::kernels
