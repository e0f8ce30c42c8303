// Name rules of the Prometheus data model, shared by Registry, Family and
// CallbackCollector, and the one place that turns a programmer error into
// an abort.
//
//   if (absl::Status s = ValidateMetricName("tidepool_x_total"); !s.ok()) ...
#pragma once

#include <string_view>

#include "absl/status/status.h"
#include "daemon/metrics/collectable.h"

namespace tidepool::metrics {

// [a-zA-Z_:][a-zA-Z0-9_:]*
absl::Status ValidateMetricName(std::string_view name);

// [a-zA-Z_][a-zA-Z0-9_]*, not starting with "__" (reserved by Prometheus),
// and not "le" on a histogram (the serialiser adds it).
absl::Status ValidateLabelName(std::string_view name, MetricType type);

// Every name in `labels`.
absl::Status ValidateLabels(const Labels& labels, MetricType type);

namespace internal {

// For the non-Try entry points (Register, Add): metric and label names in
// tidepool are compile-time constants, so a bad one is a bug that the unit
// tests hit, and failing loudly beats exposing a half-registered metric.
[[noreturn]] void DieBecause(const absl::Status& status);

}  // namespace internal
}  // namespace tidepool::metrics
