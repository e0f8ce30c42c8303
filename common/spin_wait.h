// Adaptive spinning before a futex sleep, for the two ends of a
// shared-memory channel (the hot path). A round trip through two futex
// sleeps costs tens of microseconds; two spinning peers answer in well
// under one. Spinning only pays while the other side answers within the
// spin window, and it steals the CPU from the very peer it waits for when
// the machine is loaded, so the budget adapts:
//
//   - a wait that the spin satisfies keeps the full budget (the window);
//   - a spin that runs out halves the budget (down to zero: sleep at once)
//     and narrows a widened window by a quarter, back toward kMaxSpinNs;
//   - an answer that came soon after the spin gave up (a spin up to the
//     window would have caught it) restores the full budget at once:
//     answers arrive within the window again. (Doubling back from a small
//     budget would not do: when both peers sleep, each one's wake-up takes
//     longer than the other's short spin, so both would stay stuck at the
//     bottom.)
//   - an answer that a somewhat longer spin would have caught widens the
//     window to cover it, up to kCeilingNs. Where waking a sleeping thread
//     is slow (an idle vCPU of a VM takes its host 50-100 us to run
//     again), the peer's answer to a request that had to wake it comes
//     later than kMaxSpinNs: with a fixed window each end then sleeps on
//     every request and pays the other's wake-up too. "Soon" is measured
//     from when the answer was posted, which the caller passes (the ring
//     carries it), not from when the sleeper woke;
//   - a thread that was preempted does not spin for the next kBackoffNs:
//     other threads want the CPUs, and the peer may be one of them. A
//     spinner on a loaded machine burns its share and then loses the CPU
//     for whole time slices (milliseconds), while a futex sleeper that is
//     woken gets it back at once; so under load both ends just sleep.
//     Preemption shows as a rise in the thread's involuntary context
//     switches (getrusage): read at most every kSampleNs, which also
//     catches preemption outside the spin, such as in the middle of
//     serving a request, and at once when the spin sees a gap between two
//     clock reads;
//   - a gap without such a switch is not preemption: the machine itself
//     stalled (a virtual CPU that its host ran something else on, an
//     interrupt), which no thread here asked for and sleeping would not
//     help, so the spin goes on. On a cloud VM with busy neighbours this
//     happens hundreds of times a second; backing off for each one left
//     both ends of the hot path asleep, at the futex floor, all the time;
//   - inside the spin, a pause instruction every iteration and a
//     sched_yield now and then hand the core to whatever else is runnable.
//
// Not thread-safe: one per waiting thread (or under the caller's lock).
//
//   AdaptiveSpin spin;
//   if (!spin.Spin([&] { return ready(); })) {
//     const int64_t gave_up = AdaptiveSpin::NowNs();
//     ... futex-sleep until ready() ...
//     spin.Slept(AdaptiveSpin::NowNs() - gave_up);
//   }
#pragma once

#include <sched.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>

namespace tidepool {

class AdaptiveSpin {
 public:
  // The window a spin starts with: the bound of one spin, and how soon an
  // arrival must come to count as "soon" (it would have been caught).
  static constexpr int64_t kMaxSpinNs = 40'000;
  // How far the window may widen (see above).
  static constexpr int64_t kCeilingNs = 400'000;
  // Below this the budget drops to zero (no spin at all).
  static constexpr int64_t kMinSpinNs = 2'000;
  // A gap this long between two clock reads in the spin: preempted, or
  // the machine stalled (the context switches tell which).
  static constexpr int64_t kPreemptedNs = 20'000;
  // No spinning for this long after a preemption.
  static constexpr int64_t kBackoffNs = 20'000'000;
  // How often the involuntary context switches are read.
  static constexpr int64_t kSampleNs = 1'000'000;

  static int64_t NowNs() {
    timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return int64_t{ts.tv_sec} * 1'000'000'000 + ts.tv_nsec;
  }

  static void CpuRelax() {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    asm volatile("yield" ::: "memory");
#endif
  }

  // Spins until `ready()` is true (returns true) or the budget runs out
  // (returns false: the caller sleeps, then reports Slept).
  template <typename Ready>
  bool Spin(Ready&& ready) {
    if (ready()) return true;
    const int64_t start = NowNs();
    if (start - sampled_ns_ > kSampleNs) Sample(start);
    spent_ns_ = 0;
    if (start < no_spin_until_ns_ || budget_ns_ <= 0) return false;
    int64_t last = start;
    for (uint32_t i = 1;; ++i) {
      CpuRelax();
      if (ready()) {
        budget_ns_ = window_ns_;
        return true;
      }
      if ((i & 31) != 0) continue;
      const int64_t now = NowNs();
      if (now - last > kPreemptedNs && Sample(now)) return ready();
      spent_ns_ = now - start;
      if (spent_ns_ > budget_ns_) break;
      last = now;
      if ((i & 255) == 0) sched_yield();
    }
    Shrink();
    return ready();
  }

  // What Spin gave up on came `late_ns` after it gave up: when the answer
  // was posted, where the caller knows it, else when the caller woke.
  void Slept(int64_t late_ns) {
    // A spin this long would have caught it.
    const int64_t needed = spent_ns_ + (late_ns > 0 ? late_ns : 0);
    if (needed > window_ns_ && needed < kCeilingNs) {
      window_ns_ = std::min(kCeilingNs, needed + needed / 4);
    }
    // Within the window, or soon after a spin already at the ceiling.
    if (needed <= window_ns_ || late_ns < kMaxSpinNs) budget_ns_ = window_ns_;
  }

  int64_t budget_ns() const { return budget_ns_; }
  int64_t window_ns() const { return window_ns_; }
  // Whether it holds off spinning now, after a preemption.
  bool backing_off() const { return NowNs() < no_spin_until_ns_; }

 private:
  // Reads the thread's involuntary context switches; true (and backs off)
  // if they rose since the last read.
  bool Sample(int64_t now) {
    sampled_ns_ = now;
    rusage usage;
    if (getrusage(RUSAGE_THREAD, &usage) != 0) return false;
    // Only the same thread's count means anything (callers under a lock
    // may come from several threads).
    const pid_t tid = gettid();
    const bool preempted = tid == tid_ && usage.ru_nivcsw != nivcsw_;
    if (preempted) no_spin_until_ns_ = now + kBackoffNs;
    tid_ = tid;
    nivcsw_ = usage.ru_nivcsw;
    return preempted;
  }

  void Shrink() {
    budget_ns_ /= 2;
    if (budget_ns_ < kMinSpinNs) budget_ns_ = 0;
    window_ns_ = std::max(kMaxSpinNs, window_ns_ - window_ns_ / 4);
  }

  int64_t window_ns_ = kMaxSpinNs;
  int64_t budget_ns_ = kMaxSpinNs;
  int64_t spent_ns_ = 0;          // how long the last Spin spun
  int64_t no_spin_until_ns_ = 0;  // set when preempted
  int64_t sampled_ns_ = 0;
  pid_t tid_ = 0;
  long nivcsw_ = 0;  // the thread's involuntary context switches
};

}  // namespace tidepool
