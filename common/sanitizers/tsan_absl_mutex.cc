// ThreadSanitizer builds only (cmake/TidepoolSanitizers.cmake links it into
// every executable). Debian's Abseil is compiled without TSan, so its
// absl::Mutex never tells TSan that it locked or unlocked: TSan sees no
// happens-before between two threads that take turns under one, reports
// every access to the state it guards as a race, and tests that wait on a
// Mutex or CondVar hang under the reports.
//
// This file defines the exported members of absl::Mutex and absl::CondVar
// that acquire or release a mutex, and those of absl::Notification, whose
// fast path (already notified) is an atomic load in Abseil's code. Each one
// reports to TSan through its mutex annotation interface (the calls Abseil
// makes itself when built with TSan) and runs Abseil's own function, found with
// dlsym(RTLD_NEXT). Defined in the executable, they take precedence over
// the shared library's for every caller: the project, gRPC, and Abseil's
// own Notification, BlockingCounter and Barrier.
//
// Why not an Abseil built with TSan: it would have to be built from source
// on every CI machine (or shipped), and gRPC and glog link Debian's shared
// Abseil anyway. This file only depends on Abseil's exported symbols,
// which the Itanium ABI fixes; a missing one aborts at its first use.
//
// The *WithTimeout members are not defined here: Abseil's call the
// *WithDeadline ones through the PLT, that is, the ones below.
#include <dlfcn.h>
#include <sanitizer/tsan_interface.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "absl/base/options.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"

#if !defined(__SANITIZE_THREAD__)
#if !defined(__has_feature) || !__has_feature(thread_sanitizer)
#error "tsan_absl_mutex.cc belongs to ThreadSanitizer builds only"
#endif
#endif

static_assert(ABSL_OPTION_USE_INLINE_NAMESPACE == 1,
              "the mangled names below assume absl::<inline namespace>");

namespace {

#define TIDEPOOL_STR2(x) #x
#define TIDEPOOL_STR(x) TIDEPOOL_STR2(x)

// Abseil's definition of absl::<inline namespace>::`rest` ("5Mutex4LockEv":
// the mangled name past the namespaces, as `nm` prints it); `const_member`
// for a const member function (_ZNK).
template <typename Fn>
Fn Real(const char* rest, bool const_member = false) {
  const char* ns = TIDEPOOL_STR(ABSL_OPTION_INLINE_NAMESPACE_NAME);
  char name[160];
  std::snprintf(name, sizeof(name), "_ZN%s4absl%zu%s%s",
                const_member ? "K" : "", std::strlen(ns), ns, rest);
  void* fn = ::dlsym(RTLD_NEXT, name);
  if (fn == nullptr) {
    std::fprintf(stderr, "tsan_absl_mutex: Abseil does not export %s\n", name);
    std::abort();
  }
  return reinterpret_cast<Fn>(fn);
}

// Locks taken inside gRPC or Abseil are annotated too (gRPC hands its
// objects between threads under them), but TSan's check of the lock as an
// atomic access to the mutex is skipped there: gRPC also hands objects
// over in ways TSan cannot see, and the first lock of a mutex inside one
// would look like a race with its allocation. Code of the executable is
// instrumented and checked as usual.
extern "C" void __tsan_ignore_thread_begin();
extern "C" void __tsan_ignore_thread_end();
extern "C" char __executable_start[];
extern "C" char etext[];

class IgnoreLibraryAccess {
 public:
  explicit IgnoreLibraryAccess(const void* caller)
      : on_(caller < static_cast<const void*>(__executable_start) ||
            caller >= static_cast<const void*>(etext)) {
    if (on_) __tsan_ignore_thread_begin();
  }
  ~IgnoreLibraryAccess() {
    if (on_) __tsan_ignore_thread_end();
  }

 private:
  const bool on_;
};

}  // namespace

namespace absl {
ABSL_NAMESPACE_BEGIN

namespace {

// kMuWriter in Abseil's mutex.cc: the state word's writer bit. Await and
// CondVar::Wait release and retake a mutex held in either mode.
constexpr intptr_t kMuWriterBit = 0x0008;

}  // namespace

void Mutex::Lock() {
  static const auto real = Real<void (*)(Mutex*)>("5Mutex4LockEv");
  const IgnoreLibraryAccess ignore(__builtin_return_address(0));
  __tsan_mutex_pre_lock(this, 0);
  real(this);
  __tsan_mutex_post_lock(this, 0, 0);
}

void Mutex::Unlock() {
  static const auto real = Real<void (*)(Mutex*)>("5Mutex6UnlockEv");
  const IgnoreLibraryAccess ignore(__builtin_return_address(0));
  // Abseil may evaluate waiters' conditions here: the annotation ignores
  // accesses until post_unlock.
  __tsan_mutex_pre_unlock(this, 0);
  real(this);
  __tsan_mutex_post_unlock(this, 0);
}

bool Mutex::TryLock() {
  static const auto real = Real<bool (*)(Mutex*)>("5Mutex7TryLockEv");
  const IgnoreLibraryAccess ignore(__builtin_return_address(0));
  __tsan_mutex_pre_lock(this, __tsan_mutex_try_lock);
  const bool locked = real(this);
  __tsan_mutex_post_lock(
      this, __tsan_mutex_try_lock | (locked ? 0 : __tsan_mutex_try_lock_failed),
      0);
  return locked;
}

void Mutex::ReaderLock() {
  static const auto real = Real<void (*)(Mutex*)>("5Mutex10ReaderLockEv");
  const IgnoreLibraryAccess ignore(__builtin_return_address(0));
  __tsan_mutex_pre_lock(this, __tsan_mutex_read_lock);
  real(this);
  __tsan_mutex_post_lock(this, __tsan_mutex_read_lock, 0);
}

void Mutex::ReaderUnlock() {
  static const auto real = Real<void (*)(Mutex*)>("5Mutex12ReaderUnlockEv");
  const IgnoreLibraryAccess ignore(__builtin_return_address(0));
  __tsan_mutex_pre_unlock(this, __tsan_mutex_read_lock);
  real(this);
  __tsan_mutex_post_unlock(this, __tsan_mutex_read_lock);
}

bool Mutex::ReaderTryLock() {
  static const auto real = Real<bool (*)(Mutex*)>("5Mutex13ReaderTryLockEv");
  const IgnoreLibraryAccess ignore(__builtin_return_address(0));
  const unsigned flags = __tsan_mutex_read_lock | __tsan_mutex_try_lock;
  __tsan_mutex_pre_lock(this, flags);
  const bool locked = real(this);
  __tsan_mutex_post_lock(
      this, flags | (locked ? 0 : __tsan_mutex_try_lock_failed), 0);
  return locked;
}

// The condition is evaluated between pre_lock and post_lock, where TSan
// ignores accesses: Abseil evaluates it with the mutex held, perhaps in
// another thread's Unlock.
void Mutex::LockWhen(const Condition& cond) {
  static const auto real = Real<void (*)(Mutex*, const Condition&)>(
      "5Mutex8LockWhenERKNS0_9ConditionE");
  const IgnoreLibraryAccess ignore(__builtin_return_address(0));
  __tsan_mutex_pre_lock(this, 0);
  real(this, cond);
  __tsan_mutex_post_lock(this, 0, 0);
}

void Mutex::ReaderLockWhen(const Condition& cond) {
  static const auto real = Real<void (*)(Mutex*, const Condition&)>(
      "5Mutex14ReaderLockWhenERKNS0_9ConditionE");
  const IgnoreLibraryAccess ignore(__builtin_return_address(0));
  __tsan_mutex_pre_lock(this, __tsan_mutex_read_lock);
  real(this, cond);
  __tsan_mutex_post_lock(this, __tsan_mutex_read_lock, 0);
}

bool Mutex::LockWhenWithDeadline(const Condition& cond, absl::Time deadline) {
  static const auto real = Real<bool (*)(Mutex*, const Condition&, absl::Time)>(
      "5Mutex20LockWhenWithDeadlineERKNS0_9ConditionENS0_4TimeE");
  const IgnoreLibraryAccess ignore(__builtin_return_address(0));
  __tsan_mutex_pre_lock(this, 0);
  const bool res = real(this, cond, deadline);
  __tsan_mutex_post_lock(this, 0, 0);
  return res;
}

bool Mutex::ReaderLockWhenWithDeadline(const Condition& cond,
                                       absl::Time deadline) {
  static const auto real = Real<bool (*)(Mutex*, const Condition&, absl::Time)>(
      "5Mutex26ReaderLockWhenWithDeadlineERKNS0_9ConditionENS0_4TimeE");
  const IgnoreLibraryAccess ignore(__builtin_return_address(0));
  __tsan_mutex_pre_lock(this, __tsan_mutex_read_lock);
  const bool res = real(this, cond, deadline);
  __tsan_mutex_post_lock(this, __tsan_mutex_read_lock, 0);
  return res;
}

// Held before and after, released (perhaps) in between: an unlock and a
// lock for TSan, with Abseil's call inside the unlock's ignored region.
void Mutex::Await(const Condition& cond) {
  static const auto real = Real<void (*)(Mutex*, const Condition&)>(
      "5Mutex5AwaitERKNS0_9ConditionE");
  const IgnoreLibraryAccess ignore(__builtin_return_address(0));
  const unsigned flags =
      (mu_.load(std::memory_order_relaxed) & kMuWriterBit) != 0
          ? 0
          : __tsan_mutex_read_lock;
  __tsan_mutex_pre_unlock(this, flags);
  real(this, cond);
  __tsan_mutex_post_unlock(this, flags);
  __tsan_mutex_pre_lock(this, flags);
  __tsan_mutex_post_lock(this, flags, 0);
}

bool Mutex::AwaitWithDeadline(const Condition& cond, absl::Time deadline) {
  static const auto real = Real<bool (*)(Mutex*, const Condition&, absl::Time)>(
      "5Mutex17AwaitWithDeadlineERKNS0_9ConditionENS0_4TimeE");
  const IgnoreLibraryAccess ignore(__builtin_return_address(0));
  const unsigned flags =
      (mu_.load(std::memory_order_relaxed) & kMuWriterBit) != 0
          ? 0
          : __tsan_mutex_read_lock;
  __tsan_mutex_pre_unlock(this, flags);
  const bool res = real(this, cond, deadline);
  __tsan_mutex_post_unlock(this, flags);
  __tsan_mutex_pre_lock(this, flags);
  __tsan_mutex_post_lock(this, flags, 0);
  return res;
}

Mutex::~Mutex() {
  static const auto real = Real<void (*)(Mutex*)>("5MutexD2Ev");
  real(this);
  __tsan_mutex_destroy(this, __tsan_mutex_not_static);
}

// CondVar is Mutex's friend: it may read the state word.
void CondVar::Wait(Mutex* mu) {
  static const auto real =
      Real<void (*)(CondVar*, Mutex*)>("7CondVar4WaitEPNS0_5MutexE");
  const IgnoreLibraryAccess ignore(__builtin_return_address(0));
  const unsigned flags =
      (mu->mu_.load(std::memory_order_relaxed) & kMuWriterBit) != 0
          ? 0
          : __tsan_mutex_read_lock;
  __tsan_mutex_pre_unlock(mu, flags);
  real(this, mu);
  __tsan_mutex_post_unlock(mu, flags);
  __tsan_mutex_pre_lock(mu, flags);
  __tsan_mutex_post_lock(mu, flags, 0);
}

bool CondVar::WaitWithDeadline(Mutex* mu, absl::Time deadline) {
  static const auto real = Real<bool (*)(CondVar*, Mutex*, absl::Time)>(
      "7CondVar16WaitWithDeadlineEPNS0_5MutexENS0_4TimeE");
  const IgnoreLibraryAccess ignore(__builtin_return_address(0));
  const unsigned flags =
      (mu->mu_.load(std::memory_order_relaxed) & kMuWriterBit) != 0
          ? 0
          : __tsan_mutex_read_lock;
  __tsan_mutex_pre_unlock(mu, flags);
  const bool res = real(this, mu, deadline);
  __tsan_mutex_post_unlock(mu, flags);
  __tsan_mutex_pre_lock(mu, flags);
  __tsan_mutex_post_lock(mu, flags, 0);
  return res;
}

// Notify's release and the waits' acquire are on the flag itself, which
// HasBeenNotified (inline, instrumented) loads with acquire order too.
void Notification::Notify() {
  static const auto real =
      Real<void (*)(Notification*)>("12Notification6NotifyEv");
  __tsan_release(&notified_yet_);
  real(this);
}

void Notification::WaitForNotification() const {
  static const auto real = Real<void (*)(const Notification*)>(
      "12Notification19WaitForNotificationEv", true);
  real(this);
  __tsan_acquire(const_cast<std::atomic<bool>*>(&notified_yet_));
}

bool Notification::WaitForNotificationWithTimeout(
    absl::Duration timeout) const {
  static const auto real = Real<bool (*)(const Notification*, absl::Duration)>(
      "12Notification30WaitForNotificationWithTimeoutENS0_8DurationE", true);
  const bool notified = real(this, timeout);
  if (notified) __tsan_acquire(const_cast<std::atomic<bool>*>(&notified_yet_));
  return notified;
}

bool Notification::WaitForNotificationWithDeadline(absl::Time deadline) const {
  static const auto real = Real<bool (*)(const Notification*, absl::Time)>(
      "12Notification31WaitForNotificationWithDeadlineENS0_4TimeE", true);
  const bool notified = real(this, deadline);
  if (notified) __tsan_acquire(const_cast<std::atomic<bool>*>(&notified_yet_));
  return notified;
}

ABSL_NAMESPACE_END
}  // namespace absl
