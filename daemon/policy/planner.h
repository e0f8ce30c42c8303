// The `auto` policy's planner: from one recorded step (a Trace) it builds
// a Plan that knows, for every op, the next use of every chunk (the step
// repeats, so uses wrap around into the next step) and how many bytes of
// model data the device can hold while that op runs. Everything here is
// pure (no locks, no I/O) so that it is unit-testable and usable offline:
//
//   Plan plan(trace, {.pool_capacity = cap, .margin_ratio = 0.05});
//   uint64_t d = plan.NextUse(chunk, pos, /*include_current=*/false);
//   size_t v = BeladyVictim(plan, pos, candidates, still_needed);
//   auto actions = PlanPrefetch(plan, {.pos = pos, .resident = ...});
//   OfflineResult best = SimulateOffline(plan, {.steps = 3});
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "absl/strings/string_view.h"
#include "daemon/policy/eviction_policy.h"
#include "daemon/policy/trace.h"

namespace tidepool {

inline constexpr uint64_t kNeverUsed = ~0ull;

// The model bytes a device may hold given `room` (capacity less non-model
// bytes) and a safety `margin`, where chunks take room in units of `slot`
// bytes (the session's largest chunk, rounded): the margin never costs
// more whole chunks than it asks bytes for, i.e. at most
// floor(margin / slot) of them. Plain room - margin would: 5 % of a 4 MiB
// pool of 2 MiB chunks leaves 3.8 MiB, one chunk instead of two, a
// margin of 0.2 MiB costing 2 MiB. So the budget is the larger of room -
// margin and the room in whole slots less the margin in whole slots.
uint64_t MarginBudget(uint64_t room, uint64_t margin, uint64_t slot);

struct PlanOptions {
  // The daemon's device pool for this session (bytes).
  uint64_t pool_capacity = 0;
  // Safety margin, a fraction of the measured device capacity, kept free
  // of model data (like Gemini's gpu_margin_mem_ratio).
  double margin_ratio = 0.05;
  // Device allocation granularity: chunk bytes are rounded up to it.
  uint64_t granularity = 1;
  // Gemini-like budgets (comparison only): capacity is this fixed fraction
  // of the pool, minus the op's non-model bytes; no measured headroom and
  // no margin. 0: measured headroom (the default).
  double fixed_capacity_ratio = 0;
  // Bytes of each op's budget that demand loads leave free for prefetch,
  // so that the next op's chunks can stream in while this op computes even
  // where Belady would have nothing to evict yet (see docs/policy.md).
  uint64_t prefetch_reserve = 0;
  // Placed updates (Trace::placed) may go to the device where their chunks
  // fit beside every op's for the whole step. false: all on the host.
  bool place_updates = true;
  // At most this many placed sets go to the device, taken in
  // `device_set_order`.
  size_t max_device_sets = ~size_t{0};
  // The order in which placed sets are offered the room left beside the
  // ops' chunks (each that fits goes to the device, until
  // max_device_sets):
  // - kLatestFirst: the last recorded first (the updates that end the step
  //   on the CPU's critical path, whose parameters the next forward needs
  //   first);
  // - kChunkOrder: by the first chunk of their own state (chunks not used
  //   by ops), ascending. The registry packs tensors into chunks in
  //   registration order, so sets adjacent in this order share chunks at
  //   their edges, and a run of them shares edges only with the sets just
  //   outside it: a kept chunk that a host update also writes is written
  //   back and loaded again every step. This is the set `static` keeps
  //   (the first registered optimizer chunks).
  enum class DeviceSetOrder { kLatestFirst, kChunkOrder };
  DeviceSetOrder device_set_order = DeviceSetOrder::kLatestFirst;
};

class Plan {
 public:
  Plan(Trace trace, const PlanOptions& options);

  size_t size() const { return trace_.ops.size(); }
  const Trace& trace() const { return trace_; }
  const TraceOp& op(size_t pos) const { return trace_.ops[pos]; }

  // Positions of the ops recorded under `key`, ascending; null if the key
  // was never seen.
  const std::vector<size_t>* Positions(absl::string_view key) const;

  // Distance in ops from `pos` to the next op that touches `chunk`, wrapping
  // into the next step; with `include_current` the op at `pos` itself
  // counts (distance 0). kNeverUsed for a chunk the trace never touched;
  // a kept chunk counts as used by every op, this one included (0: it is
  // evicted last).
  uint64_t NextUse(uint64_t chunk, size_t pos, bool include_current) const;

  // Model bytes (rounded) the device may hold while op `pos` runs:
  // min(pool, measured capacity - non-model bytes of the op) - margin.
  uint64_t Budget(size_t pos) const { return budget_[pos]; }
  // What demand loads and evictions keep to: Budget() less the prefetch
  // reserve (never below the op's own chunks' bytes).
  uint64_t DemandBudget(size_t pos) const { return demand_budget_[pos]; }
  // The smallest budget of the ops pos, pos+1, ..., pos+distance (cyclic):
  // what a chunk loaded now and used `distance` ops later may count on.
  uint64_t WindowBudget(size_t pos, uint64_t distance) const;

  uint64_t Rounded(uint64_t bytes) const;
  // Whether an op of the step touches `chunk`, and how many chunks they
  // touch in all.
  bool UsedByOps(uint64_t chunk) const { return uses_.contains(chunk); }
  size_t op_chunk_count() const { return uses_.size(); }
  // Bytes of a chunk the trace touched (unrounded); 0 if unknown.
  uint64_t ChunkBytes(uint64_t chunk) const;
  // The measured capacity the budgets derive from.
  uint64_t measured_capacity() const { return measured_capacity_; }

  // Placed updates. The plan puts a recorded set on the device when every
  // op's chunks fit the smallest demand budget and the set's other chunks
  // fit beside them (in PlanOptions::device_set_order): such chunks are
  // kept on the device for good (the optimizer state of GPU Adam). The
  // rest update in their host homes (CPU Adam), which drops the device
  // copy of what they write right after its last op in the step. Unknown
  // sets: host.
  bool PlacedOnDevice(std::span<const uint64_t> chunks) const;
  // A recorded set of op chunks only: it runs wherever they are then (on
  // the device if all have a device copy), since it needs no room.
  bool PlacedWhereResident(std::span<const uint64_t> chunks) const;
  bool Kept(uint64_t chunk) const { return kept_.contains(chunk); }
  const std::unordered_set<uint64_t>& kept() const { return kept_; }
  uint64_t kept_bytes() const { return kept_bytes_; }
  size_t placed_on_device() const { return placed_on_device_; }
  // Chunks whose device copy a host update drops after op `pos`.
  const std::vector<uint64_t>& DropsAfter(size_t pos) const {
    return drops_after_[pos];
  }
  // Per chunk, how many host-placed acquires write it each step.
  const std::unordered_map<uint64_t, int>& host_writes() const {
    return host_writes_;
  }
  // Per chunk, how many device-placed acquires write it each step.
  const std::unordered_map<uint64_t, int>& device_writes() const {
    return device_writes_;
  }

 private:
  void PlaceUpdates();

  Trace trace_;
  PlanOptions options_;
  std::map<std::string, std::vector<size_t>, std::less<>> positions_;
  std::unordered_map<uint64_t, std::vector<size_t>> uses_;
  std::vector<uint64_t> budget_;
  std::vector<uint64_t> demand_budget_;
  uint64_t measured_capacity_ = 0;
  enum class Place { kDevice, kHost, kWhereResident };
  std::map<std::vector<uint64_t>, Place> placed_;  // recorded set -> place
  std::unordered_set<uint64_t> kept_;
  uint64_t kept_bytes_ = 0;
  size_t placed_on_device_ = 0;
  std::vector<std::vector<uint64_t>> drops_after_;
  std::unordered_map<uint64_t, int> host_writes_;
  std::unordered_map<uint64_t, int> device_writes_;
};

// Belady's choice among `candidates` (never empty) at op `pos`: the chunk
// whose next use is furthest away; on a tie the clean one (evicting it
// moves no bytes), then the least recently used, then the lowest id.
// `still_needed(chunk)`: the op at `pos` has yet to acquire it (its next
// use is then `pos` itself).
size_t BeladyVictim(const Plan& plan, size_t pos,
                    std::span<const EvictionCandidate> candidates,
                    const std::function<bool(uint64_t)>& still_needed);

// One device-resident chunk of the session, as the prefetcher sees it.
struct ResidentChunk {
  uint64_t chunk = 0;
  uint64_t bytes = 0;  // rounded, as counted against the budget
  bool dirty = false;
  bool evictable = true;  // not COMPUTE, not pinned
  uint64_t last_use_tick = 0;
};

struct PrefetchInput {
  size_t pos = 0;                       // the op being served
  std::vector<ResidentChunk> resident;  // all of the session's, on device
  uint64_t resident_bytes = 0;          // their rounded sum
  std::function<bool(uint64_t)> still_needed;  // see BeladyVictim
  // A host update has yet to take this chunk (it would drop the copy): its
  // room is held for it, but it is not loaded now.
  std::function<bool(uint64_t)> awaits_host_update;
  size_t max_lookahead = 0;  // ops to look ahead; 0: a whole step
  size_t max_actions = 64;
};

// Load `chunk` now, after evicting `victims` (in order).
struct PrefetchAction {
  uint64_t chunk = 0;
  std::vector<uint64_t> victims;
};

// Loads to start now, in the order their chunks are needed. A chunk needed
// at op j (distance d from pos) is loaded now only if it fits the window
// budget of ops pos..j (Budget for the current and next op, DemandBudget
// beyond), evicting what Belady would evict at j: while it does
// not fit, the resident chunk whose next use after j is furthest goes, and
// the scan stops as soon as that chunk is still needed before j (it cannot
// leave yet) or nothing is left to evict. So prefetching moves the same
// bytes as demand Belady, only earlier.
std::vector<PrefetchAction> PlanPrefetch(const Plan& plan,
                                         const PrefetchInput& input);

// Offline simulation of one policy over `steps` repetitions of the plan's
// step, starting from an empty device; counts only steps >= measure_from.
enum class OfflineVictim { kBelady, kLru };
struct OfflineOptions {
  int steps = 3;
  int measure_from = 2;
  OfflineVictim victim = OfflineVictim::kBelady;
  bool clean_drop = true;      // false: every eviction writes back
  bool demand_budget = false;  // keep to DemandBudget() instead of Budget()
};
struct OfflineResult {
  uint64_t bytes_to_device = 0;
  uint64_t bytes_to_host = 0;
  uint64_t loads = 0;
  uint64_t evictions = 0;
  uint64_t clean_evictions = 0;
  // Chunks evicted, in order, over the measured steps.
  std::vector<uint64_t> victims;
  // Bytes loaded for an op by evicting a chunk the op before it used: the
  // prefetcher cannot start such a load while that op computes (its chunk
  // is COMPUTE), so it stalls the op. What a prefetch reserve buys back.
  uint64_t blocked_bytes = 0;

  uint64_t moved() const { return bytes_to_device + bytes_to_host; }
};
OfflineResult SimulateOffline(const Plan& plan, const OfflineOptions& options);

// The plan `auto` follows for `trace`, its options chosen by replaying the
// step offline (SimulateOffline, as the manager serves it: demand loads
// within DemandBudget) so that no choice costs more than it buys:
// - the prefetch reserve (`reserve_candidate`, the largest chunk) is taken
//   only if the bytes it adds are fewer than the bytes whose loads it
//   unblocks (OfflineResult::blocked_bytes without it: each streams into
//   the reserve during the op before instead), and if the step then moves
//   no more than LRU on the same trace and budget;
// - the device sets: every prefix of each order (PlanOptions::
//   DeviceSetOrder) of the sets the room allows on the device, none
//   included, is replayed, and the plan that moves the fewest bytes is
//   taken (on a tie, the one with more device sets: GPU Adam is faster
//   and keeps state off the link; then latest first). Bytes are not
//   monotone in the number of sets: a kept chunk that a host update also
//   writes (a set's state sharing a chunk with a host-placed neighbour's)
//   moves twice every step, and kept chunks take room the ops' chunks
//   could use. The plan moves no more than any candidate, all-host
//   (`cpu`-like) among them, as far as the replay matches the daemon;
//   kChunkOrder's prefixes are the sets `static` places on the device
//   (the first registered state) where they fit auto's room.
// `base` gives capacity, margin, granularity and whether to place updates.
struct PlanChoice {
  PlanOptions options;
  OfflineResult chosen;  // the chosen plan, replayed
  OfflineResult lru;     // LRU on the same trace, budgets, updates on host
  uint64_t blocked_without_reserve = 0;
  size_t device_sets_allowed = 0;  // latest first, before the byte check
  OfflineResult no_device_sets;    // every update on the host, replayed
  size_t candidates = 0;           // plans replayed for the device sets
};
// A proven lower bound on the bytes any placement policy moves over
// `steps` repetitions of `trace`'s ops, starting from any device contents
// (given for free), if at every op t it keeps the session's resident model
// bytes (rounded to `granularity`) within max(budget[t], the op's own
// chunks) and if the chunks in `dropped` lose their device copy between
// their last use in a step and their first use in the next (host updates
// write them). Host->device: every use of a chunk not kept resident since
// its previous use loads it; keeping a chunk across a gap occupies its
// slots at every op in between. The fractional relaxation of "which gaps
// to keep" (an interval packing with unit profit per byte) is solved
// exactly by taking gaps in order of their end, each as far as the
// capacity left allows; the rounded bytes it keeps bound the real bytes
// saved from above, so the loads it leaves bound every policy's from
// below. Device->host: a dropped chunk that an op writes is written back
// once a step (the device copy is the newer one when the update takes
// it); other write-backs are not counted, so this too is a lower bound.
struct ByteBound {
  uint64_t to_device = 0;
  uint64_t to_host = 0;
  uint64_t total() const { return to_device + to_host; }
};
ByteBound LowerBoundBytes(const Trace& trace, std::span<const uint64_t> budget,
                          uint64_t granularity,
                          const std::unordered_set<uint64_t>& dropped,
                          int steps);

PlanChoice ChoosePlanOptions(const Trace& trace, PlanOptions base,
                             uint64_t reserve_candidate);

}  // namespace tidepool
