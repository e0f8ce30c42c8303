// Exposer: the HTTP endpoint Prometheus scrapes, prometheus-cpp's Exposer
// (civetweb underneath; Debian: prometheus-cpp-dev) with what tidepoold
// adds around it: the address is checked before anything binds, failures
// are absl::Status values that say why (port in use, address not on this
// host, privileged port), Stop() and Start() again, and only the exact
// path /metrics answers (GET, and HEAD for probes): 404 elsewhere, 405 for
// other methods.
//
//   TidepoolMetrics metrics(version, backend);
//   Exposer exposer({.address = "127.0.0.1:9400"});
//   exposer.AddCollectable(metrics.collectable());
//   if (absl::Status s = exposer.Start(); !s.ok()) return s;
//   LOG(INFO) << "metrics on port " << exposer.port();
//   ...
//   exposer.Stop();  // also done by the destructor
//
// Port 0 binds an ephemeral port; port() returns the one chosen (tests).
#pragma once

#include <atomic>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "prometheus/collectable.h"

namespace prometheus {
class Exposer;
}

namespace tidepool::metrics {

struct ExposerOptions {
  // "HOST:PORT". HOST is an IPv4 address, "localhost" (127.0.0.1), or
  // "0.0.0.0" / empty for every interface. The Debian civetweb is built
  // without IPv6, so "[::1]:9400" is refused with UNIMPLEMENTED.
  std::string address = "127.0.0.1:9400";
  // civetweb worker threads. Scrapes are rare (every few seconds) and
  // keep-alive is off, so two threads serve Prometheus plus an operator's
  // curl without tying up more of the daemon.
  int num_threads = 2;
};

class Exposer {
 public:
  explicit Exposer(ExposerOptions options = {});
  ~Exposer();
  Exposer(const Exposer&) = delete;
  Exposer& operator=(const Exposer&) = delete;

  // Adds a source of samples to /metrics, before or after Start(). Held
  // weakly: once its owner drops it, scrapes skip it. Scrapes concatenate
  // the sources in the order they were added, so metric names must not
  // repeat across them.
  void AddCollectable(std::weak_ptr<prometheus::Collectable> collectable);

  // Binds and starts serving. INVALID_ARGUMENT for a malformed address,
  // UNAVAILABLE when the address cannot be bound (with the reason),
  // FAILED_PRECONDITION when already started.
  absl::Status Start();

  // Stops serving and waits for in-flight scrapes. Idempotent.
  void Stop();

  // The bound TCP port while started (the real one when asked for 0);
  // 0 when not started.
  int port() const { return port_.load(std::memory_order_acquire); }

  const std::string& address() const { return options_.address; }

 private:
  const ExposerOptions options_;
  absl::Mutex mu_;  // serialises Start, Stop and AddCollectable
  std::vector<std::weak_ptr<prometheus::Collectable>> collectables_
      ABSL_GUARDED_BY(mu_);
  std::unique_ptr<prometheus::Exposer> exposer_ ABSL_GUARDED_BY(mu_);
  std::string wake_host_ ABSL_GUARDED_BY(mu_);
  std::atomic<int> port_{0};
};

}  // namespace tidepool::metrics
