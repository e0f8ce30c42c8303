// A monotonically increasing value, e.g. bytes moved or evictions.
//
// Lock-free: one std::atomic<double> updated with fetch_add (a CAS loop on
// x86-64), so it is safe to bump from the transfer and ring hot paths.
//
//   auto& family = BuildCounter().Name("tidepool_evictions_total")
//                      .Help("Chunks evicted.").Register(registry);
//   Counter& evictions = family.Add({{"reason", "capacity"}});
//   evictions.Increment();
#pragma once

#include <atomic>

#include "daemon/metrics/collectable.h"

namespace tidepool::metrics {

class Counter {
 public:
  static constexpr MetricType kType = MetricType::kCounter;

  Counter() = default;
  Counter(const Counter&) = delete;
  Counter& operator=(const Counter&) = delete;

  // Adds `amount`. Negative and NaN amounts are ignored: a counter that went
  // down would read as a reset to Prometheus' rate().
  void Increment(double amount = 1.0) {
    if (!(amount >= 0.0)) return;
    value_.fetch_add(amount, std::memory_order_relaxed);
  }

  double Value() const { return value_.load(std::memory_order_relaxed); }

  ClientMetric Collect() const {
    ClientMetric metric;
    metric.value = Value();
    return metric;
  }

 private:
  static_assert(std::atomic<double>::is_always_lock_free);
  std::atomic<double> value_{0.0};
};

}  // namespace tidepool::metrics
