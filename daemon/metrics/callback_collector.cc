#include "daemon/metrics/callback_collector.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "prometheus/check_names.h"
#include "prometheus/client_metric.h"

namespace tidepool::metrics {
namespace {

bool LabelsValid(const prometheus::Labels& labels) {
  for (const auto& [name, value] : labels) {
    if (!prometheus::CheckLabelName(name)) return false;
  }
  return true;
}

}  // namespace

CallbackCollector::CallbackCollector(std::string name, std::string help,
                                     prometheus::MetricType type,
                                     Callback callback)
    : name_(std::move(name)),
      help_(std::move(help)),
      type_(type),
      callback_(std::move(callback)) {}

absl::Status CallbackCollector::Validate() const {
  if (!prometheus::CheckMetricName(name_)) {
    return absl::InvalidArgumentError(
        absl::StrCat("invalid metric name \"", name_,
                     "\": must match [a-zA-Z_:][a-zA-Z0-9_:]*"));
  }
  if (type_ != prometheus::MetricType::Counter &&
      type_ != prometheus::MetricType::Gauge &&
      type_ != prometheus::MetricType::Untyped) {
    return absl::InvalidArgumentError(
        "a CallbackCollector produces counters, gauges or untyped samples");
  }
  if (!callback_) return absl::InvalidArgumentError("no callback");
  return absl::OkStatus();
}

std::vector<prometheus::MetricFamily> CallbackCollector::Collect() const {
  if (!Validate().ok()) return {};
  prometheus::MetricFamily family{name_, help_, type_, {}};
  for (Sample& sample : callback_()) {
    // A bad label name would make the whole scrape unparseable; drop the
    // sample rather than lose every other metric.
    if (!LabelsValid(sample.labels)) continue;
    prometheus::ClientMetric metric;
    for (auto& [name, value] : sample.labels) {
      metric.label.push_back({name, std::move(value)});
    }
    switch (type_) {
      case prometheus::MetricType::Counter:
        metric.counter.value = sample.value;
        break;
      case prometheus::MetricType::Gauge:
        metric.gauge.value = sample.value;
        break;
      default:
        metric.untyped.value = sample.value;
    }
    family.metric.push_back(std::move(metric));
  }
  if (family.metric.empty()) return {};
  return {std::move(family)};
}

}  // namespace tidepool::metrics
