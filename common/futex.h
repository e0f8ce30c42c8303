// Process-shared futex wait/wake on a 32-bit word in shared memory, and a
// wait on several words at once (futex_waitv, Linux 5.16 and later).
//
//   FutexWaiter w[] = {{&page_a->bell, bell_a}, {&page_b->bell, bell_b}};
//   if (FutexWaitAnySupported()) FutexWaitAny(w, 2, 200'000'000);
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>

namespace tidepool {

// Sleeps while `*word == expected`, at most `timeout_ns` (<0: no limit).
// Returns spuriously; callers re-check their condition.
void FutexWait(std::atomic<uint32_t>* word, uint32_t expected,
               int64_t timeout_ns = -1);
void FutexWakeAll(std::atomic<uint32_t>* word);

// One word of a FutexWaitAny: sleep while `*word == expected`.
struct FutexWaiter {
  std::atomic<uint32_t>* word;
  uint32_t expected;
};

// The most words one FutexWaitAny takes (the kernel's FUTEX_WAITV_MAX).
inline constexpr size_t kFutexWaitAnyMax = 128;

// Whether the kernel has futex_waitv (probed once).
bool FutexWaitAnySupported();

// Sleeps until one of the `count` words (at most kFutexWaitAnyMax) is woken
// by FutexWakeAll or no longer holds its expected value, at most
// `timeout_ns` (<0: no limit). Returns spuriously, as FutexWait does; with
// no kernel support it returns at once.
void FutexWaitAny(const FutexWaiter* waiters, size_t count,
                  int64_t timeout_ns = -1);

}  // namespace tidepool
