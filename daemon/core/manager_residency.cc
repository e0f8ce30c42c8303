// MemoryManager: residency. Evictions (the victim from the indexes, or the
// session's placement), write-backs, the indexes that keep every request
// O(log n) in the number of chunks, and the prefetches a plan asks for.
#include <glog/logging.h>

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "daemon/core/memory_manager.h"

namespace tidepool {

void MemoryManager::QueueWriteBack(Chunk& chunk, Session& owner,
                                   CopyBatch& batch) {
  batch.to_host.push_back(
      CopyOp{*chunk.host_offset, *chunk.device_offset, chunk.bytes});
  batch.written_back.push_back(chunk.id);
  batch.wait_sessions.push_back(owner.id);
  owner.stats.bytes_to_host += chunk.bytes;
  chunk.dirty = false;
  Reindex(chunk);
}

void MemoryManager::Evict(Chunk& chunk, EvictionCause cause, CopyBatch& batch) {
  Session& owner = sessions_.at(chunk.session_id);
  Device& dev = device_state_[owner.device];
  const uint64_t rounded = dev.allocator->RoundUp(chunk.bytes);
  // Gemini-like sessions (bench only) write every eviction back.
  const bool write_back = chunk.dirty || (owner.placement != nullptr &&
                                          owner.placement->force_write_back());
  if (write_back) {
    QueueWriteBack(chunk, owner, batch);
  } else {
    ++owner.stats.clean_evictions;
  }
  // The load that brought the copy may still be reading the host home: a
  // host writer (AcquireOnHost read-write drops the copy) waits for it.
  chunk.host_ready_sequence =
      std::max(chunk.host_ready_sequence, chunk.arrival_sequence);
  ++owner.stats.evictions;
  if (chunk.prefetched) {
    chunk.prefetched = false;
    ++owner.stats.prefetch_wasted;
    observer().OnPrefetch(owner.device, PrefetchOutcome::kWasted);
  }
  observer().OnEviction(owner.device, cause, !write_back);
  batch.wait_sessions.push_back(owner.id);
  FreeSlot(owner.device, owner.id, *chunk.device_offset, chunk.bytes);
  chunk.device_offset.reset();
  RecordEvent(chunk, ResidencyEventKind::kEvicted, write_back);
  chunk.dirty = false;
  owner.stats.device_bytes -= rounded;
  Reindex(chunk);
}

void MemoryManager::Reindex(const Chunk& c) {
  auto s = sessions_.find(c.session_id);
  if (s == sessions_.end()) return;  // being reclaimed: in no index
  Session& owner = s->second;
  // What MakeRoom may evict: resident, not computed on, with a host home
  // to go back to.
  if (c.device_offset && c.compute_count == 0 && c.host_offset) {
    owner.evictable.Set(c.id, c.last_use_tick, c.dirty);
  } else {
    owner.evictable.Erase(c.id);
  }
  const bool changed = c.device_offset ? owner.resident.insert(c.id).second
                                       : owner.resident.erase(c.id) > 0;
  if (changed && owner.counted_plan != 0 &&
      owner.counted_plan == owner.placement->plan_generation() &&
      owner.placement->plan()->UsedByOps(c.id)) {
    if (c.device_offset) {
      --owner.plan_missing;
    } else {
      ++owner.plan_missing;
    }
  }
  if (c.device_offset && c.dirty) {
    owner.dirty_resident.insert(c.id);
  } else {
    owner.dirty_resident.erase(c.id);
  }
}

std::optional<uint64_t> MemoryManager::DeviceVictim(
    size_t device, const std::function<bool(uint64_t)>& skip) const {
  std::optional<EvictionIndex::Entry> best;
  for (uint64_t id : device_state_[device].sessions) {
    const std::optional<EvictionIndex::Entry> first =
        sessions_.at(id).evictable.FirstEntry(skip);
    if (first && (!best || *first < *best)) best = first;
  }
  if (!best) return std::nullopt;
  return best->chunk;
}

void MemoryManager::CountTransition(Chunk& chunk, TensorState from,
                                    TensorState to) {
  const bool was_busy = from != TensorState::kFree;
  const bool busy = to != TensorState::kFree;
  chunk.busy_tensors += static_cast<int>(busy) - static_cast<int>(was_busy);
}

absl::Status MemoryManager::MakeRoom(Session& session, uint64_t bytes,
                                     const std::vector<uint64_t>& pinned,
                                     CopyBatch& batch) {
  Device& dev = device_state_[session.device];
  const uint64_t rounded = dev.allocator->RoundUp(bytes);
  auto over_quota = [&] {
    return session.device_quota != 0 &&
           session.stats.device_bytes + rounded > session.device_quota;
  };
  if (session.device_quota != 0 && rounded > session.device_quota) {
    return absl::ResourceExhaustedError(
        absl::StrCat("a chunk of ", bytes, " bytes (a slot of ", rounded,
                     ") exceeds the session's device quota of ",
                     session.device_quota, " bytes"));
  }
  // auto/static: the placement's own limit (soft) and victim choice among
  // the session's own chunks come first.
  SessionPlacement* placement = session.placement.get();
  const uint64_t limit = placement != nullptr ? placement->Limit() : ~0ull;
  auto over_limit = [&] {
    return session.stats.device_bytes + rounded > limit;
  };
  std::vector<EvictionCandidate> candidates;
  while (placement != nullptr &&
         (over_quota() || over_limit() || !dev.allocator->CanAllocate(bytes))) {
    candidates = OwnCandidates(session, pinned);
    if (candidates.empty()) break;
    const bool quota = over_quota();
    Evict(chunks_.at(candidates[placement->ChooseVictim(candidates)].chunk_id),
          quota ? EvictionCause::kQuota : EvictionCause::kCapacity, batch);
  }
  auto is_pinned = [&](uint64_t cid) {
    return std::find(pinned.begin(), pinned.end(), cid) != pinned.end();
  };
  while (over_quota() || !dev.allocator->CanAllocate(bytes)) {
    // Over quota, only the session's own chunks may go; otherwise any
    // session's on this device, least recently used first
    // (LruEvictionPolicy's rule, kept in order by the index).
    const bool own_only = over_quota();
    const std::optional<uint64_t> victim =
        own_only ? session.evictable.First(is_pinned)
                 : DeviceVictim(session.device, is_pinned);
    if (!victim) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "device ", devices_[session.device]->description().name,
          " cannot hold this request: a chunk of ", bytes, " bytes (slot ",
          rounded, ") needs room; ", dev.allocator->used(), " of ",
          dev.allocator->capacity(),
          " bytes are held by chunks being computed on: release tensors or "
          "acquire fewer at once"));
    }
    Evict(chunks_.at(*victim),
          own_only ? EvictionCause::kQuota : EvictionCause::kCapacity, batch);
  }
  return absl::OkStatus();
}

std::vector<EvictionCandidate> MemoryManager::OwnCandidates(
    const Session& session, const std::vector<uint64_t>& pinned) const {
  std::vector<EvictionCandidate> out;
  out.reserve(session.evictable.size());
  session.evictable.ForEach([&](uint64_t cid, uint64_t tick, bool dirty) {
    if (std::find(pinned.begin(), pinned.end(), cid) == pinned.end()) {
      out.push_back({cid, session.id, chunks_.at(cid).bytes, dirty, tick});
    }
    return true;
  });
  return out;
}

void MemoryManager::EnforceLimit(Session& session,
                                 const std::vector<uint64_t>& pinned,
                                 CopyBatch& batch) {
  SessionPlacement* placement = session.placement.get();
  if (placement == nullptr) return;
  const uint64_t limit = placement->Limit();
  while (session.stats.device_bytes > limit) {
    std::vector<EvictionCandidate> candidates = OwnCandidates(session, pinned);
    if (candidates.empty()) return;
    Evict(chunks_.at(candidates[placement->ChooseVictim(candidates)].chunk_id),
          EvictionCause::kCapacity, batch);
  }
}

MemoryManager::PrefetchWork MemoryManager::PlanPrefetchWork(
    Session& session) const {
  PrefetchWork work;
  const SessionPlacement* placement = session.placement.get();
  // Both the write-backs ahead and the prefetches follow a plan: a session
  // without one costs nothing here.
  if (placement == nullptr || !placement->position()) return work;
  const RangeAllocator& alloc = *device_state_[session.device].allocator;
  // Write back, while the step goes on, what a host update will take next
  // (a gradient no op needs again this step): the update then finds it
  // clean and drops the device copy without waiting for the link.
  for (uint64_t cid : session.dirty_resident) {
    const Chunk& c = chunks_.at(cid);
    if (c.compute_count == 0 && c.host_offset &&
        placement->WriteBackAhead(cid)) {
      work.write_backs.push_back(cid);
    }
  }
  // Every chunk of the step on the device: nothing to load (O(1) but once
  // a plan, when it is counted).
  const Plan& plan = *placement->plan();
  if (session.counted_plan != placement->plan_generation()) {
    session.plan_missing = PlanChunksOffDevice(session, plan);
    session.counted_plan = placement->plan_generation();
  }
  if (session.plan_missing == 0) return work;
  if (!placement->WantsLoadsAhead(
          [&](uint64_t cid) { return session.resident.contains(cid); })) {
    return work;
  }
  std::vector<ResidentChunk> resident;
  resident.reserve(session.resident.size());
  for (uint64_t cid : session.resident) {
    const Chunk& c = chunks_.at(cid);
    resident.push_back(ResidentChunk{
        .chunk = cid,
        .bytes = alloc.RoundUp(c.bytes),
        .dirty = c.dirty,
        .evictable = c.compute_count == 0 && c.host_offset.has_value(),
        .last_use_tick = c.last_use_tick});
  }
  work.actions =
      placement->Prefetch(std::move(resident), session.stats.device_bytes);
  return work;
}

size_t MemoryManager::PlanChunksOffDevice(const Session& session,
                                          const Plan& plan) {
  size_t resident_used = 0;
  for (uint64_t cid : session.resident) resident_used += plan.UsedByOps(cid);
  return plan.op_chunk_count() - resident_used;
}

void MemoryManager::RunPrefetch(Session& session) {
  ApplyPrefetch(session, PlanPrefetchWork(session));
}

void MemoryManager::ApplyPrefetch(Session& session, const PrefetchWork& work) {
  if (work.empty()) return;
  RangeAllocator& alloc = *device_state_[session.device].allocator;
  CopyBatch ahead;
  for (uint64_t cid : work.write_backs) {
    // Planned without the core: the chunk may have changed since.
    auto it = chunks_.find(cid);
    if (it == chunks_.end() || it->second.session_id != session.id) continue;
    Chunk& c = it->second;
    if (c.device_offset && c.dirty && c.compute_count == 0 && c.host_offset) {
      QueueWriteBack(c, session, ahead);
    }
  }
  if (!ahead.to_host.empty()) {
    absl::Status s = SubmitBatch(session.device, std::move(ahead)).status();
    if (!s.ok()) {
      LOG(ERROR) << "session " << session.id
                 << ": write-back not submitted: " << s;
    }
  }
  const std::vector<PrefetchAction>& actions = work.actions;
  if (actions.empty()) return;
  CopyBatch batch;
  std::vector<uint64_t> loaded;
  for (const PrefetchAction& a : actions) {
    // The plan names chunks by id: check each is still this session's and
    // in the state the plan assumed.
    auto it = chunks_.find(a.chunk);
    // A chunk being computed on in its host home must not get a device copy
    // that its writes would make stale.
    if (it == chunks_.end() || it->second.session_id != session.id ||
        it->second.device_offset || !it->second.host_offset ||
        it->second.host_compute_count > 0) {
      continue;
    }
    Chunk& c = it->second;
    bool victims_ok = true;
    for (uint64_t v : a.victims) {
      auto vit = chunks_.find(v);
      if (vit == chunks_.end() || vit->second.session_id != session.id ||
          !vit->second.device_offset || vit->second.compute_count > 0 ||
          !vit->second.host_offset) {
        victims_ok = false;
        break;
      }
      Evict(vit->second, EvictionCause::kCapacity, batch);
    }
    if (!victims_ok) break;
    const uint64_t rounded = alloc.RoundUp(c.bytes);
    if (session.device_quota != 0 &&
        session.stats.device_bytes + rounded > session.device_quota) {
      break;
    }
    if (!alloc.CanAllocate(c.bytes)) break;  // other sessions hold the room
    auto offset = PlaceSlot(session, c.bytes, batch);
    if (!offset.ok()) break;
    c.device_offset = *offset;
    c.dirty = false;
    c.prefetched = true;
    c.prefetch_acquires = session.stats.acquires;
    batch.to_device.push_back(CopyOp{*c.host_offset, *offset, c.bytes});
    session.stats.device_bytes += rounded;
    session.stats.peak_device_bytes =
        std::max(session.stats.peak_device_bytes, session.stats.device_bytes);
    session.stats.bytes_to_device += c.bytes;
    session.stats.prefetch_bytes += c.bytes;
    ++session.stats.prefetches;
    loaded.push_back(c.id);
    Reindex(c);
  }
  if (batch.to_device.empty() && batch.to_host.empty()) return;
  absl::StatusOr<uint64_t> seq = SubmitBatch(session.device, std::move(batch));
  if (!seq.ok()) {
    LOG(ERROR) << "session " << session.id
               << ": prefetch not submitted: " << seq.status();
    for (uint64_t cid : loaded) {
      Chunk& c = chunks_.at(cid);
      FreeSlot(session.device, session.id, *c.device_offset, c.bytes);
      session.stats.device_bytes -= alloc.RoundUp(c.bytes);
      c.device_offset.reset();
      c.prefetched = false;
      Reindex(c);
    }
    return;
  }
  for (uint64_t cid : loaded) {
    Chunk& c = chunks_.at(cid);
    c.arrival_sequence = *seq;
    RecordEvent(c, ResidencyEventKind::kLoaded);
  }
}

absl::StatusOr<uint64_t> MemoryManager::SubmitBatch(size_t device,
                                                    CopyBatch batch) {
  auto& wait = batch.wait_sessions;
  std::sort(wait.begin(), wait.end());
  wait.erase(std::unique(wait.begin(), wait.end()), wait.end());
  const std::vector<uint64_t> written_back = std::move(batch.written_back);
  absl::StatusOr<uint64_t> seq = devices_[device]->Submit(std::move(batch));
  for (uint64_t cid : written_back) {
    auto it = chunks_.find(cid);
    if (it == chunks_.end()) continue;
    if (seq.ok()) {
      // Host readers of the chunk (AcquireOnHost) wait for its bytes.
      it->second.host_ready_sequence =
          std::max(it->second.host_ready_sequence, *seq);
    } else if (it->second.device_offset) {
      it->second.dirty = true;  // the newer bytes are still on the device
      Reindex(it->second);
    }
  }
  return seq;
}

}  // namespace tidepool
