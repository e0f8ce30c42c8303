// MemoryManager: acquire and release, on the device and in the host homes.
#include <glog/logging.h>

#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "common/client_text.h"
#include "common/status_macros.h"
#include "daemon/core/memory_manager.h"

namespace tidepool {

absl::Status MemoryManager::CheckRequestSize(
    const std::vector<uint64_t>& tensor_ids) const {
  if (tensor_ids.empty()) return absl::InvalidArgumentError("no tensors given");
  if (tensor_ids.size() > options_.max_tensors_per_request) {
    return absl::InvalidArgumentError("too many tensors in one request");
  }
  return absl::OkStatus();
}

absl::StatusOr<AcquireResult> MemoryManager::Acquire(
    uint64_t id, const Token& token, const std::vector<uint64_t>& tensor_ids,
    AccessMode mode, const OpContext* op) {
  TP_RETURN_IF_ERROR(CheckRequestSize(tensor_ids));
  if (op != nullptr && op->key.size() > options_.max_op_key_bytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "op key longer than ", options_.max_op_key_bytes, " bytes"));
  }
  // Keys come back in traces and divergence reasons (proto strings).
  if (op != nullptr) TP_RETURN_IF_ERROR(CheckUtf8("op key", op->key));
  CoreWork work;
  std::optional<AcquireResult> done;
  {
    absl::ReaderMutexLock core(&mu_);
    TP_ASSIGN_OR_RETURN(Session * session, Authenticate(id, token));
    absl::MutexLock own(session->mu.get());
    TP_ASSIGN_OR_RETURN(done,
                        AcquireWithoutMoves(*session, tensor_ids, mode,
                                            /*on_host=*/false, op, &work));
    if (done && !work.any()) return *std::move(done);
  }
  absl::MutexLock lock(&mu_);
  // Looked up again: the session may have closed in between.
  TP_ASSIGN_OR_RETURN(Session * session, Authenticate(id, token));
  if (done) {
    DoCoreWork(*session, work);
    return *std::move(done);
  }
  return AcquireOnDevice(*session, tensor_ids, mode, op, /*sequenced=*/true);
}

absl::StatusOr<std::optional<AcquireResult>> MemoryManager::AcquireWithoutMoves(
    Session& session, const std::vector<uint64_t>& tensor_ids, AccessMode mode,
    bool on_host, const OpContext* op, CoreWork* work) {
  TP_ASSIGN_OR_RETURN(const std::vector<uint64_t> needed,
                      CheckAcquire(session, tensor_ids, on_host));
  for (uint64_t cid : needed) {
    const Chunk& c = chunks_.at(cid);
    // On the device: a load. On the host: a device copy to drop (read-write)
    // or to write back first (dirty).
    const bool moves =
        on_host ? c.device_offset && (mode == AccessMode::kReadWrite || c.dirty)
                : !c.device_offset;
    if (moves) return std::nullopt;
  }
  // The placement sees the op first, as in AcquireOnDevice; the limit it
  // sets for a new op is enforced afterwards, by the core, when it is
  // exceeded. The acquired chunks are COMPUTE by then: pinned all the same.
  const bool new_op =
      work != nullptr && !on_host && NoteOp(session, needed, mode, op);
  AcquireResult result =
      EnterCompute(session, tensor_ids, needed, mode, on_host);
  if (!on_host) NotePrefetchUse(session, needed);
  if (work != nullptr && session.placement) {
    work->enforce_limit =
        new_op && session.stats.device_bytes > session.placement->Limit();
    work->prefetch = PlanPrefetchWork(session);
  }
  return result;
}

bool MemoryManager::NoteOp(Session& session,
                           const std::vector<uint64_t>& needed, AccessMode mode,
                           const OpContext* op) {
  if (!session.placement) return false;
  std::vector<SessionPlacement::Touch> touches;
  touches.reserve(needed.size());
  for (uint64_t cid : needed) {
    touches.push_back(
        {cid, chunks_.at(cid).bytes, mode == AccessMode::kReadWrite});
  }
  DeviceBackend& backend = *devices_[session.device];
  auto outside = [&]() -> uint64_t {
    // On sim the pool is the whole card; on cuda the framework's memory
    // lies outside the pool: what the driver has free plus what the
    // framework holds.
    if (backend.description().backend == "sim") return 0;
    absl::StatusOr<uint64_t> free = backend.DriverFreeBytes();
    if (!free.ok()) return 0;
    const uint64_t non_model = op != nullptr ? op->non_model_bytes : 0;
    return *free > ~0ull - non_model ? ~0ull : *free + non_model;
  };
  return session.placement->OnAcquire(op, outside, touches);
}

void MemoryManager::NotePrefetchUse(Session& session,
                                    const std::vector<uint64_t>& needed) {
  for (uint64_t cid : needed) {
    Chunk& c = chunks_.at(cid);
    if (!c.prefetched) continue;
    c.prefetched = false;
    const bool arrived =
        devices_[session.device]->CompletedSequence() >= c.arrival_sequence;
    ++(arrived ? session.stats.prefetch_hits : session.stats.prefetch_late);
    // EnterCompute has counted this acquire: a prefetch issued after the
    // previous acquire (at it, or at its release) had one op of lead.
    if (!arrived && session.stats.acquires - c.prefetch_acquires <= 1) {
      ++session.stats.prefetch_late_short_lead;
    }
    observer().OnPrefetch(session.device, arrived ? PrefetchOutcome::kHit
                                                  : PrefetchOutcome::kLate);
  }
}

void MemoryManager::DoCoreWork(Session& session, const CoreWork& work) {
  if (work.enforce_limit) {
    CopyBatch batch;
    EnforceLimit(session, {}, batch);
    if (!batch.to_host.empty() || !batch.installs.empty()) {
      absl::Status s = SubmitBatch(session.device, std::move(batch)).status();
      if (!s.ok()) {
        LOG(ERROR) << "session " << session.id
                   << ": evictions not submitted: " << s;
      }
    }
  }
  // Planned before the limit's evictions changed what is resident.
  if (work.enforce_limit) {
    RunPrefetch(session);
  } else {
    ApplyPrefetch(session, work.prefetch);
  }
}

AcquireResult MemoryManager::EnterCompute(
    Session& session, const std::vector<uint64_t>& tensor_ids,
    const std::vector<uint64_t>& needed, AccessMode mode, bool on_host) {
  AcquireResult result;
  result.ready_sequence = 0;
  result.map_generation = session.grant_generation;
  result.on_host = on_host;
  const uint64_t tick = tick_.fetch_add(1, std::memory_order_relaxed) + 1;
  for (uint64_t t : tensor_ids) {
    Tensor& tensor = session.tensors.at(t);
    Chunk& c = chunks_.at(tensor.chunk_id);
    CountTransition(c, tensor.state, TensorState::kCompute);
    tensor.state = TensorState::kCompute;
    ++c.compute_count;
    c.last_use_tick = tick;
    if (on_host) {
      tensor.on_host = true;
      ++c.host_compute_count;
      result.ready_sequence =
          std::max(result.ready_sequence, c.host_ready_sequence);
      result.tensors.push_back(
          {t, *c.host_offset + tensor.offset, tensor.bytes});
    } else {
      if (mode == AccessMode::kReadWrite && c.host_offset) c.dirty = true;
      result.ready_sequence =
          std::max(result.ready_sequence, c.arrival_sequence);
      result.tensors.push_back(
          {t, *c.device_offset + tensor.offset, tensor.bytes});
    }
  }
  for (uint64_t cid : needed) {
    const Chunk& c = chunks_.at(cid);
    Reindex(c);
    RecordEvent(c, ResidencyEventKind::kAcquired);
  }
  ++session.stats.acquires;
  return result;
}

absl::StatusOr<AcquireResult> MemoryManager::AcquireOnDevice(
    Session& session_ref, const std::vector<uint64_t>& tensor_ids,
    AccessMode mode, const OpContext* op, bool sequenced) {
  Session* session = &session_ref;
  // Check the whole request before changing anything.
  TP_ASSIGN_OR_RETURN(const std::vector<uint64_t> needed,
                      CheckAcquire(*session, tensor_ids, /*on_host=*/false));
  CopyBatch batch;
  if (sequenced && NoteOp(*session, needed, mode, op)) {
    EnforceLimit(*session, needed, batch);
  }
  std::vector<uint64_t> loaded;
  absl::Status status;
  for (uint64_t cid : needed) {
    Chunk& c = chunks_.at(cid);
    if (c.device_offset) continue;
    status = MakeRoom(*session, c.bytes, needed, batch);
    if (!status.ok()) break;
    auto offset = PlaceSlot(*session, c.bytes, batch);
    if (!offset.ok()) {
      status = offset.status();
      break;
    }
    c.device_offset = *offset;
    c.dirty = false;
    batch.to_device.push_back(CopyOp{*c.host_offset, *offset, c.bytes});
    session->stats.device_bytes +=
        device_state_[session->device].allocator->RoundUp(c.bytes);
    session->stats.peak_device_bytes =
        std::max(session->stats.peak_device_bytes, session->stats.device_bytes);
    loaded.push_back(cid);
    Reindex(c);  // pinned by this request until it is done
  }
  if (!status.ok()) {
    // Undo the loads of this request; evictions already planned still run.
    for (uint64_t cid : loaded) {
      Chunk& c = chunks_.at(cid);
      FreeSlot(session->device, session->id, *c.device_offset, c.bytes);
      session->stats.device_bytes -=
          device_state_[session->device].allocator->RoundUp(c.bytes);
      c.device_offset.reset();
      Reindex(c);
    }
    batch.to_device.clear();
    // Slot backings chosen on the way must be installed even so: their
    // owner may be handed them again.
    if (!batch.to_host.empty() || !batch.installs.empty()) {
      SubmitBatch(session->device, std::move(batch)).IgnoreError();
    }
    return status;
  }
  if (!batch.to_device.empty() || !batch.to_host.empty()) {
    for (const auto& op : batch.to_device) {
      session->stats.bytes_to_device += op.bytes;
    }
    TP_ASSIGN_OR_RETURN(const uint64_t seq,
                        SubmitBatch(session->device, std::move(batch)));
    for (uint64_t cid : loaded) chunks_.at(cid).arrival_sequence = seq;
  }
  for (uint64_t cid : loaded) {
    RecordEvent(chunks_.at(cid), ResidencyEventKind::kLoaded);
  }
  AcquireResult result =
      EnterCompute(*session, tensor_ids, needed, mode, /*on_host=*/false);
  NotePrefetchUse(*session, needed);
  RunPrefetch(*session);
  return result;
}

absl::StatusOr<std::vector<uint64_t>> MemoryManager::CheckAcquire(
    const Session& session, const std::vector<uint64_t>& tensor_ids,
    bool on_host) const {
  std::vector<uint64_t> needed;
  std::set<uint64_t> seen;
  for (uint64_t t : tensor_ids) {
    auto it = session.tensors.find(t);
    if (it == session.tensors.end()) {
      return absl::NotFoundError(
          absl::StrCat("tensor ", t, " is not registered in this session"));
    }
    if (!seen.insert(t).second) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor ", t, " appears twice in one acquire"));
    }
    absl::Status legal =
        CheckTransition(it->second.state, TensorState::kCompute);
    if (!legal.ok()) {
      return absl::FailedPreconditionError(
          absl::StrCat("tensor ", t, " ", QuoteClientText(it->second.name),
                       ": ", legal.message()));
    }
    const Chunk& c = chunks_.at(it->second.chunk_id);
    // A chunk is computed on in one place at a time, or the host and device
    // copies would diverge.
    const int other_side =
        on_host ? c.compute_count - c.host_compute_count : c.host_compute_count;
    if (other_side > 0) {
      return absl::FailedPreconditionError(absl::StrCat(
          "tensor ", t, " ", QuoteClientText(it->second.name),
          ": its chunk is in use on the ", on_host ? "device" : "host",
          "; release those tensors first"));
    }
    if (on_host && !c.host_offset) {
      return absl::FailedPreconditionError(absl::StrCat(
          "tensor ", t, " ", QuoteClientText(it->second.name),
          " lives only on the device (policy cuda) and has no host copy"));
    }
    if (std::find(needed.begin(), needed.end(), c.id) == needed.end()) {
      needed.push_back(c.id);
    }
  }
  return needed;
}

absl::StatusOr<AcquireResult> MemoryManager::AcquireOnHost(
    uint64_t id, const Token& token, const std::vector<uint64_t>& tensor_ids,
    AccessMode mode) {
  TP_RETURN_IF_ERROR(CheckRequestSize(tensor_ids));
  {
    absl::ReaderMutexLock core(&mu_);
    TP_ASSIGN_OR_RETURN(Session * session, Authenticate(id, token));
    absl::MutexLock own(session->mu.get());
    TP_ASSIGN_OR_RETURN(
        std::optional<AcquireResult> done,
        AcquireWithoutMoves(*session, tensor_ids, mode, /*on_host=*/true,
                            nullptr, nullptr));
    if (done) return *std::move(done);
  }
  absl::MutexLock lock(&mu_);
  TP_ASSIGN_OR_RETURN(Session * session, Authenticate(id, token));
  return AcquireInHostHome(*session, tensor_ids, mode);
}

absl::StatusOr<AcquireResult> MemoryManager::AcquireWherePlaced(
    uint64_t id, const Token& token, const std::vector<uint64_t>& tensor_ids,
    AccessMode mode) {
  TP_RETURN_IF_ERROR(CheckRequestSize(tensor_ids));
  {
    absl::ReaderMutexLock core(&mu_);
    TP_ASSIGN_OR_RETURN(Session * session, Authenticate(id, token));
    // A placement decides (and learns) where updates run: the core.
    if (session->placement == nullptr) {
      absl::MutexLock own(session->mu.get());
      TP_ASSIGN_OR_RETURN(const UpdateSite site,
                          LocateUpdate(*session, tensor_ids, mode));
      const bool on_device = !site.host_homes || site.resident;
      TP_ASSIGN_OR_RETURN(std::optional<AcquireResult> done,
                          AcquireWithoutMoves(*session, tensor_ids, mode,
                                              !on_device, nullptr, nullptr));
      if (done) {
        observer().OnPlacedUpdate(session->device, on_device);
        return *std::move(done);
      }
    }
  }
  absl::MutexLock lock(&mu_);
  TP_ASSIGN_OR_RETURN(Session * session, Authenticate(id, token));
  TP_ASSIGN_OR_RETURN(UpdateSite site,
                      LocateUpdate(*session, tensor_ids, mode));
  std::vector<SessionPlacement::Touch>& touches = site.touches;
  const bool host_homes = site.host_homes;
  const bool resident = site.resident;
  // cuda: nowhere else to go; cpu: where the chunks are now.
  bool on_device = !host_homes || resident;
  if (host_homes && session->placement) {
    on_device = session->placement->OnPlacedAcquire(touches, resident);
  }
  absl::StatusOr<AcquireResult> result;
  if (on_device) {
    result = AcquireOnDevice(*session, tensor_ids, mode, nullptr,
                             /*sequenced=*/false);
    // The device is full (other sessions' COMPUTE chunks): the host homes
    // still serve, as under `cpu`.
    if (!result.ok() && host_homes &&
        result.status().code() == absl::StatusCode::kResourceExhausted) {
      on_device = false;
    }
  }
  if (!on_device) result = AcquireInHostHome(*session, tensor_ids, mode);
  if (!result.ok()) return result;
  result->on_host = !on_device;
  if (session->placement) {
    session->placement->OnPlacedServed(touches, on_device);
  }
  observer().OnPlacedUpdate(session->device, on_device);
  return result;
}

absl::StatusOr<MemoryManager::UpdateSite> MemoryManager::LocateUpdate(
    const Session& session, const std::vector<uint64_t>& tensor_ids,
    AccessMode mode) const {
  UpdateSite site;
  for (uint64_t t : tensor_ids) {
    auto it = session.tensors.find(t);
    if (it == session.tensors.end()) {
      return absl::NotFoundError(
          absl::StrCat("tensor ", t, " is not registered in this session"));
    }
    const Chunk& c = chunks_.at(it->second.chunk_id);
    site.host_homes = site.host_homes && c.host_offset.has_value();
    site.resident = site.resident && c.device_offset.has_value() &&
                    c.host_compute_count == 0;
    if (std::none_of(site.touches.begin(), site.touches.end(),
                     [&](const auto& touch) { return touch.chunk == c.id; })) {
      site.touches.push_back({c.id, c.bytes, mode == AccessMode::kReadWrite});
    }
  }
  return site;
}

absl::StatusOr<AcquireResult> MemoryManager::AcquireInHostHome(
    Session& session_ref, const std::vector<uint64_t>& tensor_ids,
    AccessMode mode) {
  Session* session = &session_ref;
  TP_ASSIGN_OR_RETURN(const std::vector<uint64_t> needed,
                      CheckAcquire(*session, tensor_ids, /*on_host=*/true));
  CopyBatch batch;
  for (uint64_t cid : needed) {
    Chunk& c = chunks_.at(cid);
    if (!c.device_offset) continue;
    if (mode == AccessMode::kReadWrite) {
      // The host home is about to change: drop the device copy (after
      // writing it back if it is the newer one).
      Evict(c, EvictionCause::kHostAccess, batch);
    } else if (c.dirty) {
      QueueWriteBack(c, *session, batch);
    }
  }
  if (!batch.to_host.empty()) {
    TP_RETURN_IF_ERROR(SubmitBatch(session->device, std::move(batch)).status());
  }
  return EnterCompute(*session, tensor_ids, needed, mode, /*on_host=*/true);
}

absl::Status MemoryManager::Release(uint64_t id, const Token& token,
                                    const std::vector<uint64_t>& tensor_ids,
                                    TensorState target) {
  TP_RETURN_IF_ERROR(CheckRequestSize(tensor_ids));
  if (target != TensorState::kHold && target != TensorState::kHoldAfterBwd &&
      target != TensorState::kFree) {
    return absl::InvalidArgumentError(
        absl::StrCat("release target must be HOLD, HOLD_AFTER_BWD or FREE, "
                     "not ",
                     TensorStateName(target)));
  }
  PrefetchWork prefetch;
  {
    absl::ReaderMutexLock core(&mu_);
    TP_ASSIGN_OR_RETURN(Session * session, Authenticate(id, token));
    absl::MutexLock own(session->mu.get());
    TP_RETURN_IF_ERROR(ReleaseTensors(*session, tensor_ids, target));
    // Released chunks may make room for what the plan needs next: only
    // then does a release need the core.
    prefetch = PlanPrefetchWork(*session);
    if (prefetch.empty()) return absl::OkStatus();
  }
  absl::MutexLock lock(&mu_);
  TP_ASSIGN_OR_RETURN(Session * session, Authenticate(id, token));
  ApplyPrefetch(*session, prefetch);
  return absl::OkStatus();
}

absl::Status MemoryManager::ReleaseTensors(
    Session& session_ref, const std::vector<uint64_t>& tensor_ids,
    TensorState target) {
  Session* session = &session_ref;
  std::set<uint64_t> seen;
  for (uint64_t t : tensor_ids) {
    auto it = session->tensors.find(t);
    if (it == session->tensors.end()) {
      return absl::NotFoundError(
          absl::StrCat("tensor ", t, " is not registered in this session"));
    }
    if (!seen.insert(t).second) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor ", t, " appears twice in one release"));
    }
    absl::Status legal = CheckTransition(it->second.state, target);
    if (!legal.ok()) {
      return absl::FailedPreconditionError(
          absl::StrCat("tensor ", t, " ", QuoteClientText(it->second.name),
                       ": ", legal.message()));
    }
  }
  const uint64_t tick = tick_.fetch_add(1, std::memory_order_relaxed) + 1;
  std::vector<uint64_t> released;  // chunks, in first-release order
  for (uint64_t t : tensor_ids) {
    Tensor& tensor = session->tensors.at(t);
    Chunk& c = chunks_.at(tensor.chunk_id);
    if (std::find(released.begin(), released.end(), c.id) == released.end()) {
      released.push_back(c.id);
    }
    if (tensor.state == TensorState::kCompute) --c.compute_count;
    if (tensor.on_host) {
      --c.host_compute_count;
      tensor.on_host = false;
    }
    CountTransition(c, tensor.state, target);
    tensor.state = target;
    c.last_use_tick = tick;
    // A chunk whose tensors are all FREE holds nothing worth keeping:
    // evicting it must not cost a write-back.
    if (target == TensorState::kFree && c.busy_tensors == 0) c.dirty = false;
  }
  for (uint64_t cid : released) {
    Reindex(chunks_.at(cid));
    RecordEvent(chunks_.at(cid), ResidencyEventKind::kReleased);
  }
  return absl::OkStatus();
}

}  // namespace tidepool
