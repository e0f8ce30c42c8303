// TSan builds only: every way the project and its libraries hand state from
// one thread to another through Abseil's synchronization is seen by TSan
// (common/sanitizers/tsan_absl_mutex.cc), and a real race still is one.
// A report ends the test process (halt_on_error, exit status 66), so each
// race-free case passes only if TSan saw the handoff.
#include <atomic>
#include <thread>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"

namespace {

constexpr int kRounds = 2000;

TEST(TsanAbslMutexTest, LockAndUnlock) {
  absl::Mutex mu;
  int counter = 0;
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < kRounds; ++i) {
        absl::MutexLock lock(&mu);
        ++counter;
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(counter, 4 * kRounds);
}

TEST(TsanAbslMutexTest, ReaderLockTryLockAndReaderTryLock) {
  absl::Mutex mu;
  int value = 0;
  std::thread writer([&] {
    for (int i = 0; i < kRounds; ++i) {
      if (i % 2 == 0) {
        absl::MutexLock lock(&mu);
        ++value;
      } else {
        while (!mu.TryLock()) {
        }
        ++value;
        mu.Unlock();
      }
    }
  });
  int seen = 0;
  for (int i = 0; i < kRounds; ++i) {
    if (i % 2 == 0) {
      absl::ReaderMutexLock lock(&mu);
      seen = value;
    } else if (mu.ReaderTryLock()) {
      seen = value;
      mu.ReaderUnlock();
    }
  }
  writer.join();
  EXPECT_LE(seen, kRounds);
  EXPECT_EQ(value, kRounds);
}

TEST(TsanAbslMutexTest, ConditionsAwaitAndDeadlines) {
  absl::Mutex mu;
  int stage = 0;
  int payload = 0;
  std::thread other([&] {
    mu.LockWhen(absl::Condition(
        +[](int* s) { return *s == 1; }, &stage));
    payload += 10;
    stage = 2;
    mu.Unlock();
    absl::MutexLock lock(&mu);
    mu.Await(absl::Condition(
        +[](int* s) { return *s == 3; }, &stage));
    payload += 100;
    stage = 4;
  });
  {
    absl::MutexLock lock(&mu);
    payload = 1;
    stage = 1;
  }
  mu.LockWhenWithTimeout(absl::Condition(
                             +[](int* s) { return *s == 2; }, &stage),
                         absl::InfiniteDuration());
  payload += 1000;
  stage = 3;
  EXPECT_TRUE(mu.AwaitWithDeadline(absl::Condition(
                                       +[](int* s) { return *s == 4; }, &stage),
                                   absl::InfiniteFuture()));
  EXPECT_EQ(payload, 1111);
  mu.Unlock();
  other.join();
}

TEST(TsanAbslMutexTest, CondVar) {
  absl::Mutex mu;
  absl::CondVar cv;
  bool ready = false;
  int payload = 0;
  std::thread producer([&] {
    absl::MutexLock lock(&mu);
    payload = 42;
    ready = true;
    cv.Signal();
  });
  {
    absl::MutexLock lock(&mu);
    while (!ready) cv.WaitWithTimeout(&mu, absl::Hours(1));
    EXPECT_EQ(payload, 42);
    ++payload;
  }
  producer.join();
  ready = false;
  std::thread second([&] {
    absl::MutexLock lock(&mu);
    ++payload;
    ready = true;
    cv.SignalAll();
  });
  {
    absl::MutexLock lock(&mu);
    while (!ready) cv.Wait(&mu);
    EXPECT_EQ(payload, 44);
  }
  second.join();
}

// Notified before anyone waits: the wait is an atomic load in Abseil.
TEST(TsanAbslMutexTest, NotificationFastAndSlowPaths) {
  int payload = 0;
  absl::Notification early;
  std::thread notifier([&] {
    payload = 1;
    early.Notify();
  });
  notifier.join();
  early.WaitForNotification();
  EXPECT_EQ(payload, 1);

  absl::Notification late;
  std::thread waiter([&] {
    ASSERT_TRUE(late.WaitForNotificationWithTimeout(absl::Hours(1)));
    EXPECT_EQ(payload, 2);
  });
  payload = 2;
  late.Notify();
  waiter.join();
  while (!late.HasBeenNotified()) {
  }
}

// The annotations must not hide a race: state written under a mutex by one
// thread and without it by another is still reported.
TEST(TsanAbslMutexDeathTest, UnguardedWriteIsReported) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(
      {
        absl::Mutex mu;
        int value = 0;
        std::thread locked([&] {
          absl::MutexLock lock(&mu);
          ++value;
        });
        std::thread unlocked([&] { ++value; });
        locked.join();
        unlocked.join();
        std::exit(value == 2 ? 0 : 1);
      },
      ::testing::ExitedWithCode(66), "ThreadSanitizer: data race");
}

}  // namespace
