// Process-shared futex wait/wake on a 32-bit word in shared memory.
#pragma once

#include <atomic>
#include <cstdint>

namespace tidepool {

// Sleeps while `*word == expected`, at most `timeout_ns` (<0: no limit).
// Returns spuriously; callers re-check their condition.
void FutexWait(std::atomic<uint32_t>* word, uint32_t expected,
               int64_t timeout_ns = -1);
void FutexWakeAll(std::atomic<uint32_t>* word);

}  // namespace tidepool
