#include "daemon/metrics/validation.h"

#include <cstdio>
#include <cstdlib>
#include <string>

#include "absl/strings/str_cat.h"

namespace tidepool::metrics {
namespace {

bool IsAlpha(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
}
bool IsDigit(char c) { return c >= '0' && c <= '9'; }

}  // namespace

const char* MetricTypeName(MetricType type) {
  switch (type) {
    case MetricType::kCounter:
      return "counter";
    case MetricType::kGauge:
      return "gauge";
    case MetricType::kHistogram:
      return "histogram";
    case MetricType::kUntyped:
      return "untyped";
  }
  return "untyped";
}

absl::Status ValidateMetricName(std::string_view name) {
  bool ok = !name.empty() && (IsAlpha(name[0]) || name[0] == ':');
  for (char c : name) ok = ok && (IsAlpha(c) || IsDigit(c) || c == ':');
  if (!ok) {
    return absl::InvalidArgumentError(
        absl::StrCat("invalid metric name \"", std::string(name),
                     "\": must match [a-zA-Z_:][a-zA-Z0-9_:]*"));
  }
  return absl::OkStatus();
}

absl::Status ValidateLabelName(std::string_view name, MetricType type) {
  bool ok = !name.empty() && IsAlpha(name[0]);
  for (char c : name) ok = ok && (IsAlpha(c) || IsDigit(c));
  if (!ok) {
    return absl::InvalidArgumentError(
        absl::StrCat("invalid label name \"", std::string(name),
                     "\": must match [a-zA-Z_][a-zA-Z0-9_]*"));
  }
  if (name.starts_with("__")) {
    return absl::InvalidArgumentError(
        absl::StrCat("label name \"", std::string(name),
                     "\" is reserved: names starting with __ are "
                     "internal to Prometheus"));
  }
  if (type == MetricType::kHistogram && name == "le") {
    return absl::InvalidArgumentError(
        "label name \"le\" is reserved on a histogram");
  }
  return absl::OkStatus();
}

absl::Status ValidateLabels(const Labels& labels, MetricType type) {
  for (const auto& [name, value] : labels) {
    if (absl::Status status = ValidateLabelName(name, type); !status.ok()) {
      return status;
    }
  }
  return absl::OkStatus();
}

namespace internal {

void DieBecause(const absl::Status& status) {
  std::fprintf(stderr, "tidepool metrics: %s\n", status.ToString().c_str());
  std::abort();
}

}  // namespace internal
}  // namespace tidepool::metrics
