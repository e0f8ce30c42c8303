#include "common/futex.h"

#include <linux/futex.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <climits>

namespace tidepool {

static_assert(std::atomic<uint32_t>::is_always_lock_free);
static_assert(sizeof(std::atomic<uint32_t>) == sizeof(uint32_t));

void FutexWait(std::atomic<uint32_t>* word, uint32_t expected,
               int64_t timeout_ns) {
  timespec ts{};
  timespec* tsp = nullptr;
  if (timeout_ns >= 0) {
    ts.tv_sec = timeout_ns / 1000000000;
    ts.tv_nsec = timeout_ns % 1000000000;
    tsp = &ts;
  }
  // Not FUTEX_PRIVATE: the word is shared between processes.
  ::syscall(SYS_futex, reinterpret_cast<uint32_t*>(word), FUTEX_WAIT, expected,
            tsp, nullptr, 0);
}

void FutexWakeAll(std::atomic<uint32_t>* word) {
  ::syscall(SYS_futex, reinterpret_cast<uint32_t*>(word), FUTEX_WAKE, INT_MAX,
            nullptr, nullptr, 0);
}

bool FutexWaitAnySupported() {
  // No waiters is EINVAL where the call exists and ENOSYS where it does not.
  static const bool supported = ::syscall(SYS_futex_waitv, nullptr, 0, 0,
                                          nullptr, CLOCK_MONOTONIC) != 0 &&
                                errno == EINVAL;
  return supported;
}

void FutexWaitAny(const FutexWaiter* waiters, size_t count,
                  int64_t timeout_ns) {
  if (count == 0 || count > kFutexWaitAnyMax) return;
  futex_waitv vec[kFutexWaitAnyMax] = {};
  for (size_t i = 0; i < count; ++i) {
    vec[i].val = waiters[i].expected;
    vec[i].uaddr = reinterpret_cast<uintptr_t>(waiters[i].word);
    // Not FUTEX_PRIVATE_FLAG: the words may be shared between processes.
    vec[i].flags = FUTEX_32;
  }
  // futex_waitv's timeout is absolute.
  timespec ts{};
  timespec* tsp = nullptr;
  if (timeout_ns >= 0) {
    clock_gettime(CLOCK_MONOTONIC, &ts);
    const int64_t end =
        int64_t{ts.tv_sec} * 1000000000 + ts.tv_nsec + timeout_ns;
    ts.tv_sec = end / 1000000000;
    ts.tv_nsec = end % 1000000000;
    tsp = &ts;
  }
  ::syscall(SYS_futex_waitv, vec, static_cast<unsigned>(count), 0, tsp,
            CLOCK_MONOTONIC);
}

}  // namespace tidepool
