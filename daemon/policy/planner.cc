#include "daemon/policy/planner.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <unordered_set>

#include "absl/container/flat_hash_map.h"

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

uint64_t MarginBudget(uint64_t room, uint64_t margin, uint64_t slot) {
  const uint64_t g = std::max<uint64_t>(slot, 1);
  return std::max(SatSub(room, margin), SatSub(room / g * g, margin / g * g));
}

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
  uint64_t slot = 1;
  for (const auto& [c, bytes] : trace_.chunk_bytes) {
    slot = std::max(slot, Rounded(bytes));
  }
  budget_.resize(n);
  for (size_t i = 0; i < n; ++i) {
    const uint64_t non_model = trace_.ops[i].non_model_bytes;
    if (options_.fixed_capacity_ratio > 0) {
      budget_[i] = SatSub(
          Fraction(options_.fixed_capacity_ratio, options_.pool_capacity),
          non_model);
    } else {
      budget_[i] = MarginBudget(
          std::min(options_.pool_capacity,
                   SatSub(measured_capacity_, non_model)),
          Fraction(options_.margin_ratio, measured_capacity_), slot);
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
  // The order the sets are offered the room in (PlanOptions::
  // DeviceSetOrder). Latest first: the updates that come last in a step
  // (the first layers' after backward) end the step on the CPU's critical
  // path, and theirs are the parameters the next forward needs first.
  std::vector<const PlacedSet*> order;
  order.reserve(trace_.placed.size());
  for (auto it = trace_.placed.rbegin(); it != trace_.placed.rend(); ++it) {
    order.push_back(&*it);
  }
  if (options_.device_set_order == PlanOptions::DeviceSetOrder::kChunkOrder) {
    // By the first chunk of a set's own state; sets of op chunks only
    // (no state: they take no room) keep their place at the end.
    auto first_state = [&](const PlacedSet* set) {
      for (uint64_t c : set->chunks) {  // ascending
        if (!op_chunks.contains(c)) return c;
      }
      return std::numeric_limits<uint64_t>::max();
    };
    std::stable_sort(order.begin(), order.end(),
                     [&](const PlacedSet* a, const PlacedSet* b) {
                       return first_state(a) < first_state(b);
                     });
  }
  for (const PlacedSet* it : order) {
    const PlacedSet& set = *it;
    // A set of op chunks only (reading a gradient, writing parameters)
    // needs no room of its own: it runs wherever those chunks are then.
    if (std::all_of(set.chunks.begin(), set.chunks.end(),
                    [&](uint64_t c) { return op_chunks.contains(c); })) {
      placed_[set.chunks] = Place::kWhereResident;
      continue;
    }
    bool on_device = false;
    if (place && placed_on_device_ < options_.max_device_sets) {
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
    if (placed_.at(set.chunks) == Place::kDevice) {
      for (uint64_t c : set.written) {
        device_writes_[c] += std::max(set.writes, 1);
      }
    }
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
  // A chunk's next use is looked up only when a victim is sought: most
  // calls find nothing to load (or stop at the first chunk that does not
  // fit) and need none, so that they cost O(window), not O(resident).
  static constexpr uint64_t kNotYet = kNeverUsed - 1;
  struct Entry {
    ResidentChunk r;
    uint64_t next = kNotYet;  // distance from pos to its next use
  };
  // One allocation, not one per chunk: this runs on every request of a
  // planned session. (The victim's choice does not depend on the order of
  // iteration: BeladyBetter is a total order.)
  absl::flat_hash_map<uint64_t, Entry> resident;
  resident.reserve(input.resident.size() + 16);
  for (const auto& r : input.resident) resident[r.chunk] = Entry{r};
  auto next_use = [&](uint64_t id, Entry& e) {
    if (e.next == kNotYet) {
      const bool needed = input.still_needed && input.still_needed(id);
      e.next = plan.NextUse(id, input.pos, needed);
    }
    return e.next;
  };
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
        for (auto& [id, e] : resident) {
          if (std::find(action.victims.begin(), action.victims.end(), id) !=
              action.victims.end()) {
            continue;
          }
          const uint64_t next = next_use(id, e);
          if (next == d) continue;  // op j needs it
          if (next < d && plan.trace().Touches(j, id)) continue;
          const uint64_t after =
              next > d ? next : d + plan.NextUse(id, j, false);
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
      const std::vector<uint64_t>* prev =
          pos > 0 ? &plan.op(pos - 1).chunks
                  : (step > 0 ? &plan.op(n - 1).chunks : nullptr);
      for (uint64_t c : op.chunks) {
        if (resident.contains(c)) continue;
        const uint64_t need = plan.Rounded(plan.ChunkBytes(c));
        const size_t evicted_before = out.victims.size();
        while (used + need > budget && evict_one()) {
        }
        if (measure && prev != nullptr) {
          for (size_t k = evicted_before; k < out.victims.size(); ++k) {
            if (std::find(prev->begin(), prev->end(), out.victims[k]) !=
                prev->end()) {
              out.blocked_bytes += plan.ChunkBytes(c);
              break;
            }
          }
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

PlanChoice ChoosePlanOptions(const Trace& trace, PlanOptions base,
                             uint64_t reserve_candidate) {
  // Three steps from an empty device, the last one measured: the first
  // loads everything, the second settles what a wrap-around keeps.
  const OfflineOptions served{
      .steps = 3, .measure_from = 2, .demand_budget = true};
  auto replay = [&](const PlanOptions& o) {
    return SimulateOffline(Plan(trace, o), served);
  };
  PlanChoice choice;
  {
    PlanOptions lru = base;
    lru.prefetch_reserve = 0;
    lru.place_updates = false;
    choice.lru = SimulateOffline(
        Plan(trace, lru),
        {.steps = 3, .measure_from = 2, .victim = OfflineVictim::kLru});
  }
  // Reserve or not, each with as many device sets as fit (latest first);
  // then the device sets are chosen with the reserve fixed.
  PlanOptions without = base;
  without.prefetch_reserve = 0;
  const OfflineResult r0 = replay(without);
  choice.blocked_without_reserve = r0.blocked_bytes;
  PlanOptions chosen = without;
  OfflineResult best = r0;
  if (reserve_candidate > 0) {
    PlanOptions with = base;
    with.prefetch_reserve = reserve_candidate;
    const OfflineResult rr = replay(with);
    const uint64_t extra =
        rr.moved() > r0.moved() ? rr.moved() - r0.moved() : 0;
    // With the reserve, a load the previous op's chunk blocked streams
    // into the reserve during that op instead (the reserve holds the
    // largest chunk): it unblocks them all.
    if (extra < r0.blocked_bytes && rr.moved() <= choice.lru.moved()) {
      chosen = with;
      best = rr;
    }
  }
  // Device sets: every prefix of each order the room allows, none
  // included; the fewest bytes win, then the most device sets, then the
  // earlier order (latest first).
  chosen.max_device_sets = 0;
  best = replay(chosen);
  choice.no_device_sets = best;
  choice.candidates = 1;
  size_t best_sets = 0;
  for (const auto order : {PlanOptions::DeviceSetOrder::kLatestFirst,
                           PlanOptions::DeviceSetOrder::kChunkOrder}) {
    PlanOptions o = chosen;
    o.device_set_order = order;
    o.max_device_sets = ~size_t{0};
    const size_t allowed = Plan(trace, o).placed_on_device();
    if (order == PlanOptions::DeviceSetOrder::kLatestFirst) {
      choice.device_sets_allowed = allowed;
    }
    for (size_t k = 1; k <= allowed; ++k) {
      o.max_device_sets = k;
      const OfflineResult r = replay(o);
      ++choice.candidates;
      if (r.moved() < best.moved() ||
          (r.moved() == best.moved() && k > best_sets)) {
        best = r;
        best_sets = k;
        chosen.device_set_order = order;
        chosen.max_device_sets = k;
      }
    }
  }
  choice.options = chosen;
  choice.chosen = best;
  return choice;
}

ByteBound LowerBoundBytes(const Trace& trace, std::span<const uint64_t> budget,
                          uint64_t granularity,
                          const std::unordered_set<uint64_t>& dropped,
                          int steps) {
  ByteBound out;
  const size_t n = trace.ops.size();
  if (n == 0 || steps <= 0 || budget.size() < n) return out;
  const uint64_t g = std::max<uint64_t>(granularity, 1);
  auto rounded = [&](uint64_t b) { return (b + g - 1) / g * g; };
  auto bytes = [&](uint64_t c) {
    auto it = trace.chunk_bytes.find(c);
    return it == trace.chunk_bytes.end() ? uint64_t{0} : it->second;
  };
  const size_t total = n * size_t(steps);
  // Room left at each op once its own chunks are in.
  std::vector<uint64_t> room(total);
  std::map<uint64_t, std::vector<size_t>> uses;
  for (size_t t = 0; t < total; ++t) {
    const TraceOp& op = trace.ops[t % n];
    uint64_t own = 0;
    for (uint64_t c : op.chunks) {
      own += rounded(bytes(c));
      uses[c].push_back(t);
    }
    room[t] = std::max(budget[t % n], own) - own;
  }
  struct Gap {
    size_t first, last;  // the ops it spans, inclusive (first <= last)
    uint64_t slot_bytes;
  };
  std::vector<Gap> gaps;
  uint64_t kept = 0;  // bytes of loads saved, bounded from above
  for (const auto& [c, at] : uses) {
    const bool drop = dropped.contains(c);
    const uint64_t b = bytes(c);
    // Every use loads unless the chunk stays resident since the use before
    // it (or since the start, for the first use).
    out.to_device += b * at.size();
    for (size_t k = 0; k < at.size(); ++k) {
      const size_t from = k == 0 ? 0 : at[k - 1] + 1;
      // The host update of the step before took it.
      if (drop && (k == 0 || at[k - 1] / n != at[k] / n)) continue;
      if (from == at[k]) {
        kept += b;  // no op in between: nothing competes for its slots
      } else {
        gaps.push_back({from, at[k] - 1, rounded(b)});
      }
    }
    if (drop) {
      bool written = false;
      for (const TraceOp& op : trace.ops) {
        written = written || std::find(op.written.begin(), op.written.end(),
                                       c) != op.written.end();
      }
      if (written) out.to_host += b * uint64_t(steps);
    }
  }
  // Earliest end first, each as far as the room left allows: optimal for
  // the relaxation (an exchange argument: the gap that ends first can
  // always take the room of any other gap crossing its bottleneck, which
  // ends no earlier and so covers every op of it from that point on).
  std::stable_sort(gaps.begin(), gaps.end(),
                   [](const Gap& x, const Gap& y) { return x.last < y.last; });
  for (const Gap& gap : gaps) {
    uint64_t y = gap.slot_bytes;
    for (size_t t = gap.first; t <= gap.last; ++t) y = std::min(y, room[t]);
    if (y == 0) continue;
    for (size_t t = gap.first; t <= gap.last; ++t) room[t] -= y;
    kept += y;
  }
  out.to_device = out.to_device > kept ? out.to_device - kept : 0;
  return out;
}

}  // namespace tidepool
