// Feeds tidepoold's Prometheus metrics: manager events (sessions,
// evictions), backend transfers and RPC latencies as they happen, and pool
// and chunk gauges from a manager snapshot at each scrape.
//
//   metrics::TidepoolMetrics metrics(version, backend);
//   MetricsBridge bridge(&metrics, &manager);  // registers itself
//   GrpcService service(&manager, fd_path, bridge.RpcObserver());
#pragma once

#include <vector>

#include "daemon/core/memory_manager.h"
#include "daemon/metrics/tidepool_metrics.h"
#include "daemon/server/grpc_service.h"

namespace tidepool {

class MetricsBridge : public ManagerObserver {
 public:
  // Sets itself as `manager`'s observer and every backend's copy observer;
  // both must outlive the bridge's use by them.
  MetricsBridge(metrics::TidepoolMetrics* metrics, MemoryManager* manager);

  void OnSessionOpened(size_t device, Policy policy) override;
  void OnSessionReclaimed(size_t device, Policy policy,
                          ReclaimReason reason) override;
  void OnEviction(size_t device, EvictionCause cause, bool clean) override;
  void OnPrefetch(size_t device, PrefetchOutcome outcome) override;
  void OnPlacedUpdate(size_t device, bool on_device) override;

  RpcObserver MakeRpcObserver();

 private:
  void Scrape();

  metrics::TidepoolMetrics* metrics_;
  MemoryManager* manager_;
  std::vector<metrics::DeviceMetrics*> devices_;
};

}  // namespace tidepool
