// Serialisation of collected metrics to the Prometheus text exposition
// format, version 0.0.4 (what GET /metrics returns).
//
//   std::string body = SerializeText(registry.Collect());
//   // # HELP tidepool_sessions Open sessions.
//   // # TYPE tidepool_sessions gauge
//   // tidepool_sessions{gpu="0",policy="auto"} 2
//
// Output is deterministic: families sorted by name, samples by label set,
// labels by name (with `le` last on histogram buckets). Families without
// samples are left out. Timestamps are never written: Prometheus stamps
// samples with the scrape time, which is what we want.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "daemon/metrics/collectable.h"

namespace tidepool::metrics {

// The Content-Type of SerializeText() output.
inline constexpr std::string_view kTextContentType =
    "text/plain; version=0.0.4; charset=utf-8";

std::string SerializeText(std::vector<MetricFamily> families);

// Appends `value` as the format writes sample values: shortest round-trip
// decimal, or +Inf, -Inf, NaN. Exposed for tests.
void AppendSampleValue(std::string* out, double value);

}  // namespace tidepool::metrics
