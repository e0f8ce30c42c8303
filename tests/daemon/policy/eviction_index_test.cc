#include "daemon/policy/eviction_index.h"

#include <map>
#include <random>
#include <vector>

#include "daemon/policy/eviction_policy.h"
#include "gtest/gtest.h"

namespace tidepool {
namespace {

TEST(EvictionIndexTest, OldestFirstThenCleanThenLowestId) {
  EvictionIndex index;
  index.Set(7, /*last_use_tick=*/5, /*dirty=*/true);
  index.Set(3, 9, false);
  index.Set(9, 5, false);
  index.Set(4, 5, false);
  EXPECT_EQ(index.First(), 4u);  // tick 5, clean, lowest id
  index.Erase(4);
  EXPECT_EQ(index.First(), 9u);
  index.Set(9, 10, false);  // used again: now the newest
  EXPECT_EQ(index.First(), 7u);
  EXPECT_EQ(index.First([](uint64_t c) { return c == 7; }), 3u);
  EXPECT_EQ(index.size(), 3u);
  index.Erase(12345);  // not a candidate: nothing happens
  EXPECT_EQ(index.size(), 3u);
  std::vector<uint64_t> order;
  index.ForEach([&](uint64_t chunk, uint64_t, bool) {
    order.push_back(chunk);
    return true;
  });
  EXPECT_EQ(order, (std::vector<uint64_t>{7, 3, 9}));
  EXPECT_FALSE(index.First([](uint64_t) { return true; }).has_value());
}

// The index must pick what the linear LRU rule picks from the same
// candidates, whatever happened to them before.
TEST(EvictionIndexTest, PicksWhatTheLinearRulePicksOnRandomWorkloads) {
  for (uint32_t seed = 1; seed <= 20; ++seed) {
    std::mt19937 rng(seed);
    EvictionIndex index;
    std::map<uint64_t, EvictionCandidate> live;  // by chunk id, as scanned
    LruEvictionPolicy rule;
    uint64_t tick = 0;
    for (int step = 0; step < 3000; ++step) {
      const uint64_t chunk = 1 + rng() % 200;
      switch (rng() % 4) {
        case 0:  // acquired: no longer a candidate
          index.Erase(chunk);
          live.erase(chunk);
          break;
        case 1:  // written back or dirtied, same tick
          if (auto it = live.find(chunk); it != live.end()) {
            it->second.dirty = !it->second.dirty;
            index.Set(chunk, it->second.last_use_tick, it->second.dirty);
          }
          break;
        default: {  // released (ticks repeat: one release of many chunks)
          if (rng() % 3 != 0) ++tick;
          const bool dirty = rng() % 2 == 0;
          live[chunk] = EvictionCandidate{.chunk_id = chunk,
                                          .session_id = 1,
                                          .bytes = 1,
                                          .dirty = dirty,
                                          .last_use_tick = tick};
          index.Set(chunk, tick, dirty);
        }
      }
      ASSERT_EQ(index.size(), live.size());
      if (live.empty()) {
        EXPECT_FALSE(index.First().has_value());
        continue;
      }
      std::vector<EvictionCandidate> candidates;
      for (const auto& [id, c] : live) candidates.push_back(c);
      const uint64_t expected =
          candidates[rule.ChooseVictim(candidates)].chunk_id;
      ASSERT_EQ(index.First(), expected) << "seed " << seed << " step " << step;
    }
  }
}

}  // namespace
}  // namespace tidepool
