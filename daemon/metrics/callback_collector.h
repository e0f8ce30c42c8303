// CallbackCollector: a metric family whose samples are read from daemon
// state at scrape time instead of being pushed on every change. Use it for
// values that are cheap to read when asked and awkward to keep current,
// e.g. the number of chunks per state held by the registry.
//
//   auto chunks = std::make_shared<CallbackCollector>(
//       "tidepool_chunks", "Chunks by state.", MetricType::kGauge,
//       [&state] {
//         std::vector<CallbackCollector::Sample> samples;
//         for (auto [name, n] : state.CountByState())
//           samples.push_back({{{"state", name}}, double(n)});
//         return samples;
//       });
//   registry.AddCollectable(chunks);  // keep `chunks` alive while scraped
//
// The callback runs on an exposer thread, so it must be thread-safe, and it
// should be quick: a scrape waits for it.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "daemon/metrics/collectable.h"

namespace tidepool::metrics {

class CallbackCollector final : public Collectable {
 public:
  struct Sample {
    Labels labels;
    double value = 0;
  };
  using Callback = std::function<std::vector<Sample>()>;

  // `type` is kCounter, kGauge or kUntyped (histograms need buckets; use a
  // Family<Histogram>). An invalid name, label name or type makes the
  // collector produce nothing and is reported by Validate().
  CallbackCollector(std::string name, std::string help, MetricType type,
                    Callback callback);

  // OK when the name and type are usable; label names are checked (and bad
  // samples dropped) on every Collect().
  absl::Status Validate() const;

  std::vector<MetricFamily> Collect() const override;

 private:
  const std::string name_;
  const std::string help_;
  const MetricType type_;
  const Callback callback_;
};

}  // namespace tidepool::metrics
