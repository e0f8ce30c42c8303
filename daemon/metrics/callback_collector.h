// CallbackCollector: a metric family whose samples are read from daemon
// state at scrape time instead of being pushed on every change, as a
// prometheus::Collectable that an Exposer serves beside the registry. Use
// it for values that are cheap to read when asked and awkward to keep
// current, e.g. the number of chunks per state held by the registry.
//
//   auto chunks = std::make_shared<CallbackCollector>(
//       "tidepool_chunks", "Chunks by state.", prometheus::MetricType::Gauge,
//       [&state] {
//         std::vector<CallbackCollector::Sample> samples;
//         for (auto [name, n] : state.CountByState())
//           samples.push_back({{{"state", name}}, double(n)});
//         return samples;
//       });
//   exposer.AddCollectable(chunks);  // held weakly: keep `chunks` alive
//
// The callback runs on an exposer thread, so it must be thread-safe, and it
// should be quick: a scrape waits for it.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "prometheus/collectable.h"
#include "prometheus/labels.h"
#include "prometheus/metric_family.h"
#include "prometheus/metric_type.h"

namespace tidepool::metrics {

class CallbackCollector final : public prometheus::Collectable {
 public:
  struct Sample {
    prometheus::Labels labels;
    double value = 0;
  };
  using Callback = std::function<std::vector<Sample>()>;

  // `type` is Counter, Gauge or Untyped (histograms and summaries need
  // buckets or quantiles; use a registry family). An invalid name or type
  // makes the collector produce nothing and is reported by Validate().
  CallbackCollector(std::string name, std::string help,
                    prometheus::MetricType type, Callback callback);

  // OK when the name and type are usable; label names are checked (and bad
  // samples dropped) on every Collect().
  absl::Status Validate() const;

  std::vector<prometheus::MetricFamily> Collect() const override;

 private:
  const std::string name_;
  const std::string help_;
  const prometheus::MetricType type_;
  const Callback callback_;
};

}  // namespace tidepool::metrics
