#include "daemon/metrics/registry.h"

#include <algorithm>
#include <utility>

namespace tidepool::metrics {

void Registry::AddCollectable(std::weak_ptr<const Collectable> collectable) {
  absl::MutexLock lock(&mu_);
  collectables_.push_back(std::move(collectable));
}

std::vector<MetricFamily> Registry::Collect() const {
  // Snapshot the sources under the lock, then collect without it: a
  // collector may call back into this registry (registering a family, or
  // updating a gauge) and must not deadlock.
  std::vector<std::shared_ptr<const Collectable>> collectables;
  std::vector<const Collectable*> families;
  {
    absl::MutexLock lock(&mu_);
    std::erase_if(collectables_,
                  [](const auto& weak) { return weak.expired(); });
    for (const auto& weak : collectables_) {
      if (auto strong = weak.lock()) collectables.push_back(std::move(strong));
    }
  }
  std::vector<MetricFamily> collected;
  for (const auto& collectable : collectables) {
    for (MetricFamily& family : collectable->Collect()) {
      collected.push_back(std::move(family));
    }
  }
  {
    absl::MutexLock lock(&mu_);
    families.reserve(families_.size());
    for (const auto& [name, entry] : families_) {
      families.push_back(entry.family.get());
    }
  }
  // Registered families go first so that, on a name clash, theirs wins.
  std::vector<MetricFamily> result;
  for (const Collectable* family : families) {
    for (MetricFamily& f : family->Collect()) result.push_back(std::move(f));
  }
  for (MetricFamily& f : collected) result.push_back(std::move(f));

  std::stable_sort(result.begin(), result.end(),
                   [](const MetricFamily& a, const MetricFamily& b) {
                     return a.name < b.name;
                   });
  std::vector<MetricFamily> merged;
  for (MetricFamily& family : result) {
    if (family.metrics.empty()) continue;
    if (!merged.empty() && merged.back().name == family.name) {
      if (merged.back().type == family.type) {
        auto& into = merged.back().metrics;
        into.insert(into.end(), std::make_move_iterator(family.metrics.begin()),
                    std::make_move_iterator(family.metrics.end()));
      }
      continue;
    }
    merged.push_back(std::move(family));
  }
  return merged;
}

}  // namespace tidepool::metrics
