// CallbackCollector: samples read at scrape time, names checked, bad label
// sets dropped without losing the rest, and what it produces is valid for
// prometheus-cpp's text serializer.
#include "daemon/metrics/callback_collector.h"

#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "prometheus/text_serializer.h"

namespace tidepool::metrics {
namespace {

using ::testing::IsEmpty;
using Sample = CallbackCollector::Sample;

TEST(CallbackCollectorTest, ReadsValuesAtScrapeTime) {
  double depth = 3;
  CallbackCollector collector(
      "tidepool_queue_depth", "Queued copies.", prometheus::MetricType::Gauge,
      [&depth] {
        return std::vector<Sample>{
            {{{"direction", "h2d"}}, depth},
            {{{"bad-label", "x"}}, 1},    // dropped, not fatal
            {{{"__reserved", "x"}}, 1}};  // dropped too
      });
  ASSERT_TRUE(collector.Validate().ok());
  depth = 5;
  std::vector<prometheus::MetricFamily> collected = collector.Collect();
  ASSERT_EQ(collected.size(), 1u);
  EXPECT_EQ(collected[0].name, "tidepool_queue_depth");
  EXPECT_EQ(collected[0].type, prometheus::MetricType::Gauge);
  ASSERT_EQ(collected[0].metric.size(), 1u);
  EXPECT_EQ(collected[0].metric[0].gauge.value, 5);
  ASSERT_EQ(collected[0].metric[0].label.size(), 1u);
  EXPECT_EQ(collected[0].metric[0].label[0].name, "direction");
  EXPECT_EQ(collected[0].metric[0].label[0].value, "h2d");
  depth = 7;
  EXPECT_EQ(collector.Collect()[0].metric[0].gauge.value, 7);
}

TEST(CallbackCollectorTest, CountersAndUntypedCarryTheirValue) {
  CallbackCollector counter("tidepool_x_total", "x",
                            prometheus::MetricType::Counter, [] {
                              return std::vector<Sample>{{{}, 42}};
                            });
  CallbackCollector untyped("tidepool_y", "y", prometheus::MetricType::Untyped,
                            [] {
                              return std::vector<Sample>{{{}, 1.5}};
                            });
  EXPECT_EQ(prometheus::TextSerializer().Serialize(counter.Collect()),
            "# HELP tidepool_x_total x\n"
            "# TYPE tidepool_x_total counter\n"
            "tidepool_x_total 42\n");
  EXPECT_EQ(prometheus::TextSerializer().Serialize(untyped.Collect()),
            "# HELP tidepool_y y\n"
            "# TYPE tidepool_y untyped\n"
            "tidepool_y 1.5\n");
}

TEST(CallbackCollectorTest, NoSamplesNoFamily) {
  CallbackCollector empty("tidepool_empty", "e", prometheus::MetricType::Gauge,
                          [] { return std::vector<Sample>{}; });
  EXPECT_THAT(empty.Collect(), IsEmpty());
  CallbackCollector all_bad("tidepool_bad", "b", prometheus::MetricType::Gauge,
                            [] {
                              return std::vector<Sample>{{{{"1gpu", "0"}}, 1}};
                            });
  EXPECT_THAT(all_bad.Collect(), IsEmpty());
}

TEST(CallbackCollectorTest, InvalidCollectorProducesNothing) {
  auto good_callback = [] { return std::vector<Sample>{{{}, 1}}; };
  for (const char* name : {"", "1abc", "tidepool-x", "tidepool x", "__x"}) {
    CallbackCollector bad(name, "", prometheus::MetricType::Gauge,
                          good_callback);
    EXPECT_FALSE(bad.Validate().ok()) << name;
    EXPECT_THAT(bad.Collect(), IsEmpty()) << name;
  }
  for (prometheus::MetricType type :
       {prometheus::MetricType::Histogram, prometheus::MetricType::Summary}) {
    CallbackCollector bad("tidepool_h", "", type, good_callback);
    EXPECT_FALSE(bad.Validate().ok());
    EXPECT_THAT(bad.Collect(), IsEmpty());
  }
  CallbackCollector no_callback("tidepool_n", "", prometheus::MetricType::Gauge,
                                nullptr);
  EXPECT_FALSE(no_callback.Validate().ok());
  EXPECT_THAT(no_callback.Collect(), IsEmpty());
  EXPECT_TRUE(CallbackCollector("tidepool:recorded:ratio", "",
                                prometheus::MetricType::Gauge, good_callback)
                  .Validate()
                  .ok());
}

}  // namespace
}  // namespace tidepool::metrics
