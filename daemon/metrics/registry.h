// Registry: the set of metric families (and scrape-time collectors) that one
// /metrics endpoint serves, plus the prometheus-cpp style builders.
//
//   Registry registry;
//   Family<Gauge>& used = BuildGauge()
//       .Name("tidepool_host_pool_used_bytes")
//       .Help("Bytes of the pinned host pool in use.")
//       .Register(registry);
//   used.Add({}).Set(1 << 30);
//
//   auto depth = std::make_shared<CallbackCollector>(...);  // see below
//   registry.AddCollectable(depth);  // held weakly: drop `depth` to remove
//
//   std::string text = SerializeText(registry.Collect());
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "daemon/metrics/collectable.h"
#include "daemon/metrics/counter.h"
#include "daemon/metrics/family.h"
#include "daemon/metrics/gauge.h"
#include "daemon/metrics/histogram.h"
#include "daemon/metrics/validation.h"

namespace tidepool::metrics {

class Registry final : public Collectable {
 public:
  Registry() = default;
  Registry(const Registry&) = delete;
  Registry& operator=(const Registry&) = delete;

  // The family called `name`, created on first use. Registering a name
  // again with the same type and help returns the existing family (so two
  // components may share one); a different type or help is an error, as
  // is an invalid name.
  template <typename T>
  absl::StatusOr<Family<T>*> TryAddFamily(std::string_view name,
                                          std::string_view help) {
    if (absl::Status status = ValidateMetricName(name); !status.ok()) {
      return status;
    }
    absl::MutexLock lock(&mu_);
    auto it = families_.find(name);
    if (it == families_.end()) {
      auto family =
          std::make_unique<Family<T>>(std::string(name), std::string(help));
      Family<T>* result = family.get();
      families_.emplace(std::string(name),
                        Entry{T::kType, std::string(help), std::move(family)});
      return result;
    }
    const Entry& entry = it->second;
    if (entry.type != T::kType) {
      return absl::AlreadyExistsError(absl::StrCat(
          "metric ", std::string(name), " is already registered as a ",
          MetricTypeName(entry.type), ", not a ", MetricTypeName(T::kType)));
    }
    if (entry.help != help) {
      return absl::AlreadyExistsError(
          absl::StrCat("metric ", std::string(name),
                       " is already registered with different help text"));
    }
    // Safe: the type tag matched, and Family<T> is the only class with it.
    return static_cast<Family<T>*>(entry.family.get());
  }

  // Adds a collector whose samples are produced at scrape time. The
  // registry holds it weakly: when the owner drops its shared_ptr the
  // collector disappears from scrapes, so no explicit removal is needed.
  void AddCollectable(std::weak_ptr<const Collectable> collectable);

  // Every non-empty family, sorted by name. Collectables added with
  // AddCollectable() run first, so one of them may refresh gauges of this
  // registry just before they are read (TidepoolMetrics' scrape callback
  // does that). Families of the same name and type from different sources
  // are merged; a same-name family of another type is dropped, as two
  // TYPE lines for one name would make the whole scrape invalid.
  std::vector<MetricFamily> Collect() const override;

 private:
  struct Entry {
    MetricType type;
    std::string help;
    std::unique_ptr<Collectable> family;
  };

  mutable absl::Mutex mu_;
  // Families are never removed, so pointers to them stay valid and
  // Collect() can read them after dropping mu_.
  std::map<std::string, Entry, std::less<>> families_ ABSL_GUARDED_BY(mu_);
  mutable std::vector<std::weak_ptr<const Collectable>> collectables_
      ABSL_GUARDED_BY(mu_);
};

// BuildCounter().Name(...).Help(...).Register(registry), as in
// prometheus-cpp. Register() aborts on a bad or conflicting name (a bug;
// see internal::DieBecause); TryRegister() returns the error instead.
template <typename T>
class Builder {
 public:
  Builder& Name(std::string_view name) {
    name_ = name;
    return *this;
  }
  Builder& Help(std::string_view help) {
    help_ = help;
    return *this;
  }
  absl::StatusOr<Family<T>*> TryRegister(Registry& registry) const {
    return registry.TryAddFamily<T>(name_, help_);
  }
  Family<T>& Register(Registry& registry) const {
    absl::StatusOr<Family<T>*> family = TryRegister(registry);
    if (!family.ok()) internal::DieBecause(family.status());
    return **family;
  }

 private:
  std::string name_;
  std::string help_;
};

inline Builder<Counter> BuildCounter() { return {}; }
inline Builder<Gauge> BuildGauge() { return {}; }
inline Builder<Histogram> BuildHistogram() { return {}; }

}  // namespace tidepool::metrics
