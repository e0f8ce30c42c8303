#include "daemon/policy/eviction_index.h"

namespace tidepool {

void EvictionIndex::Set(uint64_t chunk, uint64_t last_use_tick, bool dirty) {
  const Key key{last_use_tick, dirty, chunk};
  auto [it, inserted] = keys_.try_emplace(chunk, key);
  if (!inserted) {
    if (it->second == key) return;
    order_.erase(it->second);
    it->second = key;
  }
  order_.insert(key);
}

void EvictionIndex::Erase(uint64_t chunk) {
  auto it = keys_.find(chunk);
  if (it == keys_.end()) return;
  order_.erase(it->second);
  keys_.erase(it);
}

std::optional<uint64_t> EvictionIndex::First(
    const std::function<bool(uint64_t)>& skip) const {
  const std::optional<Entry> first = FirstEntry(skip);
  if (!first) return std::nullopt;
  return first->chunk;
}

std::optional<EvictionIndex::Entry> EvictionIndex::FirstEntry(
    const std::function<bool(uint64_t)>& skip) const {
  for (const auto& [tick, dirty, chunk] : order_) {
    if (!skip || !skip(chunk)) return Entry{chunk, tick, dirty};
  }
  return std::nullopt;
}

void EvictionIndex::ForEach(
    const std::function<bool(uint64_t, uint64_t, bool)>& visit) const {
  for (const auto& [tick, dirty, chunk] : order_) {
    if (!visit(chunk, tick, dirty)) return;
  }
}

}  // namespace tidepool
