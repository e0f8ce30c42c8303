// The threads that serve the sessions' hot-path rings (hot_path_server.h).
//
// A thread per session does not scale past the CPUs: with 16 trainers on a
// few cores, each request costs a futex sleep and a wake-up of its
// session's thread, and the daemon's CPU per request triples. Here a few
// poller threads (by default at most one per CPU) each serve a set of rings:
// a poller takes every ring's posted requests in turn (each ring's in
// order, at most a ring's worth before the next ring), spins over all of
// its rings for a while when it finds none (common/spin_wait.h), and
// sleeps on all their doorbells at once (futex_waitv) when the spin runs
// out. A busy poller serves request after request without sleeping.
//
// A new ring goes to the poller with the fewest; a new poller starts while
// there are fewer than the bound and every poller has a ring. On kernels
// without futex_waitv (before 5.16) a poller can sleep on one doorbell
// only, so each ring gets a poller of its own, as many as there are
// sessions.
//
// What one session posts is served on a thread that serves others too: a
// request is only ever bookkeeping (the manager starts copies and returns;
// the client waits for them), so one session delays another by at most its
// ring's worth of such requests.
//
//   HotPathPollers pollers(/*max_threads=*/0);
//   TP_RETURN_IF_ERROR(pollers.Add(ring));   // HotPathServer::Start does
//   pollers.Remove(ring);                    // ~HotPathServer does
#pragma once

#include <atomic>
#include <cstddef>
#include <memory>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "common/spin_wait.h"

namespace tidepool {

class HotPathServer;

class HotPathPollers {
 public:
  // `max_threads`: how many pollers at most (0: as many as the CPUs the
  // daemon may run on). Without futex_waitv the bound does not apply (see
  // above).
  //
  // `one_ring_each`: as without futex_waitv, whatever the kernel has
  // (tests run both ways).
  explicit HotPathPollers(int max_threads = 0, bool one_ring_each = false);
  // Every ring must have been removed.
  ~HotPathPollers();

  HotPathPollers(const HotPathPollers&) = delete;
  HotPathPollers& operator=(const HotPathPollers&) = delete;

  // Starts serving `ring`. ResourceExhausted when a poller was needed and
  // no thread could be started.
  absl::Status Add(HotPathServer* ring);
  // Stops serving `ring`; when it returns, no poller touches it any more.
  void Remove(HotPathServer* ring);

  // Poller threads running now.
  size_t threads() const;

 private:
  class Poller;

  const size_t max_threads_;
  const size_t rings_per_poller_;  // 1 without futex_waitv
  mutable absl::Mutex mu_;
  std::vector<std::unique_ptr<Poller>> pollers_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<HotPathServer*, Poller*> serving_ ABSL_GUARDED_BY(mu_);
};

}  // namespace tidepool
