// MemoryManager: what it shows of itself: snapshots for metrics, admin
// views for tidepoolctl, and the residency log.
#include <glog/logging.h>

#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "common/client_text.h"
#include "common/status_macros.h"
#include "daemon/core/memory_manager.h"

namespace tidepool {

absl::string_view ReclaimReasonName(ReclaimReason reason) {
  switch (reason) {
    case ReclaimReason::kClosed:
      return "closed";
    case ReclaimReason::kDisconnected:
      return "disconnected";
    case ReclaimReason::kAttachTimeout:
      return "attach_timeout";
  }
  return "unknown";
}

absl::string_view ResidencyEventKindName(ResidencyEventKind kind) {
  switch (kind) {
    case ResidencyEventKind::kCreated:
      return "created";
    case ResidencyEventKind::kLoaded:
      return "loaded";
    case ResidencyEventKind::kEvicted:
      return "evicted";
    case ResidencyEventKind::kAcquired:
      return "acquired";
    case ResidencyEventKind::kReleased:
      return "released";
  }
  return "unknown";
}

TensorState MemoryManager::ChunkState(const Chunk& chunk,
                                      const Session& session) {
  auto rank = [](TensorState s) {
    switch (s) {
      case TensorState::kCompute:
        return 4;
      case TensorState::kReadyForReduce:
        return 3;
      case TensorState::kHoldAfterBwd:
        return 2;
      case TensorState::kHold:
        return 1;
      case TensorState::kFree:
        return 0;
    }
    return 0;
  };
  TensorState best = TensorState::kFree;
  for (uint64_t t : chunk.tensors) {
    const TensorState s = session.tensors.at(t).state;
    if (rank(s) > rank(best)) best = s;
  }
  return best;
}

ManagerSnapshot MemoryManager::Snapshot() const {
  absl::MutexLock lock(&mu_);
  ManagerSnapshot snap;
  snap.host_pool = {host_allocator_.capacity(), host_allocator_.used(),
                    host_allocator_.peak()};
  snap.devices.resize(devices_.size());
  for (size_t d = 0; d < devices_.size(); ++d) {
    const auto& a = *device_state_[d].allocator;
    snap.devices[d].pool = {a.capacity(), a.used(), a.peak()};
  }
  for (const auto& [id, session] : sessions_) {
    auto& dev = snap.devices[session.device];
    ++dev.sessions[session.policy];
    for (uint64_t c : session.chunks) {
      const Chunk& chunk = chunks_.at(c);
      const int state = static_cast<int>(ChunkState(chunk, session));
      dev.chunk_bytes[chunk.device_offset ? 1 : 0][state] += chunk.bytes;
    }
  }
  return snap;
}

size_t MemoryManager::session_count() const {
  absl::MutexLock lock(&mu_);
  return sessions_.size();
}

uint64_t MemoryManager::metadata_bytes() const {
  absl::MutexLock lock(&mu_);
  uint64_t total = 0;
  for (const auto& [id, s] : sessions_) total += s.stats.metadata_bytes;
  return total;
}

absl::Status MemoryManager::CheckIndexes() const {
  absl::MutexLock lock(&mu_);
  std::map<uint64_t, size_t> session_candidates;
  std::map<size_t, EvictionIndex::Entry> device_first;
  std::map<uint64_t, size_t> session_resident;
  std::map<uint64_t, size_t> session_dirty;
  for (const auto& [cid, c] : chunks_) {
    auto s = sessions_.find(c.session_id);
    if (s == sessions_.end()) continue;  // being reclaimed
    const Session& session = s->second;
    const bool candidate =
        c.device_offset && c.compute_count == 0 && c.host_offset;
    const std::optional<std::pair<uint64_t, bool>> indexed =
        session.evictable.Find(cid);
    if (candidate != indexed.has_value()) {
      return absl::InternalError(
          absl::StrCat("chunk ", cid, (candidate ? " may" : " may not"),
                       " be evicted but its session's index says otherwise"));
    }
    if (indexed &&
        (indexed->first != c.last_use_tick || indexed->second != c.dirty)) {
      return absl::InternalError(
          absl::StrCat("chunk ", cid, ": stale eviction key"));
    }
    // The device's pick is the LRU rule's over all its sessions' chunks.
    if (candidate) {
      const EvictionIndex::Entry entry{cid, c.last_use_tick, c.dirty};
      auto [it, fresh] = device_first.try_emplace(c.device, entry);
      if (!fresh && entry < it->second) it->second = entry;
    }
    if ((c.device_offset && c.dirty) != session.dirty_resident.contains(cid)) {
      return absl::InternalError(
          absl::StrCat("chunk ", cid, ": session dirty index differs"));
    }
    if (c.device_offset.has_value() != session.resident.contains(cid)) {
      return absl::InternalError(
          absl::StrCat("chunk ", cid, ": session residency index differs"));
    }
    session_candidates[session.id] += candidate;
    session_resident[session.id] += c.device_offset.has_value();
    session_dirty[session.id] += c.device_offset && c.dirty;
    int busy = 0;
    for (uint64_t t : c.tensors) {
      busy += session.tensors.at(t).state != TensorState::kFree;
    }
    if (busy != c.busy_tensors) {
      return absl::InternalError(
          absl::StrCat("chunk ", cid, ": ", c.busy_tensors,
                       " busy tensors counted, ", busy, " found"));
    }
  }
  std::map<uint64_t, int> slab_homes;
  for (const auto& [cid, c] : chunks_) {
    if (c.host_slab) ++slab_homes[*c.host_slab];
  }
  for (const auto& [offset, slab] : host_slabs_) {
    if (slab_homes[offset] != slab.homes) {
      return absl::InternalError(
          absl::StrCat("host slab at ", offset, " counts ", slab.homes,
                       " homes, ", slab_homes[offset], " chunks live in it"));
    }
  }
  for (size_t d = 0; d < device_state_.size(); ++d) {
    const std::optional<uint64_t> picked = DeviceVictim(d, nullptr);
    auto first = device_first.find(d);
    const bool any = first != device_first.end();
    if (picked.has_value() != any || (any && *picked != first->second.chunk)) {
      return absl::InternalError(
          absl::StrCat("device ", d,
                       ": the sessions' indexes pick another victim than "
                       "the LRU rule over every chunk"));
    }
    for (uint64_t id : device_state_[d].sessions) {
      auto s = sessions_.find(id);
      if (s == sessions_.end() || s->second.device != d) {
        return absl::InternalError(
            absl::StrCat("device ", d, " lists session ", id, " wrongly"));
      }
    }
  }
  for (const auto& [id, session] : sessions_) {
    if (session.counted_plan != 0 &&
        session.counted_plan == session.placement->plan_generation()) {
      const size_t off =
          PlanChunksOffDevice(session, *session.placement->plan());
      if (session.plan_missing != off) {
        return absl::InternalError(absl::StrCat(
            "session ", id, " counts ", session.plan_missing,
            " of its plan's chunks off the device, ", off, " are"));
      }
    }
    if (!device_state_[session.device].sessions.contains(id)) {
      return absl::InternalError(absl::StrCat(
          "session ", id, " is missing from its device's sessions"));
    }
  }
  for (const auto& [id, session] : sessions_) {
    if (session.evictable.size() != session_candidates[id] ||
        session.resident.size() != session_resident[id] ||
        session.dirty_resident.size() != session_dirty[id]) {
      return absl::InternalError(
          absl::StrCat("session ", id, " indexes hold unknown chunks"));
    }
  }
  return absl::OkStatus();
}

uint64_t MemoryManager::TensorMetadataBytes(size_t name_bytes) {
  // As glibc's malloc hands it out: 8 bytes of header, 16-byte granules,
  // 32 bytes at least.
  auto heap = [](uint64_t n) {
    return std::max<uint64_t>(32, (n + 8 + 15) / 16 * 16);
  };
  // The tensor's node in its session's map (the tree's three links and
  // colour, its key and the Tensor), its id in its chunk's list (a vector:
  // up to twice that while it grows), and the name's own allocation when
  // it is too long for std::string's inline buffer (15 bytes).
  constexpr uint64_t kNode = 32 + sizeof(std::pair<const uint64_t, Tensor>);
  uint64_t bytes = heap(kNode) + 2 * sizeof(uint64_t);
  if (name_bytes > 15) bytes += heap(name_bytes + 1);
  return bytes;
}

PoolStatsView MemoryManager::host_pool_stats() const {
  absl::MutexLock lock(&mu_);
  return {host_allocator_.capacity(), host_allocator_.used(),
          host_allocator_.peak()};
}

PoolStatsView MemoryManager::device_pool_stats(size_t device) const {
  absl::MutexLock lock(&mu_);
  const auto& a = *device_state_.at(device).allocator;
  return {a.capacity(), a.used(), a.peak()};
}

void MemoryManager::RecordEvent(const Chunk& chunk, ResidencyEventKind kind,
                                bool dirty) {
  const size_t capacity = options_.residency_event_capacity;
  if (capacity == 0) return;
  const absl::Time now = absl::Now();
  absl::MutexLock lock(&events_mu_);
  ResidencyEventView e{.sequence = events_recorded_,
                       .time = now,
                       .session_id = chunk.session_id,
                       .chunk_id = chunk.id,
                       .kind = kind,
                       .on_device = chunk.device_offset.has_value(),
                       .dirty = dirty};
  if (events_.size() < capacity) {
    events_.push_back(e);
  } else {
    events_[events_recorded_ % capacity] = e;
  }
  ++events_recorded_;
}

ChunkDetailView MemoryManager::Detail(const Chunk& chunk,
                                      const Session& session) const {
  ChunkDetailView d{.chunk = View(chunk),
                    .state = ChunkState(chunk, session),
                    .computing = chunk.compute_count > 0};
  d.tensors.reserve(chunk.tensors.size());
  for (uint64_t t : chunk.tensors) {
    d.tensors.push_back(session.tensors.at(t).name);
  }
  return d;
}

std::vector<SessionInfoView> MemoryManager::ListSessions() const {
  absl::MutexLock lock(&mu_);
  std::vector<SessionInfoView> out;
  out.reserve(sessions_.size());
  for (const auto& [id, s] : sessions_) {
    out.push_back(SessionInfoView{.id = id,
                                  .pid = s.pid,
                                  .client_name = s.client_name,
                                  .policy = s.policy,
                                  .device = s.device,
                                  .attached = s.attached,
                                  .opened_at = s.opened_at,
                                  .device_quota = s.device_quota,
                                  .host_quota = s.host_quota,
                                  .stats = s.stats});
  }
  return out;
}

absl::StatusOr<std::vector<ChunkDetailView>> MemoryManager::SessionChunks(
    uint64_t id) const {
  absl::MutexLock lock(&mu_);
  auto it = sessions_.find(id);
  if (it == sessions_.end()) {
    return absl::NotFoundError(absl::StrCat("no session ", id));
  }
  std::vector<ChunkDetailView> out;
  out.reserve(it->second.chunks.size());
  for (uint64_t c : it->second.chunks) {
    out.push_back(Detail(chunks_.at(c), it->second));
  }
  return out;
}

absl::StatusOr<TraceView> MemoryManager::RecordedTrace(uint64_t id) const {
  absl::MutexLock lock(&mu_);
  auto it = sessions_.find(id);
  if (it == sessions_.end()) {
    return absl::NotFoundError(absl::StrCat("no session ", id));
  }
  const Session& session = it->second;
  if (session.policy != Policy::kAuto || !session.placement) {
    return absl::FailedPreconditionError(
        absl::StrCat("session ", id, " has policy ", PolicyName(session.policy),
                     ", which records no trace (only auto does)"));
  }
  TraceView view;
  view.policy = session.policy;
  view.stats = session.placement->stats();
  if (const Plan* plan = session.placement->plan()) {
    view.measured_capacity = plan->measured_capacity();
    for (size_t pos = 0; pos < plan->size(); ++pos) {
      const TraceOp& op = plan->op(pos);
      view.ops.push_back({op.key, op.chunks, op.written, op.non_model_bytes,
                          plan->Budget(pos)});
    }
    for (const PlacedSet& set : plan->trace().placed) {
      view.updates.push_back({set.chunks, plan->PlacedOnDevice(set.chunks)});
    }
  }
  return view;
}

absl::StatusOr<TimelineView> MemoryManager::Timeline(uint64_t id,
                                                     size_t max_events) const {
  absl::MutexLock lock(&mu_);
  TimelineView view;
  auto it = sessions_.find(id);
  if (it != sessions_.end()) {
    for (uint64_t c : it->second.chunks) {
      view.chunks.push_back(Detail(chunks_.at(c), it->second));
    }
  }
  // Oldest first: the ring starts at the slot that is overwritten next.
  absl::MutexLock events_lock(&events_mu_);
  const size_t n = events_.size();
  // (n > 0 implies a capacity of at least n.)
  const size_t start =
      n == 0 || n < options_.residency_event_capacity
          ? 0
          : events_recorded_ % options_.residency_event_capacity;
  for (size_t i = 0; i < n; ++i) {
    const ResidencyEventView& e = events_[(start + i) % n];
    if (e.session_id == id) view.events.push_back(e);
  }
  if (it == sessions_.end() && view.events.empty()) {
    return absl::NotFoundError(
        absl::StrCat("no session ", id, " (and no recorded events of it)"));
  }
  // Events of a session older than the ring's oldest were overwritten when
  // the ring is full and the session's ids predate it.
  if (n == options_.residency_event_capacity && n > 0 && events_recorded_ > n &&
      !view.events.empty() &&
      view.events.front().kind != ResidencyEventKind::kCreated) {
    view.truncated = true;
  }
  if (max_events != 0 && view.events.size() > max_events) {
    view.events.erase(view.events.begin(),
                      view.events.end() - static_cast<ptrdiff_t>(max_events));
    view.truncated = true;
  }
  return view;
}

uint64_t MemoryManager::residency_events_recorded() const {
  absl::MutexLock lock(&events_mu_);
  return events_recorded_;
}

}  // namespace tidepool
