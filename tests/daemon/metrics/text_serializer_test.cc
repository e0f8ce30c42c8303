// Golden-file tests of the Prometheus text format 0.0.4 serialiser. The
// goldens in testdata/ are compared exactly; `promtool check metrics`
// accepts them (see check_deploy.sh).
#include "daemon/metrics/text_serializer.h"

#include <limits>
#include <memory>

#include "daemon/metrics/callback_collector.h"
#include "daemon/metrics/registry.h"
#include "gtest/gtest.h"
#include "tests/daemon/metrics/golden.h"

namespace tidepool::metrics {
namespace {

using testing::ExpectMatchesGolden;

std::string Value(double value) {
  std::string out;
  AppendSampleValue(&out, value);
  return out;
}

TEST(TextFormatTest, SampleValues) {
  EXPECT_EQ(Value(0), "0");
  EXPECT_EQ(Value(42), "42");
  EXPECT_EQ(Value(-1.5), "-1.5");
  EXPECT_EQ(Value(0.005), "0.005");
  EXPECT_EQ(Value(17179869184.0), "17179869184");  // 16 GiB, not 1.7e+10
  EXPECT_EQ(Value(1e-7), "1e-07");
  EXPECT_EQ(Value(std::numeric_limits<double>::infinity()), "+Inf");
  EXPECT_EQ(Value(-std::numeric_limits<double>::infinity()), "-Inf");
  EXPECT_EQ(Value(std::numeric_limits<double>::quiet_NaN()), "NaN");
}

TEST(TextFormatTest, ContentType) {
  EXPECT_EQ(kTextContentType, "text/plain; version=0.0.4; charset=utf-8");
}

TEST(TextFormatTest, EmptyRegistryIsEmptyBody) {
  Registry registry;
  BuildCounter().Name("tidepool_unused_total").Help("u").Register(registry);
  EXPECT_EQ(SerializeText(registry.Collect()), "");
}

TEST(TextFormatTest, Counters) {
  Registry registry;
  Family<Counter>& moved = BuildCounter()
                               .Name("tidepool_bytes_moved_total")
                               .Help("Bytes copied between pools.")
                               .Register(registry);
  moved.Add({{"gpu", "0"}, {"direction", "h2d"}}).Increment(67108864);
  moved.Add({{"gpu", "0"}, {"direction", "d2h"}}).Increment(1.5);
  moved.Add({{"gpu", "1"}, {"direction", "h2d"}});  // stays at 0
  BuildCounter()
      .Name("tidepool_scrapes_total")
      .Help("No labels.")
      .Register(registry)
      .Add({})
      .Increment(3);
  ExpectMatchesGolden(SerializeText(registry.Collect()), "counters.prom");
}

TEST(TextFormatTest, Gauges) {
  Registry registry;
  Family<Gauge>& gauges = BuildGauge()
                              .Name("tidepool_test_value")
                              .Help("Assorted values.")
                              .Register(registry);
  gauges.Add({{"case", "zero"}});
  gauges.Add({{"case", "negative"}}).Set(-2.5);
  gauges.Add({{"case", "bytes"}}).Set(17179869184.0);
  gauges.Add({{"case", "tiny"}}).Set(1e-7);
  gauges.Add({{"case", "huge"}}).Set(1.5e300);
  gauges.Add({{"case", "inf"}}).Set(std::numeric_limits<double>::infinity());
  gauges.Add({{"case", "minus_inf"}})
      .Set(-std::numeric_limits<double>::infinity());
  gauges.Add({{"case", "nan"}}).Set(std::numeric_limits<double>::quiet_NaN());
  ExpectMatchesGolden(SerializeText(registry.Collect()), "gauges.prom");
}

TEST(TextFormatTest, Histograms) {
  Registry registry;
  Family<Histogram>& durations = BuildHistogram()
                                     .Name("tidepool_transfer_duration_seconds")
                                     .Help("Copy durations.")
                                     .Register(registry);
  Histogram& h2d = durations.Add({{"gpu", "0"}, {"direction", "h2d"}},
                                 Histogram::BucketBoundaries{0.001, 0.01, 0.1});
  for (double v : {0.0005, 0.001, 0.002, 0.05, 0.5, 2.0}) h2d.Observe(v);
  durations.Add({{"gpu", "0"}, {"direction", "d2h"}},
                Histogram::BucketBoundaries{0.001, 0.01, 0.1});
  // No labels at all: only `le` inside the braces.
  BuildHistogram()
      .Name("tidepool_unlabelled_seconds")
      .Help("Unlabelled.")
      .Register(registry)
      .Add({}, Histogram::BucketBoundaries{1})
      .Observe(0.25);
  ExpectMatchesGolden(SerializeText(registry.Collect()), "histograms.prom");
}

TEST(TextFormatTest, Escaping) {
  Registry registry;
  Family<Gauge>& gauges =
      BuildGauge()
          .Name("tidepool_escaping")
          .Help("Help with a backslash \\ and a\nnewline; \"quotes\" stay.")
          .Register(registry);
  gauges.Add({{"value", "back\\slash"}}).Set(1);
  gauges.Add({{"value", "a \"quoted\" word"}}).Set(2);
  gauges.Add({{"value", "two\nlines"}}).Set(3);
  gauges.Add({{"value", "all \\ \" \n three"}}).Set(4);
  gauges.Add({{"value", "utf-8 ✓ {braces}, commas= and spaces"}}).Set(5);
  gauges.Add({{"value", ""}}).Set(6);
  ExpectMatchesGolden(SerializeText(registry.Collect()), "escaping.prom");
}

TEST(TextFormatTest, MultipleFamiliesSortedWithCollectors) {
  Registry registry;
  // Registered out of order, with a scrape-time collector and an empty
  // family in between; output is sorted by name and omits the empty one.
  BuildGauge()
      .Name("tidepool_sessions")
      .Help("Sessions.")
      .Register(registry)
      .Add({{"policy", "auto"}})
      .Set(2);
  BuildCounter().Name("tidepool_empty_total").Help("Empty.").Register(registry);
  BuildCounter()
      .Name("tidepool_evictions_total")
      .Help("Evictions.")
      .Register(registry)
      .Add({{"reason", "capacity"}})
      .Increment(7);
  auto collector = std::make_shared<CallbackCollector>(
      "tidepool_chunks", "Chunks by state (callback).", MetricType::kGauge, [] {
        return std::vector<CallbackCollector::Sample>{
            {{{"state", "hold"}}, 4}, {{{"state", "compute"}}, 1}};
      });
  registry.AddCollectable(collector);
  BuildHistogram()
      .Name("tidepool_acquire_wait_seconds")
      .Help("Acquire wait.")
      .Register(registry)
      .Add({{"gpu", "0"}}, Histogram::BucketBoundaries{1e-5, 1e-3})
      .Observe(2e-4);
  const std::string first = SerializeText(registry.Collect());
  ExpectMatchesGolden(first, "multiple_families.prom");
  EXPECT_EQ(SerializeText(registry.Collect()), first) << "not deterministic";
}

TEST(TextFormatTest, RemovedLabelSetsDisappear) {
  Registry registry;
  Family<Gauge>& used = BuildGauge()
                            .Name("tidepool_device_pool_used_bytes")
                            .Help("Used.")
                            .Register(registry);
  used.Add({{"gpu", "0"}}).Set(100);
  Gauge& gone = used.Add({{"gpu", "1"}});
  gone.Set(200);
  used.Add({{"gpu", "2"}}).Set(300);
  used.Remove(&gone);
  Family<Counter>& all_gone = BuildCounter()
                                  .Name("tidepool_all_gone_total")
                                  .Help("Every label set removed.")
                                  .Register(registry);
  all_gone.Remove(&all_gone.Add({{"gpu", "0"}}));
  ExpectMatchesGolden(SerializeText(registry.Collect()), "removal.prom");
}

}  // namespace
}  // namespace tidepool::metrics
