// Registry, Family and metric-type behaviour: label-set caching, removal,
// name validation, concurrent updates, histogram bucketing, scrape-time
// collectors.
#include "daemon/metrics/registry.h"

#include <cmath>
#include <limits>
#include <memory>
#include <thread>
#include <vector>

#include "daemon/metrics/callback_collector.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace tidepool::metrics {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;

TEST(FamilyTest, SameLabelsReturnSameMetric) {
  Registry registry;
  Family<Counter>& family =
      BuildCounter().Name("tidepool_x_total").Help("x").Register(registry);
  Counter& a = family.Add({{"gpu", "0"}, {"UUID", "GPU-a"}});
  // Same set, different insertion order: one canonical label set.
  Counter& b = family.Add({{"UUID", "GPU-a"}, {"gpu", "0"}});
  Counter& c = family.Add({{"gpu", "1"}, {"UUID", "GPU-b"}});
  EXPECT_EQ(&a, &b);
  EXPECT_NE(&a, &c);
  a.Increment(2);
  EXPECT_EQ(b.Value(), 2);
  EXPECT_EQ(c.Value(), 0);
}

TEST(FamilyTest, RemoveDropsOnlyThatLabelSet) {
  Registry registry;
  Family<Gauge>& family =
      BuildGauge().Name("tidepool_g").Help("g").Register(registry);
  Gauge& keep = family.Add({{"gpu", "0"}});
  Gauge& drop = family.Add({{"gpu", "1"}});
  keep.Set(1);
  drop.Set(2);
  family.Remove(&drop);
  EXPECT_TRUE(family.Has({{"gpu", "0"}}));
  EXPECT_FALSE(family.Has({{"gpu", "1"}}));
  std::vector<MetricFamily> collected = registry.Collect();
  ASSERT_EQ(collected.size(), 1u);
  ASSERT_EQ(collected[0].metrics.size(), 1u);
  EXPECT_EQ(collected[0].metrics[0].labels, (Labels{{"gpu", "0"}}));
  // Removing something that is not (or no longer) there is harmless.
  Gauge stranger;
  family.Remove(&stranger);
  family.Remove(&keep);
  EXPECT_THAT(registry.Collect(), IsEmpty());
  // A removed label set can come back as a fresh metric.
  EXPECT_EQ(family.Add({{"gpu", "1"}}).Value(), 0);
}

TEST(FamilyTest, RejectsBadLabelNames) {
  Registry registry;
  Family<Counter>& counters =
      BuildCounter().Name("tidepool_c_total").Help("c").Register(registry);
  EXPECT_FALSE(counters.TryAdd({{"1gpu", "0"}}).ok());
  EXPECT_FALSE(counters.TryAdd({{"gp-u", "0"}}).ok());
  EXPECT_FALSE(counters.TryAdd({{"", "0"}}).ok());
  absl::StatusOr<Counter*> reserved = counters.TryAdd({{"__name__", "x"}});
  ASSERT_FALSE(reserved.ok());
  EXPECT_THAT(std::string(reserved.status().message()), HasSubstr("reserved"));
  // `le` is fine on a counter but reserved on a histogram.
  EXPECT_TRUE(counters.TryAdd({{"le", "1"}}).ok());
  Family<Histogram>& histograms =
      BuildHistogram().Name("tidepool_h_seconds").Help("h").Register(registry);
  EXPECT_FALSE(
      histograms.TryAdd({{"le", "1"}}, Histogram::BucketBoundaries{1}).ok());
  // Label values are free-form (they are escaped on output).
  EXPECT_TRUE(counters.TryAdd({{"path", "a\"b\\c\nd"}}).ok());
}

TEST(FamilyDeathTest, AddWithBadLabelNameAborts) {
  Registry registry;
  Family<Counter>& family =
      BuildCounter().Name("tidepool_c_total").Help("c").Register(registry);
  EXPECT_DEATH(family.Add({{"bad-name", "0"}}), "invalid label name");
}

TEST(RegistryTest, SameNameAndTypeReturnsSameFamily) {
  Registry registry;
  Family<Counter>& a =
      BuildCounter().Name("tidepool_a_total").Help("help").Register(registry);
  Family<Counter>& b =
      BuildCounter().Name("tidepool_a_total").Help("help").Register(registry);
  EXPECT_EQ(&a, &b);
}

TEST(RegistryTest, ConflictingRegistrationsAreErrors) {
  Registry registry;
  BuildCounter().Name("tidepool_a_total").Help("help").Register(registry);
  absl::StatusOr<Family<Gauge>*> other_type =
      BuildGauge().Name("tidepool_a_total").Help("help").TryRegister(registry);
  ASSERT_FALSE(other_type.ok());
  EXPECT_EQ(other_type.status().code(), absl::StatusCode::kAlreadyExists);
  EXPECT_THAT(std::string(other_type.status().message()),
              HasSubstr("already registered as a counter"));
  EXPECT_FALSE(BuildCounter()
                   .Name("tidepool_a_total")
                   .Help("other help")
                   .TryRegister(registry)
                   .ok());
}

TEST(RegistryTest, RejectsBadMetricNames) {
  Registry registry;
  for (const char* name : {"", "1abc", "tidepool-x", "tidepool x", "é"}) {
    absl::StatusOr<Family<Counter>*> family =
        BuildCounter().Name(name).Help("h").TryRegister(registry);
    EXPECT_EQ(family.status().code(), absl::StatusCode::kInvalidArgument)
        << name;
  }
  EXPECT_TRUE(BuildGauge()
                  .Name("tidepool:recorded:ratio")
                  .Help("h")
                  .TryRegister(registry)
                  .ok());
}

TEST(RegistryDeathTest, RegisterWithBadNameAborts) {
  Registry registry;
  EXPECT_DEATH(BuildCounter().Name("bad name").Help("h").Register(registry),
               "invalid metric name");
}

TEST(RegistryTest, CollectSortsFamiliesAndSkipsEmptyOnes) {
  Registry registry;
  BuildGauge().Name("tidepool_b").Help("b").Register(registry).Add({});
  BuildGauge().Name("tidepool_empty").Help("e").Register(registry);
  BuildGauge().Name("tidepool_a").Help("a").Register(registry).Add({});
  std::vector<std::string> names;
  for (const MetricFamily& family : registry.Collect()) {
    names.push_back(family.name);
  }
  EXPECT_THAT(names, ElementsAre("tidepool_a", "tidepool_b"));
}

TEST(CounterTest, ConcurrentIncrementsSumExactly) {
  Registry registry;
  Family<Counter>& family =
      BuildCounter().Name("tidepool_c_total").Help("c").Register(registry);
  Family<Gauge>& gauges =
      BuildGauge().Name("tidepool_g").Help("g").Register(registry);
  Family<Histogram>& histograms =
      BuildHistogram().Name("tidepool_h").Help("h").Register(registry);
  constexpr int kThreads = 8;
  constexpr int kIncrements = 20000;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&] {
      // Every thread looks the label set up itself: Add() races too.
      Counter& counter = family.Add({{"gpu", "0"}});
      Gauge& gauge = gauges.Add({{"gpu", "0"}});
      Histogram& histogram =
          histograms.Add({{"gpu", "0"}}, Histogram::BucketBoundaries{0.5});
      for (int i = 0; i < kIncrements; ++i) {
        counter.Increment();
        gauge.Increment(2);
        gauge.Decrement();
        histogram.Observe(i % 2 == 0 ? 0.25 : 1.0);
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  EXPECT_EQ(family.Add({{"gpu", "0"}}).Value(), kThreads * kIncrements);
  EXPECT_EQ(gauges.Add({{"gpu", "0"}}).Value(), kThreads * kIncrements);
  ClientMetric h =
      histograms.Add({{"gpu", "0"}}, Histogram::BucketBoundaries{}).Collect();
  EXPECT_EQ(h.sample_count, uint64_t{kThreads} * kIncrements);
  ASSERT_EQ(h.buckets.size(), 1u);
  EXPECT_EQ(h.buckets[0].cumulative_count,
            uint64_t{kThreads} * kIncrements / 2);
  EXPECT_EQ(h.sample_sum, kThreads * kIncrements / 2 * 1.25);
}

TEST(CounterTest, IgnoresNegativeAndNaN) {
  Counter counter;
  counter.Increment(3);
  counter.Increment(-1);
  counter.Increment(std::numeric_limits<double>::quiet_NaN());
  EXPECT_EQ(counter.Value(), 3);
}

TEST(GaugeTest, SetIncrementDecrementAndMax) {
  Gauge gauge;
  gauge.Set(10);
  gauge.Increment(5);
  gauge.Decrement(20);
  EXPECT_EQ(gauge.Value(), -5);
  gauge.SetToMax(7);
  EXPECT_EQ(gauge.Value(), 7);
  gauge.SetToMax(3);
  EXPECT_EQ(gauge.Value(), 7);
}

TEST(HistogramTest, BoundIsInclusiveAndInfCatchesTheRest) {
  Histogram histogram({1, 0.5, 2, 1, std::numeric_limits<double>::infinity()});
  EXPECT_THAT(histogram.bounds(), ElementsAre(0.5, 1, 2));
  for (double v : {0.1, 0.5, 0.7, 1.0, 2.0, 3.0, -4.0}) histogram.Observe(v);
  histogram.Observe(std::numeric_limits<double>::quiet_NaN());
  ClientMetric metric = histogram.Collect();
  ASSERT_EQ(metric.buckets.size(), 3u);
  EXPECT_EQ(metric.buckets[0].cumulative_count, 3u);  // -4, 0.1, 0.5
  EXPECT_EQ(metric.buckets[1].cumulative_count, 5u);  // + 0.7, 1.0
  EXPECT_EQ(metric.buckets[2].cumulative_count, 6u);  // + 2.0
  EXPECT_EQ(metric.sample_count, 7u);                 // + 3.0
  EXPECT_DOUBLE_EQ(metric.sample_sum, 3.3);
}

TEST(HistogramTest, BucketHelpers) {
  EXPECT_THAT(ExponentialBuckets(1, 2, 4), ElementsAre(1, 2, 4, 8));
  EXPECT_THAT(LinearBuckets(0.5, 0.5, 3), ElementsAre(0.5, 1, 1.5));
}

TEST(CallbackCollectorTest, ReadsValuesAtScrapeTime) {
  Registry registry;
  double depth = 3;
  auto collector = std::make_shared<CallbackCollector>(
      "tidepool_queue_depth", "Queued copies.", MetricType::kGauge, [&depth] {
        return std::vector<CallbackCollector::Sample>{
            {{{"direction", "h2d"}}, depth},
            {{{"bad-label", "x"}}, 1},  // dropped, not fatal
        };
      });
  ASSERT_TRUE(collector->Validate().ok());
  registry.AddCollectable(collector);
  depth = 5;
  std::vector<MetricFamily> collected = registry.Collect();
  ASSERT_EQ(collected.size(), 1u);
  EXPECT_EQ(collected[0].type, MetricType::kGauge);
  ASSERT_EQ(collected[0].metrics.size(), 1u);
  EXPECT_EQ(collected[0].metrics[0].value, 5);
  // Held weakly: dropping the owner's reference removes it from scrapes.
  collector.reset();
  EXPECT_THAT(registry.Collect(), IsEmpty());
}

TEST(CallbackCollectorTest, InvalidCollectorProducesNothing) {
  auto good_callback = [] {
    return std::vector<CallbackCollector::Sample>{{{}, 1}};
  };
  EXPECT_FALSE(
      CallbackCollector("bad name", "", MetricType::kGauge, good_callback)
          .Validate()
          .ok());
  CallbackCollector histogram("tidepool_h", "", MetricType::kHistogram,
                              good_callback);
  EXPECT_FALSE(histogram.Validate().ok());
  EXPECT_THAT(histogram.Collect(), IsEmpty());
}

// A collectable that updates a registered gauge when scraped: collectables
// run before families are read, so the scrape sees the fresh value. It also
// registers a family from inside Collect(), which must not deadlock.
class Refresher : public Collectable {
 public:
  Refresher(Registry& registry, Gauge& gauge)
      : registry_(registry), gauge_(gauge) {}
  std::vector<MetricFamily> Collect() const override {
    gauge_.Set(gauge_.Value() + 1);
    BuildGauge().Name("tidepool_late").Help("l").Register(registry_);
    return {};
  }

 private:
  Registry& registry_;
  Gauge& gauge_;
};

TEST(RegistryTest, CollectablesRunBeforeFamiliesAreRead) {
  Registry registry;
  Gauge& gauge = BuildGauge()
                     .Name("tidepool_refreshed")
                     .Help("r")
                     .Register(registry)
                     .Add({});
  auto refresher = std::make_shared<Refresher>(registry, gauge);
  registry.AddCollectable(refresher);
  std::vector<MetricFamily> collected = registry.Collect();
  ASSERT_EQ(collected.size(), 1u);
  EXPECT_EQ(collected[0].metrics[0].value, 1);
}

TEST(RegistryTest, MergesSameNameFamiliesAndDropsTypeConflicts) {
  Registry registry;
  BuildGauge()
      .Name("tidepool_x")
      .Help("x")
      .Register(registry)
      .Add({{"source", "family"}});
  auto same_type = std::make_shared<CallbackCollector>(
      "tidepool_x", "x", MetricType::kGauge, [] {
        return std::vector<CallbackCollector::Sample>{{{{"source", "cb"}}, 1}};
      });
  auto other_type = std::make_shared<CallbackCollector>(
      "tidepool_x", "x", MetricType::kCounter, [] {
        return std::vector<CallbackCollector::Sample>{{{{"source", "c"}}, 1}};
      });
  registry.AddCollectable(same_type);
  registry.AddCollectable(other_type);
  std::vector<MetricFamily> collected = registry.Collect();
  ASSERT_EQ(collected.size(), 1u);
  EXPECT_EQ(collected[0].type, MetricType::kGauge);
  EXPECT_EQ(collected[0].metrics.size(), 2u);
}

}  // namespace
}  // namespace tidepool::metrics
