#include "daemon/server/hot_path_poller.h"

#include <sched.h>

#include <algorithm>
#include <system_error>

#include "absl/strings/str_cat.h"
#include "common/futex.h"
#include "daemon/server/hot_path_server.h"
#include "proto/wire.h"

namespace tidepool {
namespace {

// A sleeping poller wakes this often even when nothing rang, so that a
// lost wake-up (a client that scribbled on its flags) costs a delay, never
// a hang.
constexpr int64_t kSleepTimeoutNs = 200'000'000;

size_t UsableCpus() {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) {
    return static_cast<size_t>(CPU_COUNT(&set));
  }
  return std::max(1u, std::thread::hardware_concurrency());
}

}  // namespace

class HotPathPollers::Poller {
 public:
  // `one_ring`: it is never given more than one ring.
  static absl::StatusOr<std::unique_ptr<Poller>> Start(bool one_ring) {
    std::unique_ptr<Poller> p(new Poller(one_ring));
    // Out of threads (a task limit) is the daemon's problem to report, not
    // to die of: the session is refused.
    try {
      p->thread_ = std::thread([raw = p.get()] { raw->Loop(); });
    } catch (const std::system_error& e) {
      return absl::ResourceExhaustedError(
          absl::StrCat("no thread for the sessions' hot paths: ", e.what()));
    }
    return p;
  }

  ~Poller() {
    stop_.store(true, std::memory_order_seq_cst);
    Wake();
    thread_.join();
  }

  void Add(HotPathServer* ring) {
    Change([&]()
               ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { rings_.push_back(ring); });
  }

  void Remove(HotPathServer* ring) {
    // A poller that sleeps on this ring's doorbell alone (no futex_waitv)
    // hears nothing else.
    ring->request_bell()->fetch_add(1, std::memory_order_seq_cst);
    FutexWakeAll(ring->request_bell());
    Change([&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      rings_.erase(std::find(rings_.begin(), rings_.end(), ring));
      // Its flag is left as the sleep set it: the client may ring for
      // nothing, once.
    });
  }

  size_t assigned = 0;  // rings given to it (HotPathPollers::mu_)

 private:
  explicit Poller(bool one_ring) : one_ring_(one_ring) {}

  // Runs `change` under mu_, which the poller thread lets go of at once:
  // it sees pending_ in its spin, before its next request and before it
  // sleeps, and waits for the changes to be done.
  template <typename F>
  void Change(F&& change) {
    pending_.fetch_add(1, std::memory_order_seq_cst);
    Wake();
    {
      absl::MutexLock lock(&mu_);
      change();
    }
    pending_.fetch_sub(1, std::memory_order_seq_cst);
  }

  void Wake() {
    wake_.fetch_add(1, std::memory_order_seq_cst);
    FutexWakeAll(&wake_);
  }

  bool Interrupted() const {
    return pending_.load(std::memory_order_seq_cst) != 0 ||
           stop_.load(std::memory_order_relaxed);
  }

  bool AnyReady() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    for (const HotPathServer* ring : rings_) {
      if (ring->Ready()) return true;
    }
    return false;
  }

  // How soon after `gave_up` a request came: the earliest post time the
  // ready rings' clients give, kept between `gave_up` and now (a client
  // can move only this poller's spin budget, within its bounds); now when
  // none is ready (woken for a change, or timed out).
  int64_t LatenessAfter(int64_t gave_up) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    const int64_t now = AdaptiveSpin::NowNs();
    int64_t first = now;
    for (const HotPathServer* ring : rings_) {
      if (ring->Ready()) first = std::min(first, ring->PostedNs());
    }
    return std::max<int64_t>(first, gave_up) - gave_up;
  }

  // Every ring's posted requests, each ring's in order and at most a
  // ring's worth at a time; false if there were none.
  bool ServeAll() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    bool served = false;
    for (HotPathServer* ring : rings_) {
      for (uint32_t n = 0; n < wire::kHotPathRing && ring->Ready(); ++n) {
        ring->ServeNext();
        served = true;
      }
    }
    return served;
  }

  // Tells every client to ring, and fills `waiters` with the words to
  // sleep on; 0 when there is something to do after all (the flags are
  // then cleared again).
  size_t PrepareSleep(FutexWaiter* waiters) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    // wake_ is read before pending_ and stop_: a change after this read
    // makes the sleep return at once.
    waiters[0] = {&wake_, wake_.load(std::memory_order_seq_cst)};
    size_t n = 1;
    for (HotPathServer* ring : rings_) {
      ring->SetSleeping(true);
      waiters[n++] = {ring->request_bell(),
                      ring->request_bell()->load(std::memory_order_seq_cst)};
    }
    // A client posts, bumps its bell, then reads the flag (seq_cst on both
    // sides): either the entry shows here or the client rings.
    if (!Interrupted() && !AnyReady()) return n;
    for (HotPathServer* ring : rings_) ring->SetSleeping(false);
    return 0;
  }

  void Loop() {
    FutexWaiter waiters[kFutexWaitAnyMax];
    bool slept = false;
    int64_t gave_up = 0;
    while (!stop_.load(std::memory_order_relaxed)) {
      while (pending_.load(std::memory_order_seq_cst) != 0) sched_yield();
      size_t count = 0;
      {
        absl::MutexLock lock(&mu_);
        if (slept) {
          for (HotPathServer* ring : rings_) ring->SetSleeping(false);
          spin_.Slept(LatenessAfter(gave_up));
          slept = false;
        }
        if (ServeAll()) continue;
        if (spin_.Spin([&]() ABSL_NO_THREAD_SAFETY_ANALYSIS {
              return Interrupted() || AnyReady();
            })) {
          continue;
        }
        gave_up = AdaptiveSpin::NowNs();
        count = PrepareSleep(waiters);
        if (count == 0) continue;
        slept = true;
      }
      if (one_ring_) {
        // Its ring's bell (nothing else needs to wake it but Remove, which
        // rings it), or its own word when it has none: all there is
        // without futex_waitv.
        FutexWait(waiters[count - 1].word, waiters[count - 1].expected,
                  kSleepTimeoutNs);
      } else {
        FutexWaitAny(waiters, count, kSleepTimeoutNs);
      }
    }
  }

  const bool one_ring_;
  absl::Mutex mu_;
  std::vector<HotPathServer*> rings_ ABSL_GUARDED_BY(mu_);
  std::atomic<uint32_t> pending_{0};  // Changes waiting for mu_
  std::atomic<bool> stop_{false};
  std::atomic<uint32_t> wake_{0};  // the poller's own futex word
  AdaptiveSpin spin_;              // the poller thread's alone
  std::thread thread_;
};

HotPathPollers::HotPathPollers(int max_threads, bool one_ring_each)
    : max_threads_(max_threads > 0 ? static_cast<size_t>(max_threads)
                                   : std::max<size_t>(1, UsableCpus())),
      // The poller's own word takes one of futex_waitv's places.
      rings_per_poller_(FutexWaitAnySupported() && !one_ring_each
                            ? kFutexWaitAnyMax - 1
                            : 1) {}

HotPathPollers::~HotPathPollers() = default;

absl::Status HotPathPollers::Add(HotPathServer* ring) {
  absl::MutexLock lock(&mu_);
  Poller* best = nullptr;
  for (const auto& p : pollers_) {
    if (p->assigned < rings_per_poller_ &&
        (best == nullptr || p->assigned < best->assigned)) {
      best = p.get();
    }
  }
  if (best == nullptr ||
      (best->assigned > 0 && pollers_.size() < max_threads_)) {
    absl::StatusOr<std::unique_ptr<Poller>> started =
        Poller::Start(rings_per_poller_ == 1);
    if (started.ok()) {
      best = started->get();
      pollers_.push_back(std::move(*started));
    } else if (best == nullptr) {
      return started.status();
    }
  }
  best->Add(ring);
  ++best->assigned;
  serving_[ring] = best;
  return absl::OkStatus();
}

void HotPathPollers::Remove(HotPathServer* ring) {
  absl::MutexLock lock(&mu_);
  auto it = serving_.find(ring);
  if (it == serving_.end()) return;
  it->second->Remove(ring);
  --it->second->assigned;
  serving_.erase(it);
}

size_t HotPathPollers::threads() const {
  absl::MutexLock lock(&mu_);
  return pollers_.size();
}

}  // namespace tidepool
