#include "daemon/core/memory_manager.h"

#include <glog/logging.h>
#include <malloc.h>
#include <sys/random.h>

#include <algorithm>
#include <cstring>
#include <set>

#include "absl/strings/str_cat.h"
#include "common/client_text.h"
#include "common/status_macros.h"

namespace tidepool {
namespace {

constexpr uint64_t kHostAlignment = 4096;

absl::StatusOr<Token> NewToken() {
  Token token;
  size_t got = 0;
  while (got < token.size()) {
    ssize_t n = ::getrandom(token.data() + got, token.size() - got, 0);
    if (n < 0) return absl::ErrnoToStatus(errno, "getrandom");
    got += static_cast<size_t>(n);
  }
  return token;
}

bool TokensEqual(const Token& a, const Token& b) {
  uint8_t diff = 0;  // constant time: no early exit on the first mismatch
  for (size_t i = 0; i < a.size(); ++i) diff |= a[i] ^ b[i];
  return diff == 0;
}

}  // namespace

MemoryManager::MemoryManager(
    ManagerOptions options, HostPool host_pool,
    std::vector<std::unique_ptr<DeviceBackend>> devices)
    : options_(std::move(options)),
      host_pool_(std::move(host_pool)),
      devices_(std::move(devices)),
      host_allocator_(host_pool_.size(), kHostAlignment) {
  for (const auto& d : devices_) {
    const auto& desc = d->description();
    device_state_.push_back(Device{std::make_unique<RangeAllocator>(
        desc.capacity_bytes,
        std::max<uint64_t>(desc.granularity, kHostAlignment))});
  }
}

MemoryManager::~MemoryManager() {
  for (auto& d : devices_) d->Drain().IgnoreError();
}

absl::StatusOr<size_t> MemoryManager::ResolveDevice(
    const std::string& name) const {
  if (devices_.empty()) return absl::UnavailableError("no devices configured");
  if (name.empty()) return 0;
  for (size_t i = 0; i < devices_.size(); ++i) {
    const auto& d = devices_[i]->description();
    if (d.name == name || d.uuid == name || absl::StrCat(d.ordinal) == name ||
        absl::StrCat(d.backend, ":", d.ordinal) == name) {
      return i;
    }
  }
  std::string known;
  for (const auto& d : devices_) {
    absl::StrAppend(&known, known.empty() ? "" : ", ", d->description().name);
  }
  return absl::NotFoundError(absl::StrCat("no device ", QuoteClientText(name),
                                          " on this node (have: ", known, ")"));
}

absl::StatusOr<OpenedSession> MemoryManager::OpenSession(
    const OpenParams& params) {
  if (params.pid <= 0) {
    return absl::InvalidArgumentError("pid must be the client's process id");
  }
  if (params.client_name.size() > 64) {
    return absl::InvalidArgumentError("client_name longer than 64 bytes");
  }
  // Names end up in stats, logs and tidepoolctl's output: UTF-8 only.
  TP_RETURN_IF_ERROR(CheckUtf8("client_name", params.client_name));
  if (params.device.size() > 256) {
    return absl::InvalidArgumentError(absl::StrCat(
        "device name of ", params.device.size(),
        " bytes is too long (at most 256): ", QuoteClientText(params.device)));
  }
  TP_RETURN_IF_ERROR(CheckUtf8("device name", params.device));
  if (params.peer && params.peer->pid != 0 && params.peer->pid != params.pid) {
    // The fd socket would refuse its attach anyway; say so now.
    return absl::PermissionDeniedError(absl::StrCat(
        "the request says pid ", params.pid, " but comes from pid ",
        params.peer->pid, ": a session belongs to the process that opens it"));
  }
  const uint64_t chunk_size =
      params.chunk_size == 0 ? options_.chunk_size : params.chunk_size;
  if (params.chunk_size != 0 &&
      (chunk_size < options_.min_session_chunk_size ||
       chunk_size > options_.max_session_chunk_size ||
       chunk_size > host_pool_.size() || chunk_size % kTensorAlignment != 0)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "chunk_size ", chunk_size, " bytes is out of range: a multiple of ",
        kTensorAlignment, " in [", options_.min_session_chunk_size, ", ",
        std::min<uint64_t>(options_.max_session_chunk_size, host_pool_.size()),
        "]"));
  }
  TP_ASSIGN_OR_RETURN(const size_t device, ResolveDevice(params.device));
  const Policy policy = params.policy.value_or(options_.default_policy);
  const PlacementConfig config = params.placement.value_or(options_.placement);
  auto in_range = [](double v, double lo, double hi) {
    return v >= lo && v <= hi;  // false for NaN
  };
  if (config.warmup_steps < 1 || config.warmup_steps > 1000) {
    return absl::InvalidArgumentError("warmup_steps must be in [1, 1000]");
  }
  if (!in_range(config.margin_ratio, 0, 0.9) ||
      !in_range(config.non_model_tolerance, 0, 100) ||
      !in_range(config.static_param_offload, 0, 1) ||
      !in_range(config.static_optim_offload, 0, 1) ||
      !in_range(config.gemini_capacity_ratio, 0.01, 1) ||
      !in_range(config.gemini_warmup_non_model_ratio, 0, 1)) {
    return absl::InvalidArgumentError(
        "placement settings out of range: margin_ratio in [0, 0.9], "
        "offload fractions in [0, 1]");
  }
  TP_ASSIGN_OR_RETURN(Token token, NewToken());
  absl::MutexLock lock(&mu_);
  if (sessions_.size() >= options_.max_sessions) {
    return absl::ResourceExhaustedError(
        absl::StrCat("too many sessions open (", sessions_.size(),
                     ", the limit max_sessions); close some first"));
  }
  if (params.peer) {
    // Linear in the sessions (at most max_sessions), once per open.
    size_t same_pid = 0, same_uid = 0;
    for (const auto& [other_id, other] : sessions_) {
      if (!other.peer) continue;
      if (params.peer->pid != 0 && other.peer->pid == params.peer->pid) {
        ++same_pid;
      }
      if (other.peer->uid == params.peer->uid) ++same_uid;
    }
    if (params.peer->pid != 0 && same_pid >= options_.max_sessions_per_pid) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "process ", params.peer->pid, " has ", same_pid,
          " sessions open, the limit max_sessions_per_pid; close some first"));
    }
    if (same_uid >= options_.max_sessions_per_uid) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "user ", params.peer->uid, " has ", same_uid,
          " sessions open, the limit max_sessions_per_uid; close some first"));
    }
  }
  const uint64_t id = next_session_id_++;
  Session s{.id = id,
            .token = token,
            .policy = policy,
            .device = device,
            .device_quota = params.device_quota,
            .host_quota = params.host_quota,
            .pid = params.pid,
            .client_name = params.client_name,
            .peer = params.peer,
            .opened_at = absl::Now(),
            .packer = ChunkPacker(chunk_size)};
  s.stats.id = id;
  if (policy == Policy::kAuto || policy == Policy::kStatic) {
    const auto& desc = devices_[device]->description();
    s.placement = std::make_unique<SessionPlacement>(
        policy, config, desc.capacity_bytes,
        std::max<uint64_t>(desc.granularity, kHostAlignment));
  }
  sessions_.emplace(id, std::move(s));
  device_state_[device].sessions.insert(id);
  observer().OnSessionOpened(device, policy);
  LOG(INFO) << "session " << id << " opened: pid " << params.pid << ", policy "
            << PolicyName(policy) << ", device "
            << devices_[device]->description().name;
  return OpenedSession{id,         token,
                       policy,     &devices_[device]->description(),
                       chunk_size, host_pool_.size()};
}

absl::StatusOr<MemoryManager::Session*> MemoryManager::Authenticate(
    uint64_t id, const Token& token) {
  auto it = sessions_.find(id);
  if (it == sessions_.end() || !TokensEqual(it->second.token, token)) {
    // One message for both, so that ids cannot be probed.
    return absl::PermissionDeniedError(
        absl::StrCat("unknown session ", id, " or wrong token"));
  }
  return &it->second;
}

absl::Status MemoryManager::CloseSession(uint64_t id, const Token& token) {
  {
    absl::MutexLock lock(&mu_);
    TP_RETURN_IF_ERROR(Authenticate(id, token).status());
  }
  Reclaim(id, ReclaimReason::kClosed);
  return absl::OkStatus();
}

ChunkView MemoryManager::View(const Chunk& c) {
  return ChunkView{
      c.id,    c.bytes,       c.group,        c.device_offset.has_value(),
      c.dirty, c.host_offset, c.device_offset};
}

std::vector<std::optional<MemoryManager::HostHome>>
MemoryManager::PlanHostHomes(Session& session,
                             const std::vector<TensorSpec>& specs,
                             const std::vector<uint64_t>& sizes) {
  std::vector<std::optional<HostHome>> homes;
  if (session.policy == Policy::kCuda) return homes;
  // The chunks this request will create, as the packer will create them.
  ChunkPacker packer = session.packer;
  std::vector<uint64_t> chunk_bytes;
  for (size_t i = 0; i < specs.size(); ++i) {
    const int group = static_cast<int>(specs[i].group);
    ChunkPacker::Slot slot = packer.Place(group, sizes[i]);
    if (!slot.new_chunk) continue;
    chunk_bytes.push_back(host_allocator_.RoundUp(slot.chunk_bytes));
    if (slot.appendable) packer.SetOpenChunk(group, chunk_bytes.size());
  }
  homes.resize(chunk_bytes.size());
  // Slabs of consecutive chunks, each at most kMaxSlabBytes (so that a
  // fragmented pool still finds room); a lone chunk gets a slab of one
  // from CreateChunk.
  constexpr uint64_t kMaxSlabBytes = 1ull << 30;
  size_t first = 0;
  while (first < chunk_bytes.size()) {
    size_t end = first;
    uint64_t bytes = 0;
    while (end < chunk_bytes.size() &&
           (end == first || bytes + chunk_bytes[end] <= kMaxSlabBytes)) {
      bytes += chunk_bytes[end++];
    }
    const size_t count = end - first;
    const size_t begin = first;
    first = end;
    if (count < 2) continue;
    // No room for the slab: the chunks get slabs of one (CreateChunk),
    // which a fragmented pool may still find, or a clear error.
    absl::StatusOr<uint64_t> offset =
        NewHostSlab(session, bytes, static_cast<int>(count));
    if (!offset.ok()) continue;
    uint64_t at = *offset;
    for (size_t k = begin; k < end; ++k) {
      homes[k] = HostHome{.slab = *offset, .offset = at};
      at += chunk_bytes[k];
    }
  }
  return homes;
}

absl::StatusOr<uint64_t> MemoryManager::NewHostSlab(Session& session,
                                                    uint64_t bytes, int homes) {
  absl::StatusOr<uint64_t> offset = host_allocator_.Allocate(bytes);
  if (!offset.ok()) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "host pool exhausted: ", bytes, " bytes of host homes do not fit (",
        host_allocator_.used(), " of ", host_allocator_.capacity(),
        " bytes in use); raise host_pool_bytes"));
  }
  // A fresh memfd of its own: zero-filled, and mapped by this session's
  // client alone.
  absl::StatusOr<UniqueFd> fd = host_pool_.Back(*offset, bytes);
  absl::Status pinned = fd.ok() ? devices_[session.device]->PinHost(
                                      host_pool_.data() + *offset, bytes)
                                : fd.status();
  if (!pinned.ok()) {
    if (fd.ok()) host_pool_.Withdraw(*offset, bytes).IgnoreError();
    host_allocator_.Free(*offset).IgnoreError();
    return absl::ResourceExhaustedError(absl::StrCat(
        "could not back a host home of ", bytes, " bytes: ", pinned.message()));
  }
  Grant(session, /*device=*/false, *offset, bytes,
        std::make_shared<UniqueFd>(std::move(*fd)));
  host_slabs_[*offset] =
      HostSlab{.bytes = bytes, .device = session.device, .homes = homes};
  return *offset;
}

void MemoryManager::ReleaseSlabHome(uint64_t slab) {
  auto it = host_slabs_.find(slab);
  if (it == host_slabs_.end() || --it->second.homes > 0) return;
  devices_[it->second.device]->UnpinHost(host_pool_.data() + slab);
  // Its pages are freed, so nothing of it survives in a mapping that its
  // (possibly still running) client keeps.
  absl::Status s = host_pool_.Withdraw(slab, it->second.bytes);
  if (!s.ok()) LOG(ERROR) << "host slab at " << slab << ": " << s;
  host_allocator_.Free(slab).IgnoreError();
  host_slabs_.erase(it);
}

absl::StatusOr<uint64_t> MemoryManager::CreateChunk(
    Session& session, Group group, uint64_t bytes, CopyBatch& batch,
    std::optional<HostHome> home) {
  Chunk chunk{.id = next_chunk_id_,
              .session_id = session.id,
              .device = session.device,
              .group = group,
              .bytes = bytes};
  if (session.policy == Policy::kCuda) {
    // Device-only: the chunk lives on the GPU for its whole life.
    Device& dev = device_state_[session.device];
    const uint64_t rounded = dev.allocator->RoundUp(bytes);
    if (session.device_quota != 0 &&
        session.stats.device_bytes + rounded > session.device_quota) {
      return absl::ResourceExhaustedError(
          absl::StrCat("policy cuda: chunk of ", bytes,
                       " bytes exceeds the session's "
                       "device quota (",
                       session.stats.device_bytes, " of ", session.device_quota,
                       " bytes used)"));
    }
    auto offset = PlaceSlot(session, bytes, batch);
    if (!offset.ok()) {
      if (!absl::IsResourceExhausted(offset.status())) return offset.status();
      return absl::ResourceExhaustedError(
          absl::StrCat("policy cuda: the model does not fit on ",
                       devices_[session.device]->description().name,
                       ": a chunk of ", bytes, " bytes needs room but ",
                       dev.allocator->used(), " of ", dev.allocator->capacity(),
                       " bytes are in use; use policy 'cpu' to offload"));
    }
    chunk.device_offset = *offset;
    batch.zero_device.push_back(CopyOp{0, *offset, rounded});
    session.stats.device_bytes += rounded;
    session.stats.peak_device_bytes =
        std::max(session.stats.peak_device_bytes, session.stats.device_bytes);
  } else {
    const uint64_t rounded = host_allocator_.RoundUp(bytes);
    if (session.host_quota != 0 &&
        session.stats.host_bytes + rounded > session.host_quota) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "chunk of ", bytes, " bytes exceeds the session's host quota (",
          session.stats.host_bytes, " of ", session.host_quota,
          " bytes used)"));
    }
    if (!home) {  // a slab of one
      TP_ASSIGN_OR_RETURN(const uint64_t slab,
                          NewHostSlab(session, rounded, /*homes=*/1));
      home = HostHome{.slab = slab, .offset = slab};
    }
    chunk.host_offset = home->offset;
    chunk.host_slab = home->slab;
    session.stats.host_bytes += rounded;
  }
  ++next_chunk_id_;
  session.chunks.push_back(chunk.id);
  ++session.stats.chunks;
  const uint64_t id = chunk.id;
  Reindex(chunks_.emplace(id, std::move(chunk)).first->second);
  return id;
}

void MemoryManager::DestroyChunk(uint64_t chunk_id) {
  auto it = chunks_.find(chunk_id);
  if (it == chunks_.end()) return;
  Chunk& c = it->second;
  if (c.device_offset) {
    FreeSlot(c.device, c.session_id, *c.device_offset, c.bytes);
    c.device_offset.reset();
  }
  Reindex(c);  // no device copy: out of every index
  if (c.host_slab) ReleaseSlabHome(*c.host_slab);
  chunks_.erase(it);
}

absl::StatusOr<uint64_t> MemoryManager::PlaceSlot(Session& owner,
                                                  uint64_t bytes,
                                                  CopyBatch& batch) {
  RangeAllocator& alloc = *device_state_[owner.device].allocator;
  DeviceBackend& backend = *devices_[owner.device];
  const uint64_t rounded = alloc.RoundUp(bytes);
  // A slot parked for this session is reused where it is: its client maps
  // it already and its pages are warm.
  std::optional<uint64_t> offset = backend.ParkedSlot(owner.id, rounded);
  if (offset && !alloc.AllocateAt(*offset, rounded)) offset.reset();
  if (!offset) {
    absl::StatusOr<uint64_t> fresh = alloc.Allocate(rounded);
    if (!fresh.ok()) return fresh.status();
    offset = *fresh;
  }
  absl::StatusOr<std::shared_ptr<UniqueFd>> fd =
      backend.BackSlot(*offset, rounded, owner.id, batch);
  if (!fd.ok()) {
    alloc.Free(*offset).IgnoreError();
    return absl::ResourceExhaustedError(
        absl::StrCat("could not back a device slot of ", rounded,
                     " bytes: ", fd.status().message()));
  }
  if (*fd != nullptr) {
    Grant(owner, /*device=*/true, *offset, rounded, std::move(*fd));
  }
  return *offset;
}

void MemoryManager::FreeSlot(size_t device, uint64_t owner, uint64_t offset,
                             uint64_t bytes) {
  RangeAllocator& alloc = *device_state_[device].allocator;
  alloc.Free(offset).IgnoreError();
  devices_[device]->ReleaseSlot(offset, alloc.RoundUp(bytes), owner);
}

void MemoryManager::Grant(Session& session, bool device, uint64_t offset,
                          uint64_t bytes, std::shared_ptr<UniqueFd> fd) {
  session.grants.push_back(
      MappingGrant{.device = device,
                   .offset = offset,
                   .bytes = bytes,
                   .generation = ++session.grant_generation,
                   .fd = std::move(fd)});
}

std::vector<MappingGrant> MemoryManager::TakeGrants(uint64_t session_id,
                                                    size_t max) {
  absl::MutexLock lock(&mu_);
  std::vector<MappingGrant> out;
  auto it = sessions_.find(session_id);
  if (it == sessions_.end()) return out;
  auto& grants = it->second.grants;
  while (!grants.empty() && out.size() < max) {
    out.push_back(std::move(grants.front()));
    grants.pop_front();
  }
  return out;
}

absl::StatusOr<RegisterResult> MemoryManager::Register(
    uint64_t id, const Token& token, const std::vector<TensorSpec>& specs) {
  if (specs.empty()) return absl::InvalidArgumentError("no tensors given");
  if (specs.size() > options_.max_tensors_per_request) {
    return absl::InvalidArgumentError(
        absl::StrCat("too many tensors in one request (", specs.size(), " > ",
                     options_.max_tensors_per_request, ")"));
  }
  // Validate every spec before touching any state.
  std::vector<uint64_t> sizes;
  sizes.reserve(specs.size());
  uint64_t metadata = 0;
  for (size_t i = 0; i < specs.size(); ++i) {
    const TensorSpec& t = specs[i];
    auto bad = [&](absl::string_view why) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor #", i, " ", QuoteClientText(t.name), ": ", why));
    };
    if (t.name.empty()) return bad("empty name");
    if (t.name.size() > options_.max_name_bytes) {
      return bad(
          absl::StrCat("name longer than ", options_.max_name_bytes, " bytes"));
    }
    TP_RETURN_IF_ERROR(CheckUtf8(absl::StrCat("tensor #", i, " name"), t.name));
    metadata += TensorMetadataBytes(t.name.size());
    if (t.shape.size() > options_.max_dims) return bad("too many dimensions");
    const uint64_t elem = DTypeSize(t.dtype);
    if (elem == 0) return bad("unknown dtype");
    uint64_t bytes = elem;
    for (int64_t d : t.shape) {
      if (d < 0) return bad("negative dimension");
      if (d == 0) return bad("empty tensor (a dimension is 0)");
      if (bytes > host_pool_.size() / static_cast<uint64_t>(d)) {
        return bad("larger than the host pool");
      }
      bytes *= static_cast<uint64_t>(d);
    }
    sizes.push_back(bytes);
  }

  absl::MutexLock lock(&mu_);
  TP_ASSIGN_OR_RETURN(Session * session, Authenticate(id, token));
  // What the session's tensors cost the daemon's heap is bounded, and part
  // of its host quota: names and bookkeeping are host memory it uses.
  if (session->tensors.size() + specs.size() >
      options_.max_tensors_per_session) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "session ", id, " would hold ", session->tensors.size() + specs.size(),
        " tensors, more than max_tensors_per_session (",
        options_.max_tensors_per_session, ")"));
  }
  if (session->stats.metadata_bytes + metadata >
      options_.max_metadata_bytes_per_session) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "session ", id, ": tensor metadata (names and bookkeeping) would take ",
        session->stats.metadata_bytes + metadata,
        " bytes, more than max_metadata_bytes_per_session (",
        options_.max_metadata_bytes_per_session,
        "); register fewer tensors or shorter names"));
  }
  auto over_quota = [&]() -> absl::Status {
    const uint64_t used =
        session->stats.host_bytes + session->stats.metadata_bytes + metadata;
    if (session->host_quota == 0 || used <= session->host_quota) {
      return absl::OkStatus();
    }
    return absl::ResourceExhaustedError(absl::StrCat(
        "tensors exceed the session's host quota (", session->host_quota,
        " bytes): ", session->stats.host_bytes, " bytes of chunks and ",
        session->stats.metadata_bytes + metadata, " bytes of tensor metadata"));
  };
  TP_RETURN_IF_ERROR(over_quota());
  // All or nothing: remember what to undo if a later tensor fails.
  const ChunkPacker saved_packer = session->packer;
  std::vector<uint64_t> new_chunks;
  std::vector<uint64_t> new_tensors;
  const std::vector<std::optional<HostHome>> homes =
      PlanHostHomes(*session, specs, sizes);
  CopyBatch batch;
  RegisterResult result;
  absl::Status status;
  for (size_t i = 0; i < specs.size() && status.ok(); ++i) {
    const TensorSpec& t = specs[i];
    const int group = static_cast<int>(t.group);
    ChunkPacker::Slot slot = session->packer.Place(group, sizes[i]);
    uint64_t chunk_id;
    if (slot.new_chunk) {
      const size_t k = new_chunks.size();
      auto created = CreateChunk(*session, t.group, slot.chunk_bytes, batch,
                                 k < homes.size() ? homes[k] : std::nullopt);
      if (!created.ok()) {
        status = absl::Status(created.status().code(),
                              absl::StrCat("tensor ", QuoteClientText(t.name),
                                           ": ", created.status().message()));
        break;
      }
      chunk_id = *created;
      new_chunks.push_back(chunk_id);
      if (slot.appendable) session->packer.SetOpenChunk(group, chunk_id);
    } else {
      chunk_id = *session->packer.OpenChunk(group);
    }
    const uint64_t tensor_id = next_tensor_id_++;
    session->tensors.emplace(
        tensor_id, Tensor{tensor_id, t.name, t.dtype, t.group, chunk_id,
                          slot.offset_in_chunk, sizes[i]});
    chunks_.at(chunk_id).tensors.push_back(tensor_id);
    new_tensors.push_back(tensor_id);
    result.tensors.push_back(
        {tensor_id, chunk_id, slot.offset_in_chunk, sizes[i]});
  }
  if (status.ok()) status = over_quota();  // with the new chunks
  if (!status.ok()) {
    for (uint64_t t : new_tensors) {
      auto& tensor = session->tensors.at(t);
      auto& owners = chunks_.at(tensor.chunk_id).tensors;
      owners.erase(std::remove(owners.begin(), owners.end(), t), owners.end());
      session->tensors.erase(t);
    }
    for (uint64_t c : new_chunks) {
      const Chunk& chunk = chunks_.at(c);
      if (chunk.host_offset) {
        session->stats.host_bytes -= host_allocator_.RoundUp(chunk.bytes);
      }
      if (chunk.device_offset) {
        session->stats.device_bytes -=
            device_state_[session->device].allocator->RoundUp(chunk.bytes);
      }
      --session->stats.chunks;
      session->chunks.pop_back();
      DestroyChunk(c);
    }
    // Homes planned for chunks the failure left uncreated.
    for (size_t k = new_chunks.size(); k < homes.size(); ++k) {
      if (homes[k]) ReleaseSlabHome(homes[k]->slab);
    }
    session->packer = saved_packer;
    return status;
  }
  session->stats.tensors += new_tensors.size();
  session->stats.metadata_bytes += metadata;
  for (uint64_t c : new_chunks) {
    const Chunk& chunk = chunks_.at(c);
    RecordEvent(chunk, ResidencyEventKind::kCreated);
    if (session->placement) {
      session->placement->OnChunkCreated(c, chunk.group, chunk.bytes);
    }
  }
  if (!batch.zero_device.empty()) {
    TP_ASSIGN_OR_RETURN(const uint64_t seq,
                        SubmitBatch(session->device, std::move(batch)));
    for (uint64_t c : new_chunks) chunks_.at(c).arrival_sequence = seq;
  }
  for (uint64_t c : new_chunks)
    result.new_chunks.push_back(View(chunks_.at(c)));
  return result;
}

absl::StatusOr<std::optional<PlacementStatsView>> MemoryManager::MarkStep(
    uint64_t id, const Token& token) {
  absl::MutexLock lock(&mu_);
  TP_ASSIGN_OR_RETURN(Session * session, Authenticate(id, token));
  if (session->placement == nullptr) return std::nullopt;
  session->placement->OnStep();
  return session->placement->stats();
}

absl::StatusOr<StatsView> MemoryManager::Stats(uint64_t id,
                                               const Token& token) {
  absl::MutexLock lock(&mu_);
  TP_ASSIGN_OR_RETURN(Session * session, Authenticate(id, token));
  StatsView v;
  v.session = session->stats;
  if (session->placement) v.placement = session->placement->stats();
  const auto& alloc = *device_state_[session->device].allocator;
  v.device_pool = {alloc.capacity(), alloc.used(), alloc.peak()};
  v.host_pool = {host_allocator_.capacity(), host_allocator_.used(),
                 host_allocator_.peak()};
  v.sessions = static_cast<uint32_t>(sessions_.size());
  return v;
}

absl::StatusOr<std::vector<ChunkView>> MemoryManager::Chunks(
    uint64_t id, const Token& token) {
  absl::MutexLock lock(&mu_);
  TP_ASSIGN_OR_RETURN(Session * session, Authenticate(id, token));
  std::vector<ChunkView> out;
  for (uint64_t c : session->chunks) out.push_back(View(chunks_.at(c)));
  return out;
}

absl::StatusOr<AttachGrant> MemoryManager::Attach(
    const wire::AttachRequest& request, const PeerCredentials& peer) {
  Token token;
  std::memcpy(token.data(), request.token, token.size());
  absl::MutexLock lock(&mu_);
  TP_ASSIGN_OR_RETURN(Session * session,
                      Authenticate(request.session_id, token));
  if (session->attached) {
    return absl::AlreadyExistsError(
        absl::StrCat("session ", session->id, " is already attached"));
  }
  // SO_PEERCRED reports pid 0 for a peer outside our pid namespace (a
  // trainer in another container): its pid cannot be checked, and the token
  // alone proves ownership. Inside our namespace the pids must agree.
  if (peer.pid != 0 && peer.pid != session->pid) {
    return absl::PermissionDeniedError(
        absl::StrCat("session ", session->id, " belongs to pid ", session->pid,
                     ", not to the connecting pid ", peer.pid));
  }
  DeviceBackend* backend = devices_[session->device].get();
  TP_RETURN_IF_ERROR(backend->AddSession(session->id, request));
  session->attached = true;
  return AttachGrant{backend, host_pool_.size()};
}

void MemoryManager::Detached(uint64_t id) {
  Reclaim(id, ReclaimReason::kDisconnected);
}

void MemoryManager::ReapUnattached(absl::Time now) {
  std::vector<uint64_t> stale;
  {
    absl::MutexLock lock(&mu_);
    for (const auto& [id, s] : sessions_) {
      if (!s.attached && now - s.opened_at > options_.attach_timeout) {
        stale.push_back(id);
      }
    }
  }
  for (uint64_t id : stale) Reclaim(id, ReclaimReason::kAttachTimeout);
}

void MemoryManager::Reclaim(uint64_t id, ReclaimReason reason) {
  std::vector<uint64_t> chunk_ids;
  size_t device;
  bool was_attached;
  {
    absl::MutexLock lock(&mu_);
    auto it = sessions_.find(id);
    if (it == sessions_.end()) return;  // already reclaimed
    device = it->second.device;
    was_attached = it->second.attached;
    chunk_ids = std::move(it->second.chunks);
    // From here no request authenticates as this session. Its chunks stay
    // allocated, pinned so that no eviction picks them, until the copies
    // already submitted for them have finished.
    observer().OnSessionReclaimed(device, it->second.policy, reason);
    sessions_.erase(it);
    device_state_[device].sessions.erase(id);
    for (uint64_t c : chunk_ids) chunks_.at(c).compute_count = 1 << 30;
    LOG(INFO) << "session " << id << " reclaimed (" << ReclaimReasonName(reason)
              << "): " << chunk_ids.size() << " chunks";
  }
  // The session's tensors and trace were freed with it; without a trim
  // glibc keeps the pages (a session with 260k long names left 266 MiB).
  ::malloc_trim(0);
  devices_[device]->Drain().IgnoreError();
  if (was_attached) devices_[device]->RemoveSession(id);
  absl::MutexLock lock(&mu_);
  for (uint64_t c : chunk_ids) DestroyChunk(c);
  devices_[device]->ForgetOwner(id);
}

}  // namespace tidepool
