// Exposer: the HTTP endpoint Prometheus scrapes. Serves GET (and HEAD)
// /metrics in the text format 0.0.4 from one Collectable (normally the
// daemon's Registry), answers 404 elsewhere and 405 to other methods.
// Built on civetweb (Debian: libcivetweb-dev).
//
//   Registry registry;
//   Exposer exposer(registry, {.address = "127.0.0.1:9400"});
//   if (absl::Status s = exposer.Start(); !s.ok()) return s;
//   LOG(INFO) << "metrics on port " << exposer.port();
//   ...
//   exposer.Stop();  // also done by the destructor
//
// Port 0 binds an ephemeral port; port() returns the one chosen (tests).
#pragma once

#include <atomic>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "daemon/metrics/collectable.h"

struct mg_context;
struct mg_connection;

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
  // `collectable` must outlive the Exposer.
  explicit Exposer(const Collectable& collectable, ExposerOptions options = {});
  ~Exposer();
  Exposer(const Exposer&) = delete;
  Exposer& operator=(const Exposer&) = delete;

  // Binds and starts serving. INVALID_ARGUMENT for a malformed address,
  // UNAVAILABLE when the address cannot be bound (with the reason: port in
  // use, address not on this host, privileged port), FAILED_PRECONDITION
  // when already started.
  absl::Status Start();

  // Stops serving and waits for in-flight scrapes. Idempotent.
  void Stop();

  // The bound TCP port while started (the real one when asked for 0);
  // 0 when not started.
  int port() const { return port_.load(std::memory_order_acquire); }

  const std::string& address() const { return options_.address; }

 private:
  static int HandleRequest(mg_connection* connection, void* self);
  int Serve(mg_connection* connection) const;

  const Collectable& collectable_;
  const ExposerOptions options_;
  absl::Mutex mu_;  // serialises Start/Stop
  mg_context* context_ ABSL_GUARDED_BY(mu_) = nullptr;
  std::string wake_host_ ABSL_GUARDED_BY(mu_);
  std::atomic<int> port_{0};
};

}  // namespace tidepool::metrics
