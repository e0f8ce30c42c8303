// Chooses which device-resident chunk to evict when room is needed. Policies
// see only movable candidates (no tensor in COMPUTE, not pinned by the
// request being served) and return one of them.
#pragma once

#include <cstdint>
#include <memory>
#include <span>

namespace tidepool {

struct EvictionCandidate {
  uint64_t chunk_id;
  uint64_t session_id;
  uint64_t bytes;
  bool dirty;              // evicting it costs a write-back
  uint64_t last_use_tick;  // when it was last acquired or released
};

class EvictionPolicy {
 public:
  virtual ~EvictionPolicy() = default;
  // Index into `candidates` (never empty) of the chunk to evict.
  virtual size_t ChooseVictim(
      std::span<const EvictionCandidate> candidates) = 0;
};

// Least recently used; among equally old chunks the clean one, which costs
// no transfer.
class LruEvictionPolicy : public EvictionPolicy {
 public:
  size_t ChooseVictim(std::span<const EvictionCandidate> candidates) override {
    size_t best = 0;
    for (size_t i = 1; i < candidates.size(); ++i) {
      const auto& c = candidates[i];
      const auto& b = candidates[best];
      if (c.last_use_tick < b.last_use_tick ||
          (c.last_use_tick == b.last_use_tick && !c.dirty && b.dirty)) {
        best = i;
      }
    }
    return best;
  }
};

}  // namespace tidepool
