#include "daemon/metrics/histogram.h"

#include <algorithm>
#include <cmath>

namespace tidepool::metrics {
namespace {

Histogram::BucketBoundaries Normalise(Histogram::BucketBoundaries bounds) {
  std::erase_if(bounds, [](double b) { return !std::isfinite(b); });
  std::sort(bounds.begin(), bounds.end());
  bounds.erase(std::unique(bounds.begin(), bounds.end()), bounds.end());
  return bounds;
}

}  // namespace

Histogram::Histogram(BucketBoundaries bounds)
    : bounds_(Normalise(std::move(bounds))),
      counts_(std::make_unique<std::atomic<uint64_t>[]>(bounds_.size() + 1)) {}

void Histogram::Observe(double value) {
  if (std::isnan(value)) return;
  const size_t index =
      std::lower_bound(bounds_.begin(), bounds_.end(), value) - bounds_.begin();
  counts_[index].fetch_add(1, std::memory_order_relaxed);
  sum_.fetch_add(value, std::memory_order_relaxed);
}

ClientMetric Histogram::Collect() const {
  ClientMetric metric;
  metric.buckets.reserve(bounds_.size());
  uint64_t cumulative = 0;
  for (size_t i = 0; i < bounds_.size(); ++i) {
    cumulative += counts_[i].load(std::memory_order_relaxed);
    metric.buckets.push_back({bounds_[i], cumulative});
  }
  cumulative += counts_[bounds_.size()].load(std::memory_order_relaxed);
  metric.sample_count = cumulative;
  metric.sample_sum = sum_.load(std::memory_order_relaxed);
  return metric;
}

Histogram::BucketBoundaries ExponentialBuckets(double start, double factor,
                                               int count) {
  Histogram::BucketBoundaries bounds;
  double bound = start;
  for (int i = 0; i < count; ++i) {
    bounds.push_back(bound);
    bound *= factor;
  }
  return bounds;
}

Histogram::BucketBoundaries LinearBuckets(double start, double width,
                                          int count) {
  Histogram::BucketBoundaries bounds;
  for (int i = 0; i < count; ++i) bounds.push_back(start + i * width);
  return bounds;
}

}  // namespace tidepool::metrics
