// Per-session placement state of the `auto` and `static` policies (and of
// the comparison planners used only by bench/policy): what the session's
// ops are, where in the recorded step it is, how many bytes of model data
// the device may hold right now, which chunk to evict and what to prefetch.
// The memory manager owns one per session and calls it under its lock; it
// does no I/O and takes no locks itself.
//
//   SessionPlacement p(Policy::kAuto, config, pool_bytes, granularity);
//   bool new_op = p.OnAcquire(&op, outside_bytes_fn, touches);
//   uint64_t limit = p.Limit();             // model bytes allowed now
//   size_t v = p.ChooseVictim(candidates);  // Belady once planned
//   auto actions = p.Prefetch(resident, resident_bytes);
//   p.OnStep();                             // the client marked a step
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
#include "daemon/policy/planner.h"
#include "daemon/policy/trace.h"
#include "tidepool/types.h"

namespace tidepool {

// How an `auto` session plans. kBelady is `auto` proper; the other two
// exist for bench/policy's comparison only.
enum class PlannerKind {
  kBelady,      // op-keyed trace, next-use eviction, clean-first, prefetch
  kGeminiLike,  // position-keyed trace, capacity a fixed fraction of the
                // card, every eviction writes back, no prefetch
  kLru,         // no trace: least recently used, demand loads only
};
absl::string_view PlannerKindName(PlannerKind kind);

struct PlacementConfig {
  // Steps recorded before planning; the last one's trace is the plan.
  uint32_t warmup_steps = 1;
  // Kept free of model data, as a fraction of the measured capacity.
  double margin_ratio = 0.05;
  bool prefetch = true;
  PlannerKind planner = PlannerKind::kBelady;
  size_t lookahead_ops = 0;  // 0: a whole step
  // An op whose non-model bytes differ from the recorded ones by more than
  // this fraction (plus 1 MiB) means a changed shape: fall back, re-record.
  double non_model_tolerance = 0.10;
  // `static`: fractions of parameter chunks (groups param, grad) and of
  // optimizer chunks (master, optim_state) that live on the host; the rest,
  // the first ones in registration order, stay on the device once loaded.
  double static_param_offload = 0.0;
  double static_optim_offload = 1.0;
  // Gemini's constants (kGeminiLike only): steady capacity ratio and the
  // non-model share assumed during warm-up.
  double gemini_capacity_ratio = 0.9;
  double gemini_warmup_non_model_ratio = 0.8;
  // Bounds of a recorded warm-up step (TraceRecorder): ops, and the heap
  // its trace may hold. A step past them is not planned from; the session
  // runs as LRU and records again (PlacementStatsView::last_divergence
  // says so).
  size_t max_trace_ops = 1 << 16;
  size_t max_trace_bytes = 16 << 20;
};

enum class PlacementState {
  kRecording,  // warm-up: recording the step, LRU meanwhile
  kPlanned,    // following the plan
  kFallback,   // the step left the plan: LRU until the step ends, then
               // re-record
};
absl::string_view PlacementStateName(PlacementState state);

// What the client said about the op an acquire belongs to.
struct OpContext {
  std::string key;               // empty: no op given
  uint64_t seq = 0;              // changes with every new op
  uint64_t non_model_bytes = 0;  // the framework's allocated bytes
};

struct PlacementStatsView {
  PlacementState state = PlacementState::kRecording;
  uint64_t plan_ops = 0;        // ops in the current plan
  uint64_t replans = 0;         // re-recordings after a divergence
  uint64_t planned_ops = 0;     // ops served from a plan
  uint64_t unplanned_ops = 0;   // ops served while recording or falling back
  uint64_t steps = 0;           // step marks seen
  std::string last_divergence;  // why the plan was last abandoned
  // Placed acquires (updates) run on each side, and the bytes the plan
  // keeps on the device for the device ones.
  uint64_t updates_on_device = 0;
  uint64_t updates_on_host = 0;
  uint64_t kept_bytes = 0;
  // Known ops out of the recorded order, where the plan resynchronised.
  uint64_t resyncs = 0;
};

class SessionPlacement {
 public:
  SessionPlacement(Policy policy, PlacementConfig config,
                   uint64_t pool_capacity, uint64_t granularity);

  struct Touch {
    uint64_t chunk;
    uint64_t bytes;
    bool write;
  };
  // An acquire of `touches` (the request's chunks). `op` may be null (no op
  // given). `outside_bytes` is called at most once, for a new op: device
  // memory outside the pool the framework can use (0 on sim). Returns
  // whether this acquire started a new op.
  bool OnAcquire(const OpContext* op,
                 const std::function<uint64_t()>& outside_bytes,
                 std::span<const Touch> touches);
  // A placed acquire (Session::AcquireWherePlaced) of `touches`: not an op
  // of the step, only recorded. Returns whether it runs on the device:
  // auto once planned, as the plan places it (Plan::PlacedOnDevice);
  // static when every chunk is kept; Gemini-like never; otherwise where
  // its chunks are now: on the device if `resident` (all of them have a
  // device copy, so nothing moves), else on the host, where optimizer
  // state never crosses the link (the `cpu`-like choice).
  bool OnPlacedAcquire(std::span<const Touch> touches, bool resident);
  // The placed acquire succeeded, on the device or in the host homes.
  void OnPlacedServed(std::span<const Touch> touches, bool on_device);
  // The client marked the end of a training step.
  void OnStep();
  // A chunk of the session was registered (static bookkeeping).
  void OnChunkCreated(uint64_t chunk, Group group, uint64_t bytes);

  // Model bytes (rounded) the session may keep on the device now; a soft
  // limit: demand loads exceed it when nothing else can go.
  uint64_t Limit() const;
  // Index of the victim among the session's own `candidates` (not empty).
  size_t ChooseVictim(std::span<const EvictionCandidate> candidates) const;
  // Evictions of this session always write back (Gemini-like).
  bool force_write_back() const {
    return policy_ == Policy::kAuto &&
           config_.planner == PlannerKind::kGeminiLike;
  }
  // Loads to start now (empty unless planned with prefetch on).
  std::vector<PrefetchAction> Prefetch(std::vector<ResidentChunk> resident,
                                       uint64_t resident_bytes) const;
  // Whether Prefetch could start anything: false when it is off, or when
  // every chunk of the ops it looks ahead at is `resident` (it only loads
  // chunks that are not). O(window), so that a session whose step is all
  // on the device pays nothing more per request.
  bool WantsLoadsAhead(const std::function<bool(uint64_t)>& resident) const;

  // A chunk a host update of this step will still take and no op of the
  // step uses any more: worth writing back now (auto, planned). Not while
  // a device update of the step has yet to write it (a chunk shared by a
  // device and a host update): it would be dirty again, and written back
  // a second time when the host update takes it.
  bool WriteBackAhead(uint64_t chunk) const;

  PlacementStatsView stats() const;
  const Plan* plan() const { return plan_ ? &*plan_ : nullptr; }
  // Changes whenever plan() becomes another plan (1, 2, ...; 0: none yet).
  uint64_t plan_generation() const { return plan_generation_; }
  // Position in the plan of the op being served (planned state only).
  std::optional<size_t> position() const;
  bool kept(uint64_t chunk) const;  // static: stays on the device

 private:
  bool Planned() const {
    return state_ == PlacementState::kPlanned && plan_ && pos_ < plan_->size();
  }
  bool StillNeeded(uint64_t chunk) const;
  void Diverge(std::string why);
  void StartRecording();
  uint64_t HeadroomLimit() const;
  size_t LruVictim(std::span<const EvictionCandidate> candidates) const;
  void RecomputeKept() const;

  static constexpr size_t kNoPos = ~size_t{0};

  const Policy policy_;
  const PlacementConfig config_;
  const uint64_t pool_capacity_;
  const uint64_t granularity_;
  // The session's largest chunk, rounded: the unit its room is used in.
  uint64_t max_chunk_ = 1;

  PlacementState state_ = PlacementState::kRecording;
  TraceRecorder recorder_;
  bool recording_valid_ = true;  // false: an op without a key was seen
  uint32_t recorded_steps_ = 0;
  std::optional<Plan> plan_;
  uint64_t plan_generation_ = 0;
  size_t pos_ = kNoPos;         // op being served in the plan
  size_t gemini_pos_ = kNoPos;  // ops seen this step (position-keyed)
  bool have_op_ = false;
  // Whether this step and the one before resynchronised (ops out of the
  // recorded order): once is an evaluation pass, twice in a row a changed
  // pattern (micro-batches) worth recording.
  bool resynced_in_step_ = false;
  bool resynced_last_step_ = false;
  uint64_t op_seq_ = 0;
  uint64_t non_model_ = 0;
  uint64_t outside_ = 0;
  std::unordered_set<uint64_t> acquired_in_op_;
  // Planned: host updates each chunk still awaits this step.
  std::unordered_map<uint64_t, int> host_writes_pending_;
  // Planned: device updates each chunk still awaits this step.
  std::unordered_map<uint64_t, int> device_writes_pending_;
  PlacementStatsView stats_;

  // static: chunks per group in registration order; kept_ is derived.
  std::map<int, std::vector<std::pair<uint64_t, uint64_t>>> group_chunks_;
  mutable bool kept_stale_ = false;
  mutable std::unordered_set<uint64_t> kept_;
};

}  // namespace tidepool
