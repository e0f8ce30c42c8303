#include "daemon/policy/placement.h"

#include <algorithm>
#include <limits>

#include "absl/strings/str_cat.h"
#include "common/client_text.h"

namespace tidepool {
namespace {

uint64_t SatSub(uint64_t a, uint64_t b) { return a > b ? a - b : 0; }
uint64_t SatAdd(uint64_t a, uint64_t b) {
  return a > std::numeric_limits<uint64_t>::max() - b
             ? std::numeric_limits<uint64_t>::max()
             : a + b;
}
uint64_t Fraction(double ratio, uint64_t bytes) {
  if (!(ratio > 0)) return 0;
  if (ratio >= 1) return bytes;
  return static_cast<uint64_t>(ratio * static_cast<double>(bytes));
}
constexpr uint64_t kMiB = 1 << 20;
// Chunk touches of a recorded step, at most.
constexpr size_t kMaxTouches = 1 << 22;

}  // namespace

absl::string_view PlannerKindName(PlannerKind kind) {
  switch (kind) {
    case PlannerKind::kBelady:
      return "belady";
    case PlannerKind::kGeminiLike:
      return "gemini_like";
    case PlannerKind::kLru:
      return "lru";
  }
  return "unknown";
}

absl::string_view PlacementStateName(PlacementState state) {
  switch (state) {
    case PlacementState::kRecording:
      return "recording";
    case PlacementState::kPlanned:
      return "planned";
    case PlacementState::kFallback:
      return "fallback";
  }
  return "unknown";
}

SessionPlacement::SessionPlacement(Policy policy, PlacementConfig config,
                                   uint64_t pool_capacity, uint64_t granularity)
    : policy_(policy),
      config_(std::move(config)),
      pool_capacity_(pool_capacity),
      granularity_(std::max<uint64_t>(granularity, 1)),
      recorder_(config_.max_trace_ops, kMaxTouches, config_.max_trace_bytes) {
  if (policy_ != Policy::kAuto || config_.planner == PlannerKind::kLru) {
    state_ = PlacementState::kFallback;  // never plans
  }
}

void SessionPlacement::StartRecording() {
  state_ = PlacementState::kRecording;
  recorder_.Reset();
  recording_valid_ = true;
  recorded_steps_ = 0;
}

void SessionPlacement::Diverge(std::string why) {
  if (state_ != PlacementState::kPlanned) return;
  state_ = PlacementState::kFallback;
  stats_.last_divergence = std::move(why);
}

bool SessionPlacement::OnAcquire(const OpContext* op,
                                 const std::function<uint64_t()>& outside_bytes,
                                 std::span<const Touch> touches) {
  const bool keyed = op != nullptr && !op->key.empty();
  const uint64_t seq = op != nullptr ? op->seq : 0;
  const bool new_op = !have_op_ || seq != op_seq_ || !keyed;
  const bool planner_session =
      policy_ == Policy::kAuto && config_.planner != PlannerKind::kLru;
  if (new_op) {
    have_op_ = true;
    op_seq_ = seq;
    acquired_in_op_.clear();
    non_model_ = op != nullptr ? op->non_model_bytes : 0;
    outside_ = outside_bytes ? outside_bytes() : 0;
    if (gemini_pos_ == kNoPos) {
      gemini_pos_ = 0;
    } else {
      ++gemini_pos_;
    }
    if (planner_session && config_.planner == PlannerKind::kGeminiLike) {
      // Position-keyed: the op is whatever came at this position.
      if (state_ == PlacementState::kRecording) {
        recorder_.BeginOp(keyed ? op->key : "", non_model_, outside_);
      } else if (plan_ && gemini_pos_ < plan_->size()) {
        pos_ = gemini_pos_;
      } else {
        pos_ = kNoPos;
      }
    } else if (state_ == PlacementState::kRecording) {
      if (!keyed) recording_valid_ = false;
      recorder_.BeginOp(keyed ? op->key : "", non_model_, outside_);
    } else if (state_ == PlacementState::kPlanned) {
      const size_t n = plan_->size();
      const size_t expected = pos_ == kNoPos ? 0 : (pos_ + 1) % n;
      // A known op out of the recorded order (an evaluation pass: forward
      // ops without their backward; a step cut short) does not leave the
      // plan: the plan is keyed by op identity, so it resynchronises at
      // that op's next recorded position. Only an unknown op diverges.
      size_t target = expected;
      const std::vector<size_t>* positions =
          keyed ? plan_->Positions(op->key) : nullptr;
      if (keyed && positions != nullptr && plan_->op(expected).key != op->key) {
        auto next =
            std::lower_bound(positions->begin(), positions->end(), expected);
        target = next != positions->end() ? *next : positions->front();
        ++stats_.resyncs;
        resynced_in_step_ = true;
      }
      if (!keyed) {
        Diverge("an acquire without an op key");
      } else if (positions == nullptr) {
        Diverge(absl::StrCat("unknown op ", QuoteClientText(op->key)));
      } else {
        const uint64_t recorded = plan_->op(target).non_model_bytes;
        const uint64_t hi = std::max(recorded, non_model_);
        const uint64_t lo = std::min(recorded, non_model_);
        if (hi - lo > Fraction(config_.non_model_tolerance, hi) + kMiB) {
          Diverge(absl::StrCat("op ", QuoteClientText(op->key),
                               " non-model bytes changed from ", recorded,
                               " to ", non_model_));
        } else {
          pos_ = target;
        }
      }
    }
    if (state_ == PlacementState::kPlanned && pos_ != kNoPos) {
      ++stats_.planned_ops;
    } else {
      ++stats_.unplanned_ops;
    }
  }
  for (const Touch& t : touches) {
    if (state_ == PlacementState::kRecording) {
      recorder_.Touch(t.chunk, t.bytes, t.write);
    } else if (Planned() && config_.planner == PlannerKind::kBelady &&
               !plan_->trace().Touches(pos_, t.chunk)) {
      Diverge(absl::StrCat("op ", QuoteClientText(plan_->op(pos_).key),
                           " touched a chunk it did not touch when recorded"));
    }
    acquired_in_op_.insert(t.chunk);
  }
  return new_op;
}

void SessionPlacement::OnPlacedServed(std::span<const Touch> touches,
                                      bool on_device) {
  ++(on_device ? stats_.updates_on_device : stats_.updates_on_host);
  auto& pending = on_device ? device_writes_pending_ : host_writes_pending_;
  for (const Touch& t : touches) {
    auto it = pending.find(t.chunk);
    if (t.write && it != pending.end() && --it->second <= 0) {
      pending.erase(it);
    }
  }
}

bool SessionPlacement::OnPlacedAcquire(std::span<const Touch> touches,
                                       bool resident) {
  std::vector<uint64_t> chunks;
  chunks.reserve(touches.size());
  for (const Touch& t : touches) chunks.push_back(t.chunk);
  if (policy_ == Policy::kStatic) {
    return resident || std::all_of(chunks.begin(), chunks.end(),
                                   [this](uint64_t c) { return kept(c); });
  }
  if (policy_ != Policy::kAuto) return resident;
  if (config_.planner == PlannerKind::kGeminiLike) return false;
  if (config_.planner == PlannerKind::kLru) return resident;
  if (state_ == PlacementState::kRecording) {
    std::vector<std::pair<uint64_t, uint64_t>> recorded;
    bool write = false;
    for (const Touch& t : touches) {
      recorded.push_back({t.chunk, t.bytes});
      write = write || t.write;
    }
    recorder_.Placed(recorded, write);
    return resident;
  }
  if (state_ == PlacementState::kPlanned && plan_) {
    if (plan_->PlacedWhereResident(chunks)) return resident;
    return plan_->PlacedOnDevice(chunks);
  }
  return resident;
}

void SessionPlacement::OnStep() {
  ++stats_.steps;
  have_op_ = false;
  gemini_pos_ = kNoPos;
  if (policy_ != Policy::kAuto || config_.planner == PlannerKind::kLru) return;
  switch (state_) {
    case PlacementState::kRecording: {
      ++recorded_steps_;
      if (recorder_.overflowed()) {
        // Training goes on (LRU), the trace's memory is bounded.
        stats_.last_divergence = absl::StrCat(
            "the warm-up step had more than ", config_.max_trace_ops,
            " ops (max_trace_ops_per_session), ", config_.max_trace_bytes,
            " bytes of trace (max_trace_bytes_per_session) or ", kMaxTouches,
            " chunk touches; not planned, recording again");
      }
      std::optional<Trace> trace = recorder_.EndStep();
      if (!recording_valid_) {
        recording_valid_ = true;
        recorded_steps_ = 0;  // ops without keys: nothing to plan from
        break;
      }
      if (recorded_steps_ >= config_.warmup_steps && trace) {
        PlanOptions options{.pool_capacity = pool_capacity_,
                            .margin_ratio = config_.margin_ratio,
                            .granularity = granularity_};
        if (config_.planner == PlannerKind::kGeminiLike) {
          options.fixed_capacity_ratio = config_.gemini_capacity_ratio;
          // Gemini's gpu_margin_mem_ratio defaults to 0: optimizer state
          // stays on the host (CPU Adam).
          options.place_updates = false;
        } else {
          // Room for the largest chunk to stream in ahead of its op, and
          // the updates the room allows on the device, each only where the
          // replayed step says it costs fewer bytes than it buys.
          uint64_t reserve = 0;
          if (config_.prefetch) {
            for (const auto& [c, bytes] : trace->chunk_bytes) {
              reserve = std::max(reserve, (bytes + granularity_ - 1) /
                                              granularity_ * granularity_);
            }
          }
          options = ChoosePlanOptions(*trace, options, reserve).options;
        }
        plan_.emplace(std::move(*trace), options);
        ++plan_generation_;
        state_ = PlacementState::kPlanned;
        stats_.plan_ops = plan_->size();
      }
      break;
    }
    case PlacementState::kPlanned:
      if (resynced_in_step_ && resynced_last_step_) {
        stats_.last_divergence =
            "ops left the recorded order in two steps in a row";
        ++stats_.replans;
        StartRecording();
      } else if (config_.planner == PlannerKind::kBelady && plan_ &&
                 pos_ != plan_->size() - 1) {
        stats_.last_divergence =
            absl::StrCat("the step ended after ", pos_ == kNoPos ? 0 : pos_ + 1,
                         " of ", plan_->size(), " recorded ops");
        ++stats_.replans;
        StartRecording();
      }
      break;
    case PlacementState::kFallback:
      ++stats_.replans;
      StartRecording();
      break;
  }
  resynced_last_step_ = resynced_in_step_ && state_ == PlacementState::kPlanned;
  resynced_in_step_ = false;
  pos_ = kNoPos;
  host_writes_pending_.clear();
  device_writes_pending_.clear();
  if (state_ == PlacementState::kPlanned && plan_) {
    host_writes_pending_ = plan_->host_writes();
    device_writes_pending_ = plan_->device_writes();
  }
}

void SessionPlacement::OnChunkCreated(uint64_t chunk, Group group,
                                      uint64_t bytes) {
  max_chunk_ = std::max(
      max_chunk_, (bytes + granularity_ - 1) / granularity_ * granularity_);
  const bool optim = group == Group::kMaster || group == Group::kOptimState;
  const bool param = group == Group::kParam || group == Group::kGrad;
  if (!optim && !param) return;
  group_chunks_[optim ? 1 : 0].push_back({chunk, bytes});
  kept_stale_ = true;
}

void SessionPlacement::RecomputeKept() const {
  if (!kept_stale_) return;
  kept_.clear();
  for (const auto& [kind, chunks] : group_chunks_) {
    const double offload =
        kind == 1 ? config_.static_optim_offload : config_.static_param_offload;
    uint64_t total = 0;
    for (const auto& [c, b] : chunks) total += b;
    const uint64_t keep = Fraction(1.0 - offload, total);
    uint64_t prefix = 0;
    for (const auto& [c, b] : chunks) {
      if (prefix + b > keep) break;
      prefix += b;
      kept_.insert(c);
    }
  }
  kept_stale_ = false;
}

bool SessionPlacement::kept(uint64_t chunk) const {
  if (policy_ != Policy::kStatic) return false;
  RecomputeKept();
  return kept_.contains(chunk);
}

uint64_t SessionPlacement::HeadroomLimit() const {
  const uint64_t measured = SatAdd(pool_capacity_, outside_);
  return MarginBudget(std::min(pool_capacity_, SatSub(measured, non_model_)),
                      Fraction(config_.margin_ratio, measured), max_chunk_);
}

uint64_t SessionPlacement::Limit() const {
  if (policy_ == Policy::kAuto && config_.planner == PlannerKind::kGeminiLike) {
    const uint64_t cap =
        Fraction(config_.gemini_capacity_ratio, pool_capacity_);
    if (state_ == PlacementState::kRecording) {
      return SatSub(
          cap, Fraction(config_.gemini_warmup_non_model_ratio, pool_capacity_));
    }
    if (Planned()) return plan_->Budget(pos_);
    return SatSub(cap, non_model_);
  }
  if (Planned()) return plan_->DemandBudget(pos_);
  return HeadroomLimit();
}

bool SessionPlacement::StillNeeded(uint64_t chunk) const {
  return Planned() && !acquired_in_op_.contains(chunk) &&
         plan_->trace().Touches(pos_, chunk);
}

size_t SessionPlacement::LruVictim(
    std::span<const EvictionCandidate> candidates) const {
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

size_t SessionPlacement::ChooseVictim(
    std::span<const EvictionCandidate> candidates) const {
  if (policy_ == Policy::kStatic) {
    // Offloaded chunks first (LRU among them); kept ones only as a last
    // resort, so that `static` never fails where `cpu` succeeds.
    std::vector<EvictionCandidate> movable;
    std::vector<size_t> index;
    for (size_t i = 0; i < candidates.size(); ++i) {
      if (!kept(candidates[i].chunk_id)) {
        movable.push_back(candidates[i]);
        index.push_back(i);
      }
    }
    if (!movable.empty()) return index[LruVictim(movable)];
    return LruVictim(candidates);
  }
  if (Planned()) {
    return BeladyVictim(*plan_, pos_, candidates,
                        [this](uint64_t c) { return StillNeeded(c); });
  }
  return LruVictim(candidates);
}

std::vector<PrefetchAction> SessionPlacement::Prefetch(
    std::vector<ResidentChunk> resident, uint64_t resident_bytes) const {
  if (policy_ != Policy::kAuto || config_.planner != PlannerKind::kBelady ||
      !config_.prefetch || !Planned()) {
    return {};
  }
  PrefetchInput input{
      .pos = pos_,
      .resident = std::move(resident),
      .resident_bytes = resident_bytes,
      .still_needed = [this](uint64_t c) { return StillNeeded(c); },
      .awaits_host_update =
          [this](uint64_t c) { return host_writes_pending_.contains(c); },
      .max_lookahead = config_.lookahead_ops};
  return PlanPrefetch(*plan_, input);
}

bool SessionPlacement::WantsLoadsAhead(
    const std::function<bool(uint64_t)>& resident) const {
  if (policy_ != Policy::kAuto || config_.planner != PlannerKind::kBelady ||
      !config_.prefetch || !Planned()) {
    return false;
  }
  // PlanPrefetch's window: the op being served and the ones ahead of it.
  const size_t n = plan_->size();
  const size_t lookahead = config_.lookahead_ops == 0
                               ? n - 1
                               : std::min(config_.lookahead_ops, n - 1);
  for (size_t d = 0; d <= lookahead; ++d) {
    for (uint64_t c : plan_->op((pos_ + d) % n).chunks) {
      if (!resident(c)) return true;
    }
  }
  return false;
}

bool SessionPlacement::WriteBackAhead(uint64_t chunk) const {
  if (!Planned() || config_.planner != PlannerKind::kBelady ||
      !host_writes_pending_.contains(chunk) ||
      device_writes_pending_.contains(chunk)) {
    return false;
  }
  const uint64_t d = plan_->NextUse(chunk, pos_, StillNeeded(chunk));
  return d == kNeverUsed || pos_ + d >= plan_->size();
}

PlacementStatsView SessionPlacement::stats() const {
  PlacementStatsView v = stats_;
  v.state = state_;
  v.plan_ops = plan_ ? plan_->size() : 0;
  v.kept_bytes =
      plan_ && state_ == PlacementState::kPlanned ? plan_->kept_bytes() : 0;
  return v;
}

std::optional<size_t> SessionPlacement::position() const {
  if (!Planned()) return std::nullopt;
  return pos_;
}

}  // namespace tidepool
