// A distribution of observations in cumulative buckets, e.g. transfer or
// RPC durations. Serialised as `_bucket{le=...}`, `_sum` and `_count`.
//
// Lock-free: one atomic counter per bucket and an atomic sum. A scrape that
// races an Observe() may see the sum and the counts one observation apart;
// Prometheus tolerates that and it keeps the hot path free of locks.
//
//   auto& family = BuildHistogram().Name("tidepool_rpc_duration_seconds")
//                      .Help("RPC latency.").Register(registry);
//   Histogram& h = family.Add({{"method", "Acquire"}},
//                             ExponentialBuckets(1e-5, 2.5, 10));
//   h.Observe(0.0003);
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <vector>

#include "daemon/metrics/collectable.h"

namespace tidepool::metrics {

class Histogram {
 public:
  static constexpr MetricType kType = MetricType::kHistogram;
  using BucketBoundaries = std::vector<double>;

  // Upper bounds of the finite buckets. They are sorted and de-duplicated,
  // NaN and infinite bounds are dropped (+Inf is always implicit).
  explicit Histogram(BucketBoundaries bounds);
  Histogram(const Histogram&) = delete;
  Histogram& operator=(const Histogram&) = delete;

  // Counts `value` in the first bucket whose bound is >= value. NaN is
  // ignored: it would poison the sum for the life of the process.
  void Observe(double value);

  const BucketBoundaries& bounds() const { return bounds_; }
  ClientMetric Collect() const;

 private:
  const BucketBoundaries bounds_;
  // Per-bucket (not cumulative) counts; the last slot is the +Inf bucket.
  const std::unique_ptr<std::atomic<uint64_t>[]> counts_;
  std::atomic<double> sum_{0.0};
};

// `count` bounds start, start*factor, start*factor^2, ...
Histogram::BucketBoundaries ExponentialBuckets(double start, double factor,
                                               int count);
// `count` bounds start, start+width, start+2*width, ...
Histogram::BucketBoundaries LinearBuckets(double start, double width,
                                          int count);

}  // namespace tidepool::metrics
