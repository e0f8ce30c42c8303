// TidepoolMetrics: the exposed metric set (golden), its behaviour, naming
// conventions, and — most importantly — that every query in the Grafana
// dashboard and the Prometheus rules names metrics and labels this class
// really produces, so a rename cannot silently empty a panel. The
// dashboard is read with nlohmann-json, the rules with yaml-cpp.
#include "daemon/metrics/tidepool_metrics.h"

#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "prometheus/text_serializer.h"
#include "tests/daemon/metrics/golden.h"
#include "yaml-cpp/yaml.h"

namespace tidepool::metrics {
namespace {

using testing::ExpectMatchesGolden;
using ::testing::HasSubstr;
using ::testing::Not;
using testing::ReadFileOrEmpty;
using Json = nlohmann::json;

constexpr std::string_view kUuid = "GPU-00000000-1111-2222-3333-444444444444";

std::string SourcePath(std::string_view relative) {
  return std::string(TIDEPOOL_SOURCE_DIR) + "/" + std::string(relative);
}

prometheus::Labels LabelsOf(const prometheus::ClientMetric& metric) {
  prometheus::Labels labels;
  for (const auto& label : metric.label) labels[label.name] = label.value;
  return labels;
}

// The text prometheus-cpp writes, families sorted by name and samples by
// labels: prometheus-cpp keeps label sets in a hash map, so a scrape's order
// is not fixed, and a golden needs one.
std::string CanonicalText(std::vector<prometheus::MetricFamily> families) {
  std::sort(families.begin(), families.end(),
            [](const auto& a, const auto& b) { return a.name < b.name; });
  for (prometheus::MetricFamily& family : families) {
    std::sort(
        family.metric.begin(), family.metric.end(),
        [](const auto& a, const auto& b) { return LabelsOf(a) < LabelsOf(b); });
  }
  return prometheus::TextSerializer().Serialize(families);
}

// --- What a scrape exposes -------------------------------------------------

struct Exposition {
  std::map<std::string, std::string> family_types;  // as on # TYPE
  // Sample name (with _bucket/_sum/_count) -> label names seen on it.
  std::map<std::string, std::set<std::string>> sample_labels;
};

std::string TypeName(prometheus::MetricType type) {
  switch (type) {
    case prometheus::MetricType::Counter:
      return "counter";
    case prometheus::MetricType::Gauge:
      return "gauge";
    case prometheus::MetricType::Histogram:
      return "histogram";
    case prometheus::MetricType::Summary:
      return "summary";
    case prometheus::MetricType::Untyped:
      return "untyped";
  }
  return "untyped";
}

// The sample names and labels of the text format, from collected families.
Exposition Expose(const std::vector<prometheus::MetricFamily>& families) {
  Exposition out;
  for (const prometheus::MetricFamily& family : families) {
    out.family_types[family.name] = TypeName(family.type);
    for (const prometheus::ClientMetric& metric : family.metric) {
      std::set<std::string> labels;
      for (const auto& label : metric.label) labels.insert(label.name);
      const auto add = [&](const std::string& suffix,
                           std::set<std::string> names) {
        out.sample_labels[family.name + suffix].merge(names);
      };
      switch (family.type) {
        case prometheus::MetricType::Histogram: {
          std::set<std::string> with_le = labels;
          with_le.insert("le");
          add("_bucket", with_le);
          add("_sum", labels);
          add("_count", labels);
          break;
        }
        case prometheus::MetricType::Summary: {
          std::set<std::string> with_quantile = labels;
          with_quantile.insert("quantile");
          add("", with_quantile);
          add("_sum", labels);
          add("_count", labels);
          break;
        }
        default:
          add("", labels);
      }
    }
  }
  return out;
}

class TidepoolMetricsTest : public ::testing::Test {
 protected:
  TidepoolMetricsTest() : metrics_("0.1.0-test", "sim") {}

  Exposition Scrape() { return Expose(metrics_.Collect()); }

  // The sample of family `name` with exactly `labels`, from a new scrape.
  std::optional<prometheus::ClientMetric> Find(
      const std::string& name, const prometheus::Labels& labels) {
    for (prometheus::MetricFamily& family : metrics_.Collect()) {
      if (family.name != name) continue;
      for (prometheus::ClientMetric& metric : family.metric) {
        if (LabelsOf(metric) == labels) return std::move(metric);
      }
    }
    return std::nullopt;
  }

  // A counter's or gauge's value; nullopt when there is no such sample.
  std::optional<double> Value(const std::string& name,
                              const prometheus::Labels& labels = {}) {
    std::optional<prometheus::ClientMetric> metric = Find(name, labels);
    if (!metric) return std::nullopt;
    return metric->counter.value + metric->gauge.value;  // one of them is 0
  }

  std::optional<prometheus::ClientMetric::Histogram> HistogramOf(
      const std::string& name, const prometheus::Labels& labels) {
    std::optional<prometheus::ClientMetric> metric = Find(name, labels);
    if (!metric) return std::nullopt;
    return metric->histogram;
  }

  TidepoolMetrics metrics_;
};

// --- The metric set --------------------------------------------------------

TEST_F(TidepoolMetricsTest, GoldenAfterOneDeviceAndSomeEvents) {
  DeviceMetrics& gpu = metrics_.Device("sim0", kUuid);
  metrics_.SetHostPool({.capacity_bytes = 17179869184,
                        .used_bytes = 1073741824,
                        .peak_bytes = 2147483648});
  metrics_.SetDevicePool(
      gpu, {.capacity_bytes = 8589934592, .used_bytes = 4294967296});
  metrics_.SetChunkBytes(gpu, ChunkLocation::kDevice, ChunkState::kHold,
                         201326592);
  metrics_.AddChunkBytes(gpu, ChunkLocation::kDevice, ChunkState::kCompute,
                         67108864);
  metrics_.AddChunkBytes(gpu, ChunkLocation::kHost, ChunkState::kFree,
                         134217728);
  metrics_.OnBytesMoved(gpu, Direction::kHostToDevice, 67108864, 0.0012);
  metrics_.OnBytesMoved(gpu, Direction::kDeviceToHost, 67108864, 0.0013);
  metrics_.OnEviction(gpu, EvictionReason::kCapacity, /*clean=*/true);
  metrics_.OnEviction(gpu, EvictionReason::kCapacity, /*clean=*/false);
  metrics_.OnPrefetch(gpu, PrefetchOutcome::kHit);
  metrics_.OnOptimizerUpdate(gpu, ChunkLocation::kDevice);
  metrics_.ObserveRpc("OpenSession", 0.0004);
  metrics_.ObserveAcquireWait(gpu, 0.000003);
  metrics_.AddStall(gpu, 0.25);
  metrics_.SessionOpened(gpu, Policy::kAuto);
  metrics_.SessionReclaimed(ReclaimReason::kDisconnected);
  ExpectMatchesGolden(CanonicalText(metrics_.Collect()),
                      "tidepool_metrics.prom");
}

TEST_F(TidepoolMetricsTest, SameDeviceSameMetrics) {
  DeviceMetrics& a = metrics_.Device("0", "GPU-a");
  EXPECT_EQ(&metrics_.Device("0", "GPU-a"), &a);
  DeviceMetrics& b = metrics_.Device("1", "GPU-b");
  EXPECT_NE(&a, &b);
  EXPECT_NE(a.pool_used_bytes, b.pool_used_bytes);
  EXPECT_EQ(a.gpu, "0");
  EXPECT_EQ(a.uuid, "GPU-a");
}

TEST_F(TidepoolMetricsTest, TransfersCountBytesAndDurations) {
  DeviceMetrics& gpu = metrics_.Device("0", "GPU-a");
  metrics_.OnBytesMoved(gpu, Direction::kHostToDevice, 1 << 20, 0.00002);
  metrics_.OnBytesMoved(gpu, Direction::kHostToDevice, 1 << 20, 0.5);
  const prometheus::Labels h2d = {
      {"UUID", "GPU-a"}, {"direction", "h2d"}, {"gpu", "0"}};
  EXPECT_EQ(Value("tidepool_bytes_moved_total", h2d), 2097152);
  EXPECT_EQ(Value("tidepool_bytes_moved_total",
                  {{"UUID", "GPU-a"}, {"direction", "d2h"}, {"gpu", "0"}}),
            0);
  auto durations = HistogramOf("tidepool_transfer_duration_seconds", h2d);
  ASSERT_TRUE(durations.has_value());
  EXPECT_EQ(durations->sample_count, 2u);
  EXPECT_DOUBLE_EQ(durations->sample_sum, 0.50002);
  // Cumulative buckets, the bound inclusive: 20 us is in le=2.5e-05 and
  // every bucket above; 0.5 s first in le=0.5.
  std::map<double, uint64_t> buckets;
  for (const auto& bucket : durations->bucket) {
    buckets[bucket.upper_bound] = bucket.cumulative_count;
  }
  EXPECT_EQ(buckets[1e-5], 0u);
  EXPECT_EQ(buckets[2.5e-5], 1u);
  EXPECT_EQ(buckets[0.25], 1u);
  EXPECT_EQ(buckets[0.5], 2u);
  EXPECT_EQ(buckets[std::numeric_limits<double>::infinity()], 2u);
}

TEST_F(TidepoolMetricsTest, PeakNeverDecreasesAndFollowsUsed) {
  DeviceMetrics& gpu = metrics_.Device("0", "GPU-a");
  const std::string peak = "tidepool_device_pool_peak_bytes";
  const prometheus::Labels labels = {{"UUID", "GPU-a"}, {"gpu", "0"}};
  metrics_.SetDevicePool(gpu, {.capacity_bytes = 100, .used_bytes = 80});
  EXPECT_EQ(Value(peak, labels), 80);  // no peak reported: used is the peak
  metrics_.SetDevicePool(gpu, {.capacity_bytes = 100, .used_bytes = 10});
  EXPECT_EQ(Value(peak, labels), 80);
  metrics_.SetDevicePool(
      gpu, {.capacity_bytes = 100, .used_bytes = 10, .peak_bytes = 95});
  EXPECT_EQ(Value(peak, labels), 95);
  metrics_.SetHostPool({.capacity_bytes = 10, .used_bytes = 7});
  metrics_.SetHostPool({.capacity_bytes = 10, .used_bytes = 3});
  EXPECT_EQ(Value("tidepool_host_pool_peak_bytes"), 7);
  EXPECT_EQ(Value("tidepool_host_pool_used_bytes"), 3);
}

TEST_F(TidepoolMetricsTest, SessionsByPolicyAndReclaims) {
  DeviceMetrics& gpu = metrics_.Device("0", "GPU-a");
  metrics_.SessionOpened(gpu, Policy::kAuto);
  metrics_.SessionOpened(gpu, Policy::kAuto);
  metrics_.SessionOpened(gpu, Policy::kCpu);
  metrics_.SessionClosed(gpu, Policy::kAuto);
  const auto sessions = [this](const char* policy) {
    return Value("tidepool_sessions",
                 {{"UUID", "GPU-a"}, {"gpu", "0"}, {"policy", policy}});
  };
  EXPECT_EQ(sessions("auto"), 1);
  EXPECT_EQ(sessions("cpu"), 1);
  EXPECT_EQ(sessions("static"), 0);
  metrics_.SessionReclaimed(ReclaimReason::kAttachTimeout);
  EXPECT_EQ(Value("tidepool_sessions_reclaimed_total",
                  {{"reason", "attach_timeout"}}),
            1);
  EXPECT_EQ(Value("tidepool_sessions_reclaimed_total", {{"reason", "closed"}}),
            0);
}

TEST_F(TidepoolMetricsTest, RpcMethodsAreBounded) {
  metrics_.ObserveRpc("Acquire", 0.001);
  metrics_.ObserveRpc("/tidepool.v1.Tidepool/Acquire", 0.001);
  metrics_.ObserveRpc("SomethingNew", 0.001);
  metrics_.ObserveRpc("/x.Y/AnotherNew", 0.001);
  EXPECT_EQ(
      HistogramOf("tidepool_rpc_duration_seconds", {{"method", "Acquire"}})
          ->sample_count,
      2u);
  EXPECT_EQ(HistogramOf("tidepool_rpc_duration_seconds", {{"method", "other"}})
                ->sample_count,
            2u);
  const std::string text =
      prometheus::TextSerializer().Serialize(metrics_.Collect());
  EXPECT_THAT(text, Not(HasSubstr("SomethingNew")));
  EXPECT_THAT(text, Not(HasSubstr("AnotherNew")));
}

// Every RPC of the service has its own latency series: a new RPC must be
// added to kRpcMethods, or it would hide under "other".
TEST_F(TidepoolMetricsTest, RpcMethodsCoverTheService) {
  const std::string proto = ReadFileOrEmpty(SourcePath("proto/tidepool.proto"));
  ASSERT_FALSE(proto.empty());
  std::set<std::string> in_proto;
  for (size_t at = proto.find("rpc "); at != std::string::npos;
       at = proto.find("rpc ", at + 4)) {
    if (at > 0 && !std::isspace(static_cast<unsigned char>(proto[at - 1]))) {
      continue;
    }
    const size_t end = proto.find('(', at);
    in_proto.insert(proto.substr(at + 4, end - at - 4));
  }
  std::set<std::string> listed(kRpcMethods.begin(), kRpcMethods.end() - 1);
  EXPECT_EQ(in_proto, listed);
}

TEST_F(TidepoolMetricsTest, EvictionsPrefetchesStallsAndChunks) {
  DeviceMetrics& gpu = metrics_.Device("0", "GPU-a");
  metrics_.OnEviction(gpu, EvictionReason::kQuota, /*clean=*/true);
  metrics_.OnEviction(gpu, EvictionReason::kQuota, /*clean=*/true);
  metrics_.OnPrefetch(gpu, PrefetchOutcome::kWasted);
  metrics_.AddStall(gpu, 0.5);
  metrics_.AddStall(gpu, 0.25);
  metrics_.SetChunkBytes(gpu, ChunkLocation::kHost, ChunkState::kHold, 100);
  metrics_.AddChunkBytes(gpu, ChunkLocation::kHost, ChunkState::kHold, -40);
  EXPECT_EQ(Value("tidepool_evictions_total", {{"UUID", "GPU-a"},
                                               {"clean", "true"},
                                               {"gpu", "0"},
                                               {"reason", "quota"}}),
            2);
  EXPECT_EQ(Value("tidepool_prefetches_total",
                  {{"UUID", "GPU-a"}, {"gpu", "0"}, {"outcome", "wasted"}}),
            1);
  EXPECT_EQ(
      Value("tidepool_stall_seconds_total", {{"UUID", "GPU-a"}, {"gpu", "0"}}),
      0.75);
  EXPECT_EQ(Value("tidepool_chunk_bytes", {{"UUID", "GPU-a"},
                                           {"gpu", "0"},
                                           {"location", "host"},
                                           {"state", "hold"}}),
            60);
}

TEST_F(TidepoolMetricsTest, OptimizerUpdatesByLocation) {
  DeviceMetrics& gpu = metrics_.Device("0", "GPU-a");
  const auto updates = [this](const char* location) {
    return Value("tidepool_optimizer_updates_total",
                 {{"UUID", "GPU-a"}, {"gpu", "0"}, {"location", location}});
  };
  EXPECT_EQ(updates("device"), 0);  // both exist before the first update
  EXPECT_EQ(updates("host"), 0);
  metrics_.OnOptimizerUpdate(gpu, ChunkLocation::kHost);
  metrics_.OnOptimizerUpdate(gpu, ChunkLocation::kHost);
  metrics_.OnOptimizerUpdate(gpu, ChunkLocation::kDevice);
  EXPECT_EQ(updates("device"), 1);
  EXPECT_EQ(updates("host"), 2);
  metrics_.RemoveDevice(gpu);
  EXPECT_EQ(updates("device"), std::nullopt);
  EXPECT_EQ(updates("host"), std::nullopt);
}

TEST_F(TidepoolMetricsTest, RemoveDeviceDropsItsSeries) {
  DeviceMetrics& keep = metrics_.Device("0", "GPU-a");
  DeviceMetrics& drop = metrics_.Device("1", "GPU-b");
  metrics_.OnBytesMoved(keep, Direction::kHostToDevice, 1, 0.001);
  metrics_.RemoveDevice(drop);
  const std::string text =
      prometheus::TextSerializer().Serialize(metrics_.Collect());
  EXPECT_THAT(text, HasSubstr("GPU-a"));
  EXPECT_THAT(text, Not(HasSubstr("GPU-b")));
  // The same device can come back (fresh counters).
  DeviceMetrics& again = metrics_.Device("1", "GPU-b");
  EXPECT_EQ(again.bytes_moved[0]->Value(), 0);
}

TEST_F(TidepoolMetricsTest, ScrapeCallbackRunsBeforeValuesAreRead) {
  DeviceMetrics& gpu = metrics_.Device("0", "GPU-a");
  int scrapes = 0;
  metrics_.SetScrapeCallback([&] {
    ++scrapes;
    metrics_.SetChunkBytes(gpu, ChunkLocation::kDevice, ChunkState::kHold,
                           1000 * scrapes);
  });
  const prometheus::Labels hold = {{"UUID", "GPU-a"},
                                   {"gpu", "0"},
                                   {"location", "device"},
                                   {"state", "hold"}};
  EXPECT_EQ(Value("tidepool_chunk_bytes", hold), 1000);
  EXPECT_EQ(Value("tidepool_chunk_bytes", hold), 2000);
  metrics_.SetScrapeCallback(nullptr);
  EXPECT_EQ(Value("tidepool_chunk_bytes", hold), 2000);
  EXPECT_EQ(scrapes, 2);
}

TEST_F(TidepoolMetricsTest, ConcurrentHotPathUpdatesSumExactly) {
  DeviceMetrics& gpu = metrics_.Device("0", "GPU-a");
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 10000; ++i) {
        metrics_.OnBytesMoved(gpu, Direction::kDeviceToHost, 4096, 1e-4);
        metrics_.OnPrefetch(gpu, PrefetchOutcome::kHit);
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  EXPECT_EQ(gpu.bytes_moved[1]->Value(), 4.0 * 10000 * 4096);
  EXPECT_EQ(gpu.prefetches[0]->Value(), 40000);
}

TEST_F(TidepoolMetricsTest, NamingConventions) {
  metrics_.Device("sim0", kUuid);
  const std::set<std::string> allowed_labels = {
      "gpu",   "UUID",    "location", "state",  "direction", "reason",
      "clean", "outcome", "policy",   "method", "version",   "backend"};
  const Exposition exposition = Scrape();
  ASSERT_FALSE(exposition.family_types.empty());
  for (const auto& [name, type] : exposition.family_types) {
    EXPECT_TRUE(name.starts_with("tidepool_")) << name;
    if (type == "counter") {
      EXPECT_TRUE(name.ends_with("_total")) << name;
    } else {
      EXPECT_FALSE(name.ends_with("_total")) << name;
    }
    if (type == "histogram") {
      EXPECT_TRUE(name.ends_with("_seconds")) << name << ": base unit";
    }
    EXPECT_THAT(name, Not(HasSubstr("milli"))) << "use base units";
    EXPECT_THAT(name, Not(HasSubstr("_mib"))) << "use base units";
  }
  for (const auto& [sample, labels] : exposition.sample_labels) {
    for (const std::string& label : labels) {
      if (label == "le") continue;
      EXPECT_TRUE(allowed_labels.contains(label))
          << sample << " has label " << label
          << ": new labels must have a small, fixed set of values (no "
             "session ids); add it here after checking that";
    }
  }
  // Device series carry both dcgm-exporter labels.
  for (const char* name :
       {"tidepool_device_pool_used_bytes", "tidepool_bytes_moved_total",
        "tidepool_sessions", "tidepool_acquire_wait_seconds_bucket"}) {
    EXPECT_TRUE(exposition.sample_labels.at(name).contains("gpu")) << name;
    EXPECT_TRUE(exposition.sample_labels.at(name).contains("UUID")) << name;
  }
}

TEST_F(TidepoolMetricsTest, PromtoolAcceptsTheExposition) {
  if (access("/usr/bin/promtool", X_OK) != 0) {
    GTEST_SKIP() << "promtool not installed (Debian package prometheus)";
  }
  DeviceMetrics& gpu = metrics_.Device("sim0", kUuid);
  metrics_.OnBytesMoved(gpu, Direction::kHostToDevice, 1 << 20, 0.001);
  char path[] = "/tmp/tidepool_metrics_XXXXXX";
  const int fd = mkstemp(path);
  ASSERT_GE(fd, 0);
  // Unsorted, as the endpoint writes it.
  const std::string text =
      prometheus::TextSerializer().Serialize(metrics_.Collect());
  ASSERT_EQ(write(fd, text.data(), text.size()),
            static_cast<ssize_t>(text.size()));
  close(fd);
  // `check metrics` parses the exposition and lints names and help.
  const std::string command =
      std::string("/usr/bin/promtool check metrics < ") + path + " 2>&1";
  FILE* pipe = popen(command.c_str(), "r");
  ASSERT_NE(pipe, nullptr);
  std::string output;
  char buffer[512];
  while (fgets(buffer, sizeof(buffer), pipe) != nullptr) output += buffer;
  const int status = pclose(pipe);
  unlink(path);
  EXPECT_EQ(status, 0) << output;
  EXPECT_EQ(output, "");
}

// --- Dashboard and rules -----------------------------------------------------

// Metric names and labels referenced by one PromQL expression.
struct PromqlRefs {
  struct Metric {
    std::string name;
    std::vector<std::string> matcher_labels;
  };
  std::vector<Metric> metrics;
  std::vector<std::string> grouping_labels;  // by/without/on/ignoring
};

bool IsIdentStart(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' ||
         c == ':';
}
bool IsIdentChar(char c) { return IsIdentStart(c) || (c >= '0' && c <= '9'); }

// A scanner, not a parser: enough for the queries we write (selectors,
// aggregations with by/without, binary operators with on/ignoring).
PromqlRefs ScanPromql(std::string_view expr) {
  PromqlRefs refs;
  size_t i = 0;
  const auto skip_space = [&] {
    while (i < expr.size() && std::isspace(static_cast<unsigned char>(expr[i])))
      ++i;
  };
  const auto skip_string = [&] {
    const char quote = expr[i++];
    while (i < expr.size() && expr[i] != quote) i += expr[i] == '\\' ? 2 : 1;
    ++i;
  };
  const auto read_ident = [&] {
    const size_t start = i;
    while (i < expr.size() && IsIdentChar(expr[i])) ++i;
    return std::string(expr.substr(start, i - start));
  };
  while (i < expr.size()) {
    const char c = expr[i];
    if (c == '"' || c == '\'' || c == '`') {
      skip_string();
      continue;
    }
    if (!IsIdentStart(c) ||
        (i > 0 && (IsIdentChar(expr[i - 1]) || expr[i - 1] == '$' ||
                   expr[i - 1] == '.'))) {
      ++i;
      continue;
    }
    const std::string ident = read_ident();
    skip_space();
    const bool grouping = ident == "by" || ident == "without" ||
                          ident == "on" || ident == "ignoring" ||
                          ident == "group_left" || ident == "group_right";
    if (grouping && i < expr.size() && expr[i] == '(') {
      ++i;
      while (i < expr.size() && expr[i] != ')') {
        skip_space();
        if (i < expr.size() && IsIdentStart(expr[i])) {
          refs.grouping_labels.push_back(read_ident());
        } else {
          ++i;
        }
      }
      continue;
    }
    if (!ident.starts_with("tidepool_") && !ident.starts_with("tidepool:")) {
      continue;
    }
    PromqlRefs::Metric metric{ident, {}};
    if (i < expr.size() && expr[i] == '{') {
      ++i;
      while (i < expr.size() && expr[i] != '}') {
        skip_space();
        if (i < expr.size() && IsIdentStart(expr[i])) {
          metric.matcher_labels.push_back(read_ident());
          skip_space();
          while (i < expr.size() &&
                 (expr[i] == '=' || expr[i] == '!' || expr[i] == '~')) {
            ++i;
          }
          skip_space();
          if (i < expr.size() && (expr[i] == '"' || expr[i] == '\'')) {
            skip_string();
          }
        } else {
          ++i;
        }
      }
      ++i;
    }
    refs.metrics.push_back(std::move(metric));
  }
  return refs;
}

TEST(PromqlScannerTest, FindsMetricsMatchersAndGrouping) {
  PromqlRefs refs = ScanPromql(
      "histogram_quantile(0.99, sum by (le, gpu) (rate("
      "tidepool_x_bucket{instance=~\"$instance\", gpu=~\"$gpu\"}"
      "[$__rate_interval]))) / on (gpu) tidepool_y");
  ASSERT_EQ(refs.metrics.size(), 2u);
  EXPECT_EQ(refs.metrics[0].name, "tidepool_x_bucket");
  EXPECT_THAT(refs.metrics[0].matcher_labels,
              ::testing::ElementsAre("instance", "gpu"));
  EXPECT_EQ(refs.metrics[1].name, "tidepool_y");
  EXPECT_THAT(refs.grouping_labels, ::testing::ElementsAre("le", "gpu", "gpu"));
}

// Labels Prometheus adds to every scraped series.
const std::set<std::string> kTargetLabels = {"instance", "job"};

// Checks one query against what TidepoolMetrics exposes; `where` names the
// query in failure messages.
void CheckQuery(const Exposition& exposition, std::string_view expr,
                const std::string& where, bool allow_recording_rules) {
  const PromqlRefs refs = ScanPromql(expr);
  std::set<std::string> available = kTargetLabels;
  for (const PromqlRefs::Metric& metric : refs.metrics) {
    if (metric.name.find(':') != std::string::npos) {
      EXPECT_TRUE(allow_recording_rules)
          << where << ": uses recording rule " << metric.name
          << "; the dashboard must work without tidepool-rules.yml";
      continue;
    }
    auto it = exposition.sample_labels.find(metric.name);
    if (it == exposition.sample_labels.end()) {
      ADD_FAILURE() << where << ": " << metric.name
                    << " is not exposed by TidepoolMetrics (query: " << expr
                    << ")";
      continue;
    }
    available.insert(it->second.begin(), it->second.end());
    for (const std::string& label : metric.matcher_labels) {
      EXPECT_TRUE(it->second.contains(label) || kTargetLabels.contains(label))
          << where << ": " << metric.name << " has no label " << label;
    }
  }
  for (const std::string& label : refs.grouping_labels) {
    EXPECT_TRUE(available.contains(label))
        << where << ": groups by " << label
        << ", which none of its metrics has (query: " << expr << ")";
  }
}

// json[key], or null when `json` is no object or has no `key` (the
// dashboard's optional fields; a null iterates as an empty array).
const Json& Get(const Json& json, const char* key) {
  static const Json kNull;
  if (!json.is_object()) return kNull;
  const auto it = json.find(key);
  return it != json.end() ? *it : kNull;
}

// A string field's text, or "" for anything else.
std::string String(const Json& json) {
  return json.is_string() ? json.get<std::string>() : "";
}

class DashboardTest : public TidepoolMetricsTest {
 protected:
  void SetUp() override {
    metrics_.Device("0", "GPU-a");
    exposition_ = Scrape();
    const std::string text =
        ReadFileOrEmpty(SourcePath("deploy/grafana/dashboards/tidepool.json"));
    ASSERT_FALSE(text.empty()) << "dashboard not found";
    dashboard_ = Json::parse(text, /*cb=*/nullptr, /*allow_exceptions=*/false);
    ASSERT_FALSE(dashboard_.is_discarded()) << "the dashboard is not JSON";
  }

  // Every panel, including panels nested in (collapsed) rows.
  std::vector<const Json*> Panels() const {
    std::vector<const Json*> panels;
    for (const Json& panel : Get(dashboard_, "panels")) {
      panels.push_back(&panel);
      for (const Json& nested : Get(panel, "panels")) {
        panels.push_back(&nested);
      }
    }
    return panels;
  }

  Exposition exposition_;
  Json dashboard_;
};

bool UsesDatasourceVariable(const Json& datasource) {
  const std::string uid = datasource.is_string()
                              ? String(datasource)
                              : String(Get(datasource, "uid"));
  return uid == "${datasource}" || uid == "$datasource";
}

TEST_F(DashboardTest, HasDatasourceVariableAndNoInputs) {
  EXPECT_FALSE(dashboard_.contains("__inputs"))
      << "exported-for-sharing dashboards with __inputs cannot be "
         "provisioned; use the $datasource variable";
  std::map<std::string, const Json*> variables;
  for (const Json& variable : Get(Get(dashboard_, "templating"), "list")) {
    variables[String(Get(variable, "name"))] = &variable;
  }
  ASSERT_TRUE(variables.contains("datasource"));
  EXPECT_EQ(String(Get(*variables["datasource"], "type")), "datasource");
  EXPECT_EQ(String(Get(*variables["datasource"], "query")), "prometheus");
  for (const char* name : {"instance", "gpu"}) {
    ASSERT_TRUE(variables.contains(name)) << name;
    EXPECT_EQ(String(Get(*variables[name], "type")), "query") << name;
    EXPECT_TRUE(UsesDatasourceVariable(Get(*variables[name], "datasource")))
        << name;
  }
}

TEST_F(DashboardTest, EveryPanelUsesTheDatasourceVariable) {
  int queried_panels = 0;
  for (const Json* panel : Panels()) {
    if (String(Get(*panel, "type")) == "row") continue;
    ++queried_panels;
    const std::string title = String(Get(*panel, "title"));
    EXPECT_TRUE(UsesDatasourceVariable(Get(*panel, "datasource"))) << title;
    EXPECT_FALSE(Get(*panel, "targets").empty()) << title;
    for (const Json& target : Get(*panel, "targets")) {
      if (target.contains("datasource")) {
        EXPECT_TRUE(UsesDatasourceVariable(target["datasource"])) << title;
      }
    }
    EXPECT_FALSE(String(Get(*panel, "description")).empty())
        << title << ": say what the panel tells the operator";
  }
  EXPECT_GE(queried_panels, 10);
}

TEST_F(DashboardTest, EveryQueryUsesExposedMetricsAndLabels) {
  std::set<std::string> used;
  for (const Json* panel : Panels()) {
    for (const Json& target : Get(*panel, "targets")) {
      const std::string expr = String(Get(target, "expr"));
      const std::string where = "panel \"" + String(Get(*panel, "title")) +
                                "\" target " + String(Get(target, "refId"));
      ASSERT_FALSE(expr.empty()) << where;
      EXPECT_FALSE(ScanPromql(expr).metrics.empty()) << where;
      CheckQuery(exposition_, expr, where, /*allow_recording_rules=*/false);
      for (const auto& metric : ScanPromql(expr).metrics) {
        used.insert(metric.name);
      }
    }
  }
  for (const Json& variable : Get(Get(dashboard_, "templating"), "list")) {
    if (String(Get(variable, "type")) != "query") continue;
    const Json& query = Get(variable, "query");
    const std::string expr =
        query.is_string() ? String(query) : String(Get(query, "query"));
    const std::string where = "variable " + String(Get(variable, "name"));
    // label_values(metric{...}, label): the label must exist too.
    const size_t comma = expr.rfind(',');
    ASSERT_NE(comma, std::string::npos) << where;
    std::string label = expr.substr(comma + 1);
    std::erase_if(label, [](char c) { return c == ' ' || c == ')'; });
    const PromqlRefs refs = ScanPromql(expr);
    ASSERT_EQ(refs.metrics.size(), 1u) << where;
    CheckQuery(exposition_, expr, where, /*allow_recording_rules=*/false);
    EXPECT_TRUE(
        exposition_.sample_labels[refs.metrics[0].name].contains(label) ||
        kTargetLabels.contains(label))
        << where << ": " << refs.metrics[0].name << " has no label " << label;
  }
  // The panels cover what the design asks the dashboard to show.
  for (const char* name : {
           "tidepool_device_pool_used_bytes",
           "tidepool_device_pool_capacity_bytes",
           "tidepool_device_pool_peak_bytes",
           "tidepool_host_pool_used_bytes",
           "tidepool_chunk_bytes",
           "tidepool_sessions",
           "tidepool_bytes_moved_total",
           "tidepool_evictions_total",
           "tidepool_prefetches_total",
           "tidepool_optimizer_updates_total",
           "tidepool_rpc_duration_seconds_bucket",
           "tidepool_acquire_wait_seconds_bucket",
           "tidepool_stall_seconds_total",
       }) {
    EXPECT_TRUE(used.contains(name)) << "no panel shows " << name;
  }
}

TEST_F(DashboardTest, RulesUseExposedMetricsAndLabels) {
  const std::string path = SourcePath("deploy/prometheus/tidepool-rules.yml");
  YAML::Node rules;
  try {
    rules = YAML::LoadFile(path);
  } catch (const YAML::Exception& e) {
    FAIL() << path << ": " << e.what();
  }
  // groups: [{name, rules: [{record | alert, expr, ...}]}]
  int exprs = 0;
  for (const YAML::Node& group : rules["groups"]) {
    for (const YAML::Node& rule : group["rules"]) {
      ASSERT_TRUE(rule["expr"].IsScalar())
          << "rule without expr in group " << group["name"].as<std::string>();
      CheckQuery(exposition_, rule["expr"].as<std::string>(),
                 "tidepool-rules.yml", /*allow_recording_rules=*/true);
      ++exprs;
    }
  }
  EXPECT_GE(exprs, 8);
}

}  // namespace
}  // namespace tidepool::metrics
