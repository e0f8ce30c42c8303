#include "daemon/policy/planner.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <unordered_set>

namespace tidepool {
namespace {

uint64_t SatSub(uint64_t a, uint64_t b) { return a > b ? a - b : 0; }
uint64_t SatAdd(uint64_t a, uint64_t b) {
  return a > std::numeric_limits<uint64_t>::max() - b
             ? std::numeric_limits<uint64_t>::max()
             : a + b;
}
uint64_t Fraction(double ratio, uint64_t bytes) {
  if (!(ratio > 0)) return 0;  // also NaN
  if (ratio >= 1) return bytes;
  return static_cast<uint64_t>(ratio * static_cast<double>(bytes));
}

// Whether candidate a is a better victim than b under Belady's rule.
bool BeladyBetter(uint64_t da, const EvictionCandidate& a, uint64_t db,
                  const EvictionCandidate& b) {
  if (da != db) return da > db;
  if (a.dirty != b.dirty) return !a.dirty;
  if (a.last_use_tick != b.last_use_tick) {
    return a.last_use_tick < b.last_use_tick;
  }
  return a.chunk_id < b.chunk_id;
}

}  // namespace

Plan::Plan(Trace trace, const PlanOptions& options)
    : trace_(std::move(trace)), options_(options) {
  if (options_.granularity == 0) options_.granularity = 1;
  const size_t n = trace_.ops.size();
  for (size_t i = 0; i < n; ++i) {
    positions_[trace_.ops[i].key].push_back(i);
    for (uint64_t c : trace_.ops[i].chunks) uses_[c].push_back(i);
  }
  uint64_t outside = std::numeric_limits<uint64_t>::max();
  for (const auto& op : trace_.ops)
    outside = std::min(outside, op.outside_bytes);
  if (n == 0) outside = 0;
  measured_capacity_ = SatAdd(options_.pool_capacity, outside);
  budget_.resize(n);
  for (size_t i = 0; i < n; ++i) {
    const uint64_t non_model = trace_.ops[i].non_model_bytes;
    if (options_.fixed_capacity_ratio > 0) {
      budget_[i] = SatSub(
          Fraction(options_.fixed_capacity_ratio, options_.pool_capacity),
          non_model);
    } else {
      budget_[i] = SatSub(std::min(options_.pool_capacity,
                                   SatSub(measured_capacity_, non_model)),
                          Fraction(options_.margin_ratio, measured_capacity_));
    }
  }
  demand_budget_.resize(n);
  for (size_t i = 0; i < n; ++i) {
    uint64_t own = 0;
    for (uint64_t c : trace_.ops[i].chunks) own += Rounded(ChunkBytes(c));
    demand_budget_[i] = std::max(std::min(own, budget_[i]),
                                 SatSub(budget_[i], options_.prefetch_reserve));
  }
  PlaceUpdates();
}

void Plan::PlaceUpdates() {
  const size_t n = trace_.ops.size();
  drops_after_.assign(n, {});
  std::unordered_set<uint64_t> op_chunks;
  uint64_t op_bytes = 0;
  for (const auto& op : trace_.ops) {
    for (uint64_t c : op.chunks) {
      if (op_chunks.insert(c).second) op_bytes += Rounded(ChunkBytes(c));
    }
  }
  uint64_t room = 0;
  if (n > 0) {
    room = *std::min_element(demand_budget_.begin(), demand_budget_.end());
  }
  // Parameters first: an op byte is used several times a step, an update's
  // state once. Where the ops' chunks do not all fit, every update stays on
  // the host, where its state never crosses the link.
  const bool place = options_.place_updates && op_bytes <= room;
  room = SatSub(room, op_bytes);
  // Latest first: the updates that come last in a step (the first layers'
  // after backward) end the step on the CPU's critical path, and theirs
  // are the parameters the next forward needs first.
  for (auto it = trace_.placed.rbegin(); it != trace_.placed.rend(); ++it) {
    const PlacedSet& set = *it;
    // A set of op chunks only (reading a gradient, writing parameters)
    // needs no room of its own: it runs wherever those chunks are then.
    if (std::all_of(set.chunks.begin(), set.chunks.end(),
                    [&](uint64_t c) { return op_chunks.contains(c); })) {
      placed_[set.chunks] = Place::kWhereResident;
      continue;
    }
    bool on_device = false;
    if (place) {
      uint64_t extra = 0;
      for (uint64_t c : set.chunks) {
        if (!op_chunks.contains(c) && !kept_.contains(c)) {
          extra += Rounded(ChunkBytes(c));
        }
      }
      if (extra <= room) {
        room -= extra;
        on_device = true;
        ++placed_on_device_;
        for (uint64_t c : set.chunks) {
          if (!op_chunks.contains(c) && kept_.insert(c).second) {
            kept_bytes_ += Rounded(ChunkBytes(c));
          }
        }
      }
    }
    placed_[set.chunks] = on_device ? Place::kDevice : Place::kHost;
  }
  std::unordered_set<uint64_t> dropped;
  for (const PlacedSet& set : trace_.placed) {
    if (placed_.at(set.chunks) != Place::kHost) continue;
    for (uint64_t c : set.written) {
      host_writes_[c] += std::max(set.writes, 1);
      auto it = uses_.find(c);
      if (it == uses_.end() || it->second.empty()) continue;
      if (dropped.insert(c).second)
        drops_after_[it->second.back()].push_back(c);
    }
  }
}

namespace {
std::vector<uint64_t> SetKey(std::span<const uint64_t> chunks) {
  std::vector<uint64_t> key(chunks.begin(), chunks.end());
  std::sort(key.begin(), key.end());
  key.erase(std::unique(key.begin(), key.end()), key.end());
  return key;
}
}  // namespace

bool Plan::PlacedOnDevice(std::span<const uint64_t> chunks) const {
  auto it = placed_.find(SetKey(chunks));
  return it != placed_.end() && it->second == Place::kDevice;
}

bool Plan::PlacedWhereResident(std::span<const uint64_t> chunks) const {
  auto it = placed_.find(SetKey(chunks));
  return it != placed_.end() && it->second == Place::kWhereResident;
}

const std::vector<size_t>* Plan::Positions(absl::string_view key) const {
  auto it = positions_.find(key);
  return it == positions_.end() ? nullptr : &it->second;
}

uint64_t Plan::NextUse(uint64_t chunk, size_t pos, bool include_current) const {
  if (kept_.contains(chunk)) return 0;  // needed all the time
  auto it = uses_.find(chunk);
  if (it == uses_.end() || it->second.empty()) return kNeverUsed;
  const auto& uses = it->second;
  const size_t from = include_current ? pos : pos + 1;
  auto next = std::lower_bound(uses.begin(), uses.end(), from);
  if (next != uses.end()) return *next - pos;
  return uses.front() + size() - pos;  // wraps into the next step
}

uint64_t Plan::WindowBudget(size_t pos, uint64_t distance) const {
  const size_t n = size();
  if (n == 0) return 0;
  uint64_t b = std::numeric_limits<uint64_t>::max();
  const uint64_t span = std::min<uint64_t>(distance, n - 1);
  for (uint64_t k = 0; k <= span; ++k) b = std::min(b, budget_[(pos + k) % n]);
  return b;
}

uint64_t Plan::Rounded(uint64_t bytes) const {
  const uint64_t g = options_.granularity;
  return (bytes + g - 1) / g * g;
}

uint64_t Plan::ChunkBytes(uint64_t chunk) const {
  auto it = trace_.chunk_bytes.find(chunk);
  return it == trace_.chunk_bytes.end() ? 0 : it->second;
}

size_t BeladyVictim(const Plan& plan, size_t pos,
                    std::span<const EvictionCandidate> candidates,
                    const std::function<bool(uint64_t)>& still_needed) {
  auto distance = [&](const EvictionCandidate& c) {
    return plan.NextUse(c.chunk_id, pos,
                        still_needed && still_needed(c.chunk_id));
  };
  size_t best = 0;
  uint64_t best_d = distance(candidates[0]);
  for (size_t i = 1; i < candidates.size(); ++i) {
    const uint64_t d = distance(candidates[i]);
    if (BeladyBetter(d, candidates[i], best_d, candidates[best])) {
      best = i;
      best_d = d;
    }
  }
  return best;
}

std::vector<PrefetchAction> PlanPrefetch(const Plan& plan,
                                         const PrefetchInput& input) {
  std::vector<PrefetchAction> actions;
  const size_t n = plan.size();
  if (n == 0 || input.pos >= n) return actions;
  struct Entry {
    ResidentChunk r;
    uint64_t next;  // distance from pos to its next use
  };
  std::unordered_map<uint64_t, Entry> resident;
  for (const auto& r : input.resident) {
    const bool needed = input.still_needed && input.still_needed(r.chunk);
    resident[r.chunk] = Entry{r, plan.NextUse(r.chunk, input.pos, needed)};
  }
  uint64_t used = input.resident_bytes;
  const size_t lookahead =
      input.max_lookahead == 0 ? n - 1 : std::min(input.max_lookahead, n - 1);
  // The prefetch reserve (Budget - DemandBudget) is for the current and the
  // next op only: chunks needed later must fit the demand budget, or the
  // next op's limit would evict them again before their use.
  uint64_t full = std::numeric_limits<uint64_t>::max();
  uint64_t demand = std::numeric_limits<uint64_t>::max();
  for (size_t d = 0; d <= lookahead; ++d) {
    const size_t j = (input.pos + d) % n;
    full = std::min(full, plan.Budget(j));
    demand = std::min(demand, plan.DemandBudget(j));
    const uint64_t window = d <= 1 ? full : demand;
    for (uint64_t c : plan.op(j).chunks) {
      if (resident.contains(c)) continue;
      const uint64_t need = plan.Rounded(plan.ChunkBytes(c));
      if (input.awaits_host_update && input.awaits_host_update(c)) {
        // Hold its room so that later chunks do not take it; load later.
        if (used + need > window) return actions;
        used += need;
        resident[c] = Entry{ResidentChunk{.chunk = c, .bytes = need}, d};
        continue;
      }
      PrefetchAction action{.chunk = c};
      uint64_t freed = 0;
      while (used - freed + need > window) {
        // Belady at op j: among what will be resident then, the chunk whose
        // next use after j is furthest. One that is used before j stays
        // resident until then, so the decision has to wait.
        const Entry* best = nullptr;
        uint64_t best_after = 0;
        for (const auto& [id, e] : resident) {
          if (std::find(action.victims.begin(), action.victims.end(), id) !=
              action.victims.end()) {
            continue;
          }
          if (e.next == d) continue;  // op j needs it
          if (e.next < d && plan.trace().Touches(j, id)) continue;
          const uint64_t after =
              e.next > d ? e.next : d + plan.NextUse(id, j, false);
          const EvictionCandidate ca{id, 0, e.r.bytes, e.r.dirty,
                                     e.r.last_use_tick};
          if (best == nullptr ||
              BeladyBetter(
                  after, ca, best_after,
                  EvictionCandidate{best->r.chunk, 0, best->r.bytes,
                                    best->r.dirty, best->r.last_use_tick})) {
            best = &e;
            best_after = after;
          }
        }
        if (best == nullptr || best->next < d || !best->r.evictable) {
          return actions;
        }
        action.victims.push_back(best->r.chunk);
        freed += best->r.bytes;
      }
      for (uint64_t v : action.victims) resident.erase(v);
      used = used - freed + need;
      resident[c] = Entry{ResidentChunk{.chunk = c, .bytes = need}, d};
      actions.push_back(std::move(action));
      if (actions.size() >= input.max_actions) return actions;
    }
  }
  return actions;
}

OfflineResult SimulateOffline(const Plan& plan, const OfflineOptions& options) {
  OfflineResult out;
  struct State {
    bool dirty = false;
    uint64_t tick = 0;
  };
  std::unordered_map<uint64_t, State> resident;
  uint64_t used = 0;
  uint64_t tick = 0;
  const size_t n = plan.size();
  // Kept chunks are loaded once and stay (the first step is never measured
  // unless measure_from is 0).
  for (uint64_t c : plan.kept()) {
    resident[c] = State{};
    used += plan.Rounded(plan.ChunkBytes(c));
    if (options.measure_from == 0) {
      ++out.loads;
      out.bytes_to_device += plan.ChunkBytes(c);
    }
  }
  for (int step = 0; step < options.steps; ++step) {
    const bool measure = step >= options.measure_from;
    // A kept chunk that a host update also writes (a chunk shared by a
    // device and a host update) is written back and dropped by the host
    // update and loaded again by the device one, once a step, whatever
    // the eviction order: forced traffic, not a choice.
    if (measure) {
      for (uint64_t c : plan.kept()) {
        if (!plan.host_writes().contains(c)) continue;
        out.bytes_to_host += plan.ChunkBytes(c);
        out.bytes_to_device += plan.ChunkBytes(c);
      }
    }
    for (size_t pos = 0; pos < n; ++pos) {
      const TraceOp& op = plan.op(pos);
      const uint64_t budget =
          options.demand_budget ? plan.DemandBudget(pos) : plan.Budget(pos);
      auto in_op = [&](uint64_t c) {
        return std::find(op.chunks.begin(), op.chunks.end(), c) !=
               op.chunks.end();
      };
      // Evicts one chunk that the op does not use; false if none is left.
      auto evict_one = [&]() {
        std::vector<EvictionCandidate> cands;
        for (const auto& [id, s] : resident) {
          if (!in_op(id)) {
            cands.push_back({id, 0, plan.ChunkBytes(id), s.dirty, s.tick});
          }
        }
        if (cands.empty()) return false;
        size_t v = 0;
        if (options.victim == OfflineVictim::kBelady) {
          v = BeladyVictim(plan, pos, cands, nullptr);
        } else {
          for (size_t i = 1; i < cands.size(); ++i) {
            const auto& a = cands[i];
            const auto& b = cands[v];
            if (a.last_use_tick < b.last_use_tick ||
                (a.last_use_tick == b.last_use_tick &&
                 (a.dirty != b.dirty ? !a.dirty : a.chunk_id < b.chunk_id))) {
              v = i;
            }
          }
        }
        const auto& victim = cands[v];
        const bool write_back = victim.dirty || !options.clean_drop;
        if (measure) {
          ++out.evictions;
          if (write_back) {
            out.bytes_to_host += victim.bytes;
          } else {
            ++out.clean_evictions;
          }
          out.victims.push_back(victim.chunk_id);
        }
        used -= plan.Rounded(victim.bytes);
        resident.erase(victim.chunk_id);
        return true;
      };
      while (used > budget && evict_one()) {
      }
      for (uint64_t c : op.chunks) {
        if (resident.contains(c)) continue;
        const uint64_t need = plan.Rounded(plan.ChunkBytes(c));
        while (used + need > budget && evict_one()) {
        }
        resident[c] = State{};
        used += need;
        if (measure) {
          ++out.loads;
          out.bytes_to_device += plan.ChunkBytes(c);
        }
      }
      ++tick;
      for (uint64_t c : op.chunks) resident[c].tick = tick;
      for (uint64_t c : op.written) resident[c].dirty = true;
      // Host updates take their chunks after the chunks' last op.
      for (uint64_t c : plan.DropsAfter(pos)) {
        auto it = resident.find(c);
        if (it == resident.end()) continue;
        if (measure && it->second.dirty)
          out.bytes_to_host += plan.ChunkBytes(c);
        used -= plan.Rounded(plan.ChunkBytes(c));
        resident.erase(it);
      }
    }
  }
  return out;
}

}  // namespace tidepool
