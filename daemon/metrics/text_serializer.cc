#include "daemon/metrics/text_serializer.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdint>

namespace tidepool::metrics {
namespace {

// HELP text escapes backslash and newline.
void AppendHelp(std::string* out, std::string_view help) {
  for (char c : help) {
    if (c == '\\') {
      out->append("\\\\");
    } else if (c == '\n') {
      out->append("\\n");
    } else {
      out->push_back(c);
    }
  }
}

// Label values also escape the double quote.
void AppendLabelValue(std::string* out, std::string_view value) {
  for (char c : value) {
    if (c == '\\') {
      out->append("\\\\");
    } else if (c == '"') {
      out->append("\\\"");
    } else if (c == '\n') {
      out->append("\\n");
    } else {
      out->push_back(c);
    }
  }
}

void AppendUint(std::string* out, uint64_t value) {
  char buffer[24];
  auto result = std::to_chars(buffer, buffer + sizeof(buffer), value);
  out->append(buffer, result.ptr);
}

// Writes `name{a="1",b="2"[,le="0.5"]} `: everything before the value.
void AppendSeries(std::string* out, std::string_view name,
                  std::string_view suffix, const Labels& labels,
                  const std::string* le) {
  out->append(name);
  out->append(suffix);
  if (!labels.empty() || le != nullptr) {
    out->push_back('{');
    bool first = true;
    for (const auto& [label, label_value] : labels) {
      if (!first) out->push_back(',');
      first = false;
      out->append(label);
      out->append("=\"");
      AppendLabelValue(out, label_value);
      out->push_back('"');
    }
    if (le != nullptr) {
      if (!first) out->push_back(',');
      out->append("le=\"");
      out->append(*le);
      out->push_back('"');
    }
    out->push_back('}');
  }
  out->push_back(' ');
}

}  // namespace

void AppendSampleValue(std::string* out, double value) {
  if (std::isnan(value)) {
    out->append("NaN");
  } else if (std::isinf(value)) {
    out->append(value > 0 ? "+Inf" : "-Inf");
  } else {
    char buffer[32];
    auto result = std::to_chars(buffer, buffer + sizeof(buffer), value);
    out->append(buffer, result.ptr);
  }
}

std::string SerializeText(std::vector<MetricFamily> families) {
  std::stable_sort(families.begin(), families.end(),
                   [](const MetricFamily& a, const MetricFamily& b) {
                     return a.name < b.name;
                   });
  std::string out;
  for (MetricFamily& family : families) {
    if (family.metrics.empty()) continue;
    std::stable_sort(family.metrics.begin(), family.metrics.end(),
                     [](const ClientMetric& a, const ClientMetric& b) {
                       return a.labels < b.labels;
                     });
    out.append("# HELP ");
    out.append(family.name);
    out.push_back(' ');
    AppendHelp(&out, family.help);
    out.append("\n# TYPE ");
    out.append(family.name);
    out.push_back(' ');
    out.append(MetricTypeName(family.type));
    out.push_back('\n');
    for (const ClientMetric& metric : family.metrics) {
      if (family.type != MetricType::kHistogram) {
        AppendSeries(&out, family.name, "", metric.labels, nullptr);
        AppendSampleValue(&out, metric.value);
        out.push_back('\n');
        continue;
      }
      // Counts are integers: print them exactly, even beyond 2^53.
      std::string le;
      for (const ClientMetric::Bucket& bucket : metric.buckets) {
        le.clear();
        AppendSampleValue(&le, bucket.upper_bound);
        AppendSeries(&out, family.name, "_bucket", metric.labels, &le);
        AppendUint(&out, bucket.cumulative_count);
        out.push_back('\n');
      }
      le = "+Inf";
      AppendSeries(&out, family.name, "_bucket", metric.labels, &le);
      AppendUint(&out, metric.sample_count);
      out.append("\n");
      AppendSeries(&out, family.name, "_sum", metric.labels, nullptr);
      AppendSampleValue(&out, metric.sample_sum);
      out.push_back('\n');
      AppendSeries(&out, family.name, "_count", metric.labels, nullptr);
      AppendUint(&out, metric.sample_count);
      out.push_back('\n');
    }
  }
  return out;
}

}  // namespace tidepool::metrics
