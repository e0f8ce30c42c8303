#include "common/spin_wait.h"

#include <pthread.h>
#include <sched.h>
#include <sys/resource.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <optional>
#include <string>
#include <thread>

#include "absl/strings/string_view.h"
#include "gtest/gtest.h"

namespace tidepool {
namespace {

// Another thread of this machine may preempt the test at any time, which
// rightly makes the spin back off. So a check that needs no preemption
// runs until one try was not preempted (the thread's involuntary context
// switches did not rise), and that try decides: "" if it passed, else what
// failed. nullopt: every try was preempted (a machine loaded throughout).
long InvoluntarySwitches() {
  rusage usage;
  getrusage(RUSAGE_THREAD, &usage);
  return usage.ru_nivcsw;
}

template <typename Try>
std::optional<std::string> OnceWithoutPreemption(Try&& attempt) {
  for (int i = 0; i < 200; ++i) {
    AdaptiveSpin spin;
    const long before = InvoluntarySwitches();
    std::string failed = attempt(spin);
    if (InvoluntarySwitches() == before) return failed;
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  return std::nullopt;
}

#define EXPECT_PASSES_WITHOUT_PREEMPTION(attempt)                             \
  do {                                                                        \
    const std::optional<std::string> failed = OnceWithoutPreemption(attempt); \
    if (!failed.has_value()) GTEST_SKIP() << "every try was preempted";       \
    EXPECT_EQ(*failed, "");                                                   \
  } while (0)

std::string Expect(bool ok, absl::string_view what) {
  return ok ? "" : std::string(what);
}

TEST(AdaptiveSpinTest, AWaitTheSpinSatisfiesKeepsTheFullBudget) {
  EXPECT_PASSES_WITHOUT_PREEMPTION([](AdaptiveSpin& spin) -> std::string {
    int calls = 0;
    if (!spin.Spin([&] { return ++calls > 100; })) return "not caught";
    return Expect(spin.budget_ns() == AdaptiveSpin::kMaxSpinNs,
                  "budget not kept");
  });
}

TEST(AdaptiveSpinTest,
     ASpinThatRunsOutHalvesTheBudgetAndASoonAnswerRestoresIt) {
  EXPECT_PASSES_WITHOUT_PREEMPTION([](AdaptiveSpin& spin) -> std::string {
    if (spin.Spin([] { return false; })) return "ready without cause";
    if (spin.budget_ns() != AdaptiveSpin::kMaxSpinNs / 2) return "not halved";
    spin.Slept(/*late_ns=*/0);
    return Expect(spin.budget_ns() >= AdaptiveSpin::kMaxSpinNs, "not restored");
  });
}

TEST(AdaptiveSpinTest, AnAnswerFarTooLateLeavesTheBudgetShrunk) {
  EXPECT_PASSES_WITHOUT_PREEMPTION([](AdaptiveSpin& spin) -> std::string {
    spin.Spin([] { return false; });
    spin.Slept(/*late_ns=*/AdaptiveSpin::kCeilingNs);
    if (spin.budget_ns() != AdaptiveSpin::kMaxSpinNs / 2) return "restored";
    return Expect(spin.window_ns() == AdaptiveSpin::kMaxSpinNs, "widened");
  });
}

// Where the peer takes longer than the window to answer (its wake-up is
// slow), an answer a little after the spin gave up widens the window, so
// that the next wait of that length is caught by the spin, not slept.
TEST(AdaptiveSpinTest, AnAnswerJustAfterTheSpinWidensTheWindowToCatchTheNext) {
  constexpr int64_t kLate = 60'000;
  EXPECT_PASSES_WITHOUT_PREEMPTION([](AdaptiveSpin& spin) -> std::string {
    spin.Spin([] { return false; });
    spin.Slept(kLate);
    if (spin.window_ns() <= AdaptiveSpin::kMaxSpinNs + kLate ||
        spin.window_ns() > AdaptiveSpin::kCeilingNs) {
      return "window not widened to cover the answer";
    }
    if (spin.budget_ns() != spin.window_ns()) return "budget not the window";
    // The next answer comes as late: the spin waits for it.
    const int64_t start = AdaptiveSpin::NowNs();
    spin.Spin([&] {
      return AdaptiveSpin::NowNs() - start > AdaptiveSpin::kMaxSpinNs + kLate;
    });
    // Caught (the budget stays the window), not run out (it would halve).
    return Expect(spin.budget_ns() == spin.window_ns(), "the spin ran out");
  });
}

TEST(AdaptiveSpinTest, RunningOutNarrowsAWidenedWindowBackToTheStart) {
  EXPECT_PASSES_WITHOUT_PREEMPTION([](AdaptiveSpin& spin) -> std::string {
    spin.Spin([] { return false; });
    spin.Slept(/*late_ns=*/200'000);
    if (spin.window_ns() <= AdaptiveSpin::kMaxSpinNs) return "not widened";
    for (int i = 0; i < 40; ++i) {
      spin.Spin([] { return false; });
      spin.Slept(/*late_ns=*/10 * AdaptiveSpin::kCeilingNs);  // idle
    }
    return Expect(spin.window_ns() == AdaptiveSpin::kMaxSpinNs, "not narrowed");
  });
}

// A thread that stops running without being preempted (here it sleeps,
// which is a voluntary switch; on a VM, the host running something else on
// its virtual CPU looks the same from inside) sees a gap in its clock
// reads, and nothing here wants its CPU: it must not back off.
TEST(AdaptiveSpinTest, AStallWithoutPreemptionDoesNotStopSpinning) {
  EXPECT_PASSES_WITHOUT_PREEMPTION([](AdaptiveSpin& spin) -> std::string {
    spin.Spin([] { return false; });  // the first read of the counts
    spin.Slept(/*late_ns=*/0);
    int calls = 0;
    spin.Spin([&] {
      // Past the loop's first clock read (every 32nd pause), stall for
      // twice a preemption's gap.
      if (++calls == 40) ::usleep(2 * AdaptiveSpin::kPreemptedNs / 1'000);
      return calls > 100;
    });
    return Expect(!spin.backing_off(), "backed off after a stall");
  });
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
