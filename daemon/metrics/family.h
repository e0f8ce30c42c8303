// Family<T>: all metrics that share one name, one per label set, e.g.
// tidepool_bytes_moved_total{gpu="0",UUID="GPU-...",direction="h2d"}.
//
// Add() returns a reference that stays valid until Remove() of that metric
// (or the registry's destruction), so callers look a label set up once and
// keep the reference for the hot path; a second Add() with the same labels
// returns the same object. Families are created by a Registry (see
// registry.h), never directly.
//
//   Family<Counter>& moved = BuildCounter()
//       .Name("tidepool_bytes_moved_total").Help("Bytes copied.")
//       .Register(registry);
//   Counter& h2d = moved.Add({{"gpu", "0"}, {"direction", "h2d"}});
//   h2d.Increment(64 << 20);
//   moved.Remove(&h2d);  // the device went away; h2d is now dangling
#pragma once

#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "daemon/metrics/collectable.h"
#include "daemon/metrics/validation.h"

namespace tidepool::metrics {

template <typename T>
class Family final : public Collectable {
 public:
  // Use Registry / BuildCounter() and friends; the name is validated there.
  Family(std::string name, std::string help)
      : name_(std::move(name)), help_(std::move(help)) {}
  Family(const Family&) = delete;
  Family& operator=(const Family&) = delete;

  // The metric for `labels`, created with T(args...) the first time. A
  // later Add() with the same labels returns the existing metric and
  // ignores `args` (as prometheus-cpp does).
  template <typename... Args>
  absl::StatusOr<T*> TryAdd(const Labels& labels, Args&&... args) {
    if (absl::Status status = ValidateLabels(labels, T::kType); !status.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat(name_, ": ", status.message()));
    }
    absl::MutexLock lock(&mu_);
    auto [it, inserted] = metrics_.try_emplace(labels);
    if (inserted) it->second = std::make_unique<T>(std::forward<Args>(args)...);
    return it->second.get();
  }

  // As TryAdd(); a bad label name aborts (see internal::DieBecause).
  template <typename... Args>
  T& Add(const Labels& labels, Args&&... args) {
    absl::StatusOr<T*> metric = TryAdd(labels, std::forward<Args>(args)...);
    if (!metric.ok()) internal::DieBecause(metric.status());
    return **metric;
  }

  // Drops `metric` from the family, for a label set that goes away (a
  // device removed). The caller must not use the reference afterwards.
  // A metric that is not in this family is ignored.
  void Remove(const T* metric) {
    absl::MutexLock lock(&mu_);
    for (auto it = metrics_.begin(); it != metrics_.end(); ++it) {
      if (it->second.get() == metric) {
        metrics_.erase(it);
        return;
      }
    }
  }

  bool Has(const Labels& labels) const {
    absl::MutexLock lock(&mu_);
    return metrics_.contains(labels);
  }

  const std::string& name() const { return name_; }
  const std::string& help() const { return help_; }

  // One MetricFamily with a sample per label set, in label order; nothing
  // when the family is empty (so unused families do not clutter a scrape).
  std::vector<MetricFamily> Collect() const override {
    MetricFamily family{name_, help_, T::kType, {}};
    {
      absl::MutexLock lock(&mu_);
      if (metrics_.empty()) return {};
      family.metrics.reserve(metrics_.size());
      for (const auto& [labels, metric] : metrics_) {
        ClientMetric sample = metric->Collect();
        sample.labels = labels;
        family.metrics.push_back(std::move(sample));
      }
    }
    return {std::move(family)};
  }

 private:
  const std::string name_;
  const std::string help_;
  // Guards the map only; the metrics themselves are atomics and are
  // updated without this lock. unique_ptr keeps references stable.
  mutable absl::Mutex mu_;
  std::map<Labels, std::unique_ptr<T>> metrics_ ABSL_GUARDED_BY(mu_);
};

}  // namespace tidepool::metrics
