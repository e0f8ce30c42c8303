// The device-resident chunks that may be evicted now, kept in the order the
// least-recently-used rule (LruEvictionPolicy) would pick them: oldest use
// first, then the clean one (evicting it moves no bytes), then the lowest
// chunk id. Every update and every pick is O(log n), so that making room
// costs the same with ten chunks as with a hundred thousand.
//
// The memory manager keeps one per session and updates it whenever one of
// the session's chunks changes residency, use count, last use or
// dirtiness; a session's requests touch no other session's index. When
// the pool is full, the device's victim is the least of its sessions'
// first entries (Entry's order is the rule's), so the pick is the one a
// single index of the whole device would make, at O(sessions x log n).
//
//   EvictionIndex index;
//   index.Set(chunk_id, last_use_tick, dirty);   // it may go
//   index.Erase(chunk_id);                       // it may not (COMPUTE, gone)
//   std::optional<uint64_t> victim = index.First(is_pinned);
//   std::optional<EvictionIndex::Entry> first = index.FirstEntry(is_pinned);
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <set>
#include <tuple>
#include <utility>

#include "absl/container/flat_hash_map.h"

namespace tidepool {

class EvictionIndex {
 public:
  // A candidate and its key; `<` is the LRU rule's order, across indexes
  // too.
  struct Entry {
    uint64_t chunk = 0;
    uint64_t last_use_tick = 0;
    bool dirty = false;
    friend bool operator<(const Entry& a, const Entry& b) {
      return std::tie(a.last_use_tick, a.dirty, a.chunk) <
             std::tie(b.last_use_tick, b.dirty, b.chunk);
    }
  };

  // Makes `chunk` a candidate with these attributes (or updates it).
  void Set(uint64_t chunk, uint64_t last_use_tick, bool dirty);
  // Removes `chunk` if it is a candidate.
  void Erase(uint64_t chunk);

  // The first candidate in LRU order for which `skip` is false (skip may be
  // null); nullopt when there is none. Costs O(log n + skipped).
  std::optional<uint64_t> First(
      const std::function<bool(uint64_t)>& skip = nullptr) const;
  // The same candidate with its key.
  std::optional<Entry> FirstEntry(
      const std::function<bool(uint64_t)>& skip = nullptr) const;

  // Calls `visit(chunk, last_use_tick, dirty)` for every candidate in LRU
  // order until it returns false.
  void ForEach(
      const std::function<bool(uint64_t, uint64_t, bool)>& visit) const;

  // The candidate's (last_use_tick, dirty); nullopt if it is none.
  std::optional<std::pair<uint64_t, bool>> Find(uint64_t chunk) const {
    auto it = keys_.find(chunk);
    if (it == keys_.end()) return std::nullopt;
    return std::make_pair(std::get<0>(it->second), std::get<1>(it->second));
  }
  bool Contains(uint64_t chunk) const { return keys_.contains(chunk); }
  size_t size() const { return keys_.size(); }
  bool empty() const { return keys_.empty(); }

 private:
  // (last_use_tick, dirty, chunk id): std::set's order is the LRU rule.
  using Key = std::tuple<uint64_t, bool, uint64_t>;
  std::set<Key> order_;
  absl::flat_hash_map<uint64_t, Key> keys_;
};

}  // namespace tidepool
