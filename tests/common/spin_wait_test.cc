#include "common/spin_wait.h"

#include <pthread.h>
#include <sched.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <thread>

#include "gtest/gtest.h"

namespace tidepool {
namespace {

TEST(AdaptiveSpinTest, AWaitTheSpinSatisfiesKeepsTheFullBudget) {
  AdaptiveSpin spin;
  int calls = 0;
  EXPECT_TRUE(spin.Spin([&] { return ++calls > 100; }));
  EXPECT_EQ(spin.budget_ns(), AdaptiveSpin::kMaxSpinNs);
}

// Another thread of this machine may preempt the test at any time, which
// rightly makes the spin back off; so a check that needs no preemption is
// tried a few times, and passes on the first try that saw none.
template <typename Try>
bool OnceWithoutPreemption(Try&& attempt) {
  for (int i = 0; i < 20; ++i) {
    AdaptiveSpin spin;
    if (attempt(spin)) return true;
  }
  return false;
}

TEST(AdaptiveSpinTest,
     ASpinThatRunsOutHalvesTheBudgetAndASoonAnswerRestoresIt) {
  EXPECT_TRUE(OnceWithoutPreemption([](AdaptiveSpin& spin) {
    EXPECT_FALSE(spin.Spin([] { return false; }));
    if (spin.backing_off()) return false;
    EXPECT_EQ(spin.budget_ns(), AdaptiveSpin::kMaxSpinNs / 2);
    spin.Slept(/*late_ns=*/0);
    EXPECT_GE(spin.budget_ns(), AdaptiveSpin::kMaxSpinNs);
    return true;
  }));
}

TEST(AdaptiveSpinTest, AnAnswerFarTooLateLeavesTheBudgetShrunk) {
  EXPECT_TRUE(OnceWithoutPreemption([](AdaptiveSpin& spin) {
    EXPECT_FALSE(spin.Spin([] { return false; }));
    if (spin.backing_off()) return false;
    spin.Slept(/*late_ns=*/AdaptiveSpin::kCeilingNs);
    EXPECT_EQ(spin.budget_ns(), AdaptiveSpin::kMaxSpinNs / 2);
    EXPECT_EQ(spin.window_ns(), AdaptiveSpin::kMaxSpinNs);
    return true;
  }));
}

// Where the peer takes longer than the window to answer (its wake-up is
// slow), an answer a little after the spin gave up widens the window, so
// that the next wait of that length is caught by the spin, not slept.
TEST(AdaptiveSpinTest, AnAnswerJustAfterTheSpinWidensTheWindowToCatchTheNext) {
  constexpr int64_t kLate = 60'000;
  EXPECT_TRUE(OnceWithoutPreemption([](AdaptiveSpin& spin) {
    EXPECT_FALSE(spin.Spin([] { return false; }));
    if (spin.backing_off()) return false;
    spin.Slept(kLate);
    EXPECT_GT(spin.window_ns(), AdaptiveSpin::kMaxSpinNs + kLate);
    EXPECT_LE(spin.window_ns(), AdaptiveSpin::kCeilingNs);
    EXPECT_EQ(spin.budget_ns(), spin.window_ns());
    // The next answer comes as late: the spin waits for it.
    const int64_t start = AdaptiveSpin::NowNs();
    spin.Spin([&] {
      return AdaptiveSpin::NowNs() - start > AdaptiveSpin::kMaxSpinNs + kLate;
    });
    if (spin.backing_off()) return false;
    // Caught (the budget stays the window), not run out (it would halve).
    EXPECT_EQ(spin.budget_ns(), spin.window_ns());
    return true;
  }));
}

TEST(AdaptiveSpinTest, RunningOutNarrowsAWidenedWindowBackToTheStart) {
  EXPECT_TRUE(OnceWithoutPreemption([](AdaptiveSpin& spin) {
    EXPECT_FALSE(spin.Spin([] { return false; }));
    spin.Slept(/*late_ns=*/200'000);
    EXPECT_GT(spin.window_ns(), AdaptiveSpin::kMaxSpinNs);
    for (int i = 0; i < 40; ++i) {
      spin.Spin([] { return false; });
      spin.Slept(/*late_ns=*/10 * AdaptiveSpin::kCeilingNs);  // idle
    }
    if (spin.backing_off()) return false;
    EXPECT_EQ(spin.window_ns(), AdaptiveSpin::kMaxSpinNs);
    return true;
  }));
}

// A thread that stops running without being preempted (here it sleeps,
// which is a voluntary switch; on a VM, the host running something else on
// its virtual CPU looks the same from inside) sees a gap in its clock
// reads, and nothing here wants its CPU: it must not back off.
TEST(AdaptiveSpinTest, AStallWithoutPreemptionDoesNotStopSpinning) {
  EXPECT_TRUE(OnceWithoutPreemption([](AdaptiveSpin& spin) {
    EXPECT_FALSE(spin.Spin([] { return false; }));  // first read of the counts
    spin.Slept(/*waited_ns=*/0);
    int calls = 0;
    spin.Spin([&] {
      // Past the loop's first clock read (every 32nd pause), stall for
      // twice a preemption's gap.
      if (++calls == 40) ::usleep(2 * AdaptiveSpin::kPreemptedNs / 1'000);
      return calls > 100;
    });
    return !spin.backing_off();
  }));
}

// A thread that another thread of this machine takes the CPU from (both
// pinned to one CPU) stops spinning: the peer may be the one waiting.
TEST(AdaptiveSpinTest, PreemptionByAnotherThreadStopsTheSpin) {
  cpu_set_t one;
  CPU_ZERO(&one);
  CPU_SET(sched_getcpu(), &one);
  cpu_set_t saved;
  ASSERT_EQ(pthread_getaffinity_np(pthread_self(), sizeof(saved), &saved), 0);
  ASSERT_EQ(pthread_setaffinity_np(pthread_self(), sizeof(one), &one), 0);
  std::atomic<bool> stop{false};
  std::thread hog([&] {
    pthread_setaffinity_np(pthread_self(), sizeof(one), &one);
    while (!stop.load(std::memory_order_relaxed)) AdaptiveSpin::CpuRelax();
  });
  AdaptiveSpin spin;
  const auto deadline =
      std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (!spin.backing_off() && std::chrono::steady_clock::now() < deadline) {
    spin.Spin([] { return false; });
    // Keep the full budget: only a preemption may stop it.
    spin.Slept(/*waited_ns=*/0);
  }
  const bool backed_off = spin.backing_off();
  stop.store(true);
  hog.join();
  pthread_setaffinity_np(pthread_self(), sizeof(saved), &saved);
  EXPECT_TRUE(backed_off);
}

}  // namespace
}  // namespace tidepool
