// A value that goes up and down, e.g. bytes in use or open sessions.
//
// Lock-free like Counter (std::atomic<double>).
//
//   auto& family = BuildGauge().Name("tidepool_sessions")
//                      .Help("Open sessions.").Register(registry);
//   Gauge& open = family.Add({{"policy", "auto"}});
//   open.Increment();
//   open.Decrement();
#pragma once

#include <atomic>

#include "daemon/metrics/collectable.h"

namespace tidepool::metrics {

class Gauge {
 public:
  static constexpr MetricType kType = MetricType::kGauge;

  Gauge() = default;
  Gauge(const Gauge&) = delete;
  Gauge& operator=(const Gauge&) = delete;

  void Set(double value) { value_.store(value, std::memory_order_relaxed); }
  void Increment(double amount = 1.0) {
    value_.fetch_add(amount, std::memory_order_relaxed);
  }
  void Decrement(double amount = 1.0) {
    value_.fetch_sub(amount, std::memory_order_relaxed);
  }

  // Raises the gauge to `value` if that is larger (a high-water mark);
  // never lowers it. Not in prometheus-cpp; peaks are common enough here.
  void SetToMax(double value) {
    double current = value_.load(std::memory_order_relaxed);
    while (current < value && !value_.compare_exchange_weak(
                                  current, value, std::memory_order_relaxed)) {
    }
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
