// Snapshot types that every metric source produces at scrape time, and the
// `Collectable` interface that the registry and the HTTP exposer consume.
//
// tidepool carries its own small metrics library because prometheus-cpp is
// not packaged for the distributions we build on. Its shape follows
// prometheus-cpp (Registry, Family<T>, Counter, Gauge, Histogram,
// Collectable, Exposer) so that moving to prometheus-cpp later is a
// mechanical change.
//
// Example: a source that reports one gauge computed at scrape time.
//
//   class QueueDepth : public tidepool::metrics::Collectable {
//    public:
//     std::vector<MetricFamily> Collect() const override {
//       MetricFamily family{"tidepool_queue_depth", "Queued copies.",
//                           MetricType::kGauge, {}};
//       family.metrics.push_back({.labels = {}, .value = Depth()});
//       return {family};
//     }
//   };
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace tidepool::metrics {

// Label name -> label value. An ordered map so that a label set has one
// canonical form: it is the cache key in a Family and it gives the
// serialiser a deterministic label order.
using Labels = std::map<std::string, std::string>;

enum class MetricType {
  kCounter,
  kGauge,
  kHistogram,
  kUntyped,
};

// "counter", "gauge", "histogram" or "untyped": the word used on # TYPE.
const char* MetricTypeName(MetricType type);

// One labelled sample (or, for a histogram, one labelled bucket set).
struct ClientMetric {
  struct Bucket {
    double upper_bound = 0;  // the `le` label; +Inf is implicit
    uint64_t cumulative_count = 0;
  };

  Labels labels;
  double value = 0;  // counter, gauge, untyped

  // Histogram only. `buckets` excludes +Inf, whose count is sample_count.
  std::vector<Bucket> buckets;
  uint64_t sample_count = 0;
  double sample_sum = 0;
};

// Everything one metric name contributes to a scrape.
struct MetricFamily {
  std::string name;
  std::string help;
  MetricType type = MetricType::kUntyped;
  std::vector<ClientMetric> metrics;
};

// Anything that can produce samples when scraped: a Family, a Registry, or
// a collector that reads daemon state at scrape time.
class Collectable {
 public:
  virtual ~Collectable() = default;

  // Must be thread-safe: scrapes run on the exposer's worker threads while
  // the daemon updates metrics.
  virtual std::vector<MetricFamily> Collect() const = 0;
};

}  // namespace tidepool::metrics
