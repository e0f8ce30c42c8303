#include "daemon/metrics/callback_collector.h"

#include <utility>

#include "daemon/metrics/validation.h"

namespace tidepool::metrics {

CallbackCollector::CallbackCollector(std::string name, std::string help,
                                     MetricType type, Callback callback)
    : name_(std::move(name)),
      help_(std::move(help)),
      type_(type),
      callback_(std::move(callback)) {}

absl::Status CallbackCollector::Validate() const {
  if (absl::Status status = ValidateMetricName(name_); !status.ok()) {
    return status;
  }
  if (type_ == MetricType::kHistogram) {
    return absl::InvalidArgumentError(
        "a CallbackCollector cannot produce a histogram");
  }
  if (!callback_) return absl::InvalidArgumentError("no callback");
  return absl::OkStatus();
}

std::vector<MetricFamily> CallbackCollector::Collect() const {
  if (!Validate().ok()) return {};
  MetricFamily family{name_, help_, type_, {}};
  for (Sample& sample : callback_()) {
    // A bad label name would make the whole scrape unparseable; drop the
    // sample rather than lose every other metric.
    if (!ValidateLabels(sample.labels, type_).ok()) continue;
    ClientMetric metric;
    metric.labels = std::move(sample.labels);
    metric.value = sample.value;
    family.metrics.push_back(std::move(metric));
  }
  if (family.metrics.empty()) return {};
  return {std::move(family)};
}

}  // namespace tidepool::metrics
