#include "daemon/server/grpc_service.h"

#include <algorithm>
#include <chrono>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "common/client_text.h"
#include "common/status_macros.h"
#include "proto/convert.h"

namespace tidepool {
namespace {

absl::StatusOr<Token> TokenOf(const v1::SessionRef& ref) {
  Token token;
  if (ref.token().size() != token.size()) {
    return absl::PermissionDeniedError(
        absl::StrCat("unknown session ", ref.session_id(), " or wrong token"));
  }
  std::memcpy(token.data(), ref.token().data(), token.size());
  return token;
}

void FillChunk(const ChunkView& c, v1::ChunkInfo* out) {
  out->set_chunk_id(c.id);
  out->set_size_bytes(c.bytes);
  out->set_group(ToProto(c.group));
  out->set_location(c.on_device ? v1::LOCATION_DEVICE : v1::LOCATION_HOST);
  out->set_dirty(c.dirty);
  out->set_host_offset(c.host_offset.value_or(0));
  out->set_device_offset(c.device_offset.value_or(0));
}

void FillPool(const PoolStatsView& p, v1::PoolStats* out) {
  out->set_capacity_bytes(p.capacity);
  out->set_used_bytes(p.used);
  out->set_peak_bytes(p.peak);
}

void FillSessionStats(const SessionStatsView& v, v1::SessionStats* s) {
  s->set_session_id(v.id);
  s->set_bytes_to_device(v.bytes_to_device);
  s->set_bytes_to_host(v.bytes_to_host);
  s->set_evictions(v.evictions);
  s->set_clean_evictions(v.clean_evictions);
  s->set_device_bytes(v.device_bytes);
  s->set_peak_device_bytes(v.peak_device_bytes);
  s->set_host_bytes(v.host_bytes);
  s->set_chunks(v.chunks);
  s->set_tensors(v.tensors);
  s->set_acquires(v.acquires);
  s->set_prefetches(v.prefetches);
  s->set_prefetch_bytes(v.prefetch_bytes);
  s->set_prefetch_hits(v.prefetch_hits);
  s->set_prefetch_late(v.prefetch_late);
  s->set_prefetch_late_short_lead(v.prefetch_late_short_lead);
  s->set_prefetch_wasted(v.prefetch_wasted);
}

absl::StatusOr<PlacementConfig> PlacementFromProto(
    const v1::PlacementOptions& p, PlacementConfig config) {
  if (p.warmup_steps() != 0) config.warmup_steps = p.warmup_steps();
  if (p.has_margin_ratio()) config.margin_ratio = p.margin_ratio();
  if (p.disable_prefetch()) config.prefetch = false;
  switch (p.planner()) {
    case v1::PLANNER_UNSPECIFIED:
      config.planner = PlannerKind::kBelady;
      break;
    case v1::PLANNER_GEMINI_LIKE:
      config.planner = PlannerKind::kGeminiLike;
      break;
    case v1::PLANNER_LRU:
      config.planner = PlannerKind::kLru;
      break;
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("unknown planner ", static_cast<int>(p.planner())));
  }
  if (p.has_static_param_offload()) {
    config.static_param_offload = p.static_param_offload();
  }
  if (p.has_static_optim_offload()) {
    config.static_optim_offload = p.static_optim_offload();
  }
  config.lookahead_ops = p.lookahead_ops();
  return config;
}

void FillDevice(const DeviceDescription& d, v1::DeviceInfo* out) {
  out->set_name(d.name);
  out->set_uuid(d.uuid);
  out->set_backend(d.backend);
  out->set_capacity_bytes(d.capacity_bytes);
  out->set_ordinal(d.ordinal);
}

void FillChunkDetail(const ChunkDetailView& d, v1::ChunkDetail* out) {
  FillChunk(d.chunk, out->mutable_chunk());
  out->set_state(ToProto(d.state));
  out->set_computing(d.computing);
  for (const auto& name : d.tensors) out->add_tensors(name);
}

v1::ResidencyEventKind ToProto(ResidencyEventKind kind) {
  switch (kind) {
    case ResidencyEventKind::kCreated:
      return v1::RESIDENCY_EVENT_CREATED;
    case ResidencyEventKind::kLoaded:
      return v1::RESIDENCY_EVENT_LOADED;
    case ResidencyEventKind::kEvicted:
      return v1::RESIDENCY_EVENT_EVICTED;
    case ResidencyEventKind::kAcquired:
      return v1::RESIDENCY_EVENT_ACQUIRED;
    case ResidencyEventKind::kReleased:
      return v1::RESIDENCY_EVENT_RELEASED;
  }
  return v1::RESIDENCY_EVENT_UNSPECIFIED;
}

#ifndef TIDEPOOL_VERSION
#define TIDEPOOL_VERSION "unknown"
#endif

}  // namespace

void FillPlacement(const PlacementStatsView& v, v1::PlacementStatus* out) {
  switch (v.state) {
    case PlacementState::kRecording:
      out->set_state(v1::PLACEMENT_STATE_RECORDING);
      break;
    case PlacementState::kPlanned:
      out->set_state(v1::PLACEMENT_STATE_PLANNED);
      break;
    case PlacementState::kFallback:
      out->set_state(v1::PLACEMENT_STATE_FALLBACK);
      break;
  }
  out->set_plan_ops(v.plan_ops);
  out->set_replans(v.replans);
  out->set_planned_ops(v.planned_ops);
  out->set_unplanned_ops(v.unplanned_ops);
  out->set_updates_on_device(v.updates_on_device);
  out->set_updates_on_host(v.updates_on_host);
  out->set_kept_bytes(v.kept_bytes);
  out->set_resyncs(v.resyncs);
  out->set_steps(v.steps);
  out->set_last_divergence(v.last_divergence);
}

template <typename Fn>
grpc::Status GrpcService::Run(absl::string_view method, Fn&& fn) {
  const auto start = std::chrono::steady_clock::now();
  absl::Status status = fn();
  if (observer_) {
    observer_(
        method,
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start)
            .count(),
        status);
  }
  return ToGrpc(status);
}

grpc::Status GrpcService::OpenSession(grpc::ServerContext* context,
                                      const v1::OpenSessionRequest* request,
                                      v1::OpenSessionResponse* response) {
  return Run("OpenSession", [&]() -> absl::Status {
    OpenParams params;
    if (peer_lookup_) {
      // Every connection comes through the listener; one it does not know
      // would escape the per-process and per-user limits.
      params.peer = peer_lookup_(context->peer());
      if (!params.peer) {
        return absl::InternalError(
            absl::StrCat("cannot tell which process is calling (peer ",
                         QuoteClientText(context->peer()), ")"));
      }
    }
    params.device = request->device();
    TP_ASSIGN_OR_RETURN(params.policy, FromProto(request->policy()));
    params.device_quota = request->device_quota_bytes();
    params.host_quota = request->host_quota_bytes();
    params.pid = request->pid();
    params.client_name = request->client_name();
    params.chunk_size = request->chunk_size_bytes();
    if (request->has_placement()) {
      TP_ASSIGN_OR_RETURN(params.placement,
                          PlacementFromProto(request->placement(),
                                             manager_->options().placement));
    }
    TP_ASSIGN_OR_RETURN(OpenedSession s, manager_->OpenSession(params));
    response->set_session_id(s.id);
    response->set_token(std::string(s.token.begin(), s.token.end()));
    response->set_fd_socket_path(fd_socket_path_);
    response->set_chunk_size_bytes(s.chunk_size);
    response->set_host_pool_bytes(s.host_pool_bytes);
    response->set_policy(ToProto(s.policy));
    auto* d = response->mutable_device();
    d->set_name(s.device->name);
    d->set_uuid(s.device->uuid);
    d->set_backend(s.device->backend);
    d->set_capacity_bytes(s.device->capacity_bytes);
    d->set_ordinal(s.device->ordinal);
    return absl::OkStatus();
  });
}

grpc::Status GrpcService::CloseSession(grpc::ServerContext*,
                                       const v1::CloseSessionRequest* request,
                                       v1::CloseSessionResponse*) {
  return Run("CloseSession", [&]() -> absl::Status {
    TP_ASSIGN_OR_RETURN(Token token, TokenOf(request->session()));
    return manager_->CloseSession(request->session().session_id(), token);
  });
}

grpc::Status GrpcService::RegisterTensors(
    grpc::ServerContext*, const v1::RegisterTensorsRequest* request,
    v1::RegisterTensorsResponse* response) {
  return Run("RegisterTensors", [&]() -> absl::Status {
    TP_ASSIGN_OR_RETURN(Token token, TokenOf(request->session()));
    std::vector<TensorSpec> specs;
    specs.reserve(request->tensors_size());
    for (int i = 0; i < request->tensors_size(); ++i) {
      const auto& t = request->tensors(i);
      TensorSpec spec;
      spec.name = t.name();
      auto dtype = FromProto(t.dtype());
      auto group = FromProto(t.group());
      if (!dtype.ok() || !group.ok()) {
        return absl::InvalidArgumentError(absl::StrCat(
            "tensor #", i, ": ",
            (!dtype.ok() ? dtype.status() : group.status()).message()));
      }
      spec.dtype = *dtype;
      spec.group = *group;
      spec.shape.assign(t.shape().begin(), t.shape().end());
      specs.push_back(std::move(spec));
    }
    TP_ASSIGN_OR_RETURN(
        RegisterResult r,
        manager_->Register(request->session().session_id(), token, specs));
    for (const auto& p : r.tensors) {
      auto* out = response->add_tensors();
      out->set_tensor_id(p.tensor_id);
      out->set_chunk_id(p.chunk_id);
      out->set_offset_in_chunk(p.offset_in_chunk);
      out->set_size_bytes(p.bytes);
    }
    for (const auto& c : r.new_chunks) FillChunk(c, response->add_new_chunks());
    return absl::OkStatus();
  });
}

grpc::Status GrpcService::Acquire(grpc::ServerContext*,
                                  const v1::AcquireRequest* request,
                                  v1::AcquireResponse* response) {
  return Run("Acquire", [&]() -> absl::Status {
    TP_ASSIGN_OR_RETURN(Token token, TokenOf(request->session()));
    TP_ASSIGN_OR_RETURN(const AccessMode mode, FromProto(request->mode()));
    std::vector<uint64_t> ids(request->tensor_ids().begin(),
                              request->tensor_ids().end());
    OpContext op{.key = request->op_key(),
                 .seq = request->op_seq(),
                 .non_model_bytes = request->non_model_bytes()};
    const bool has_op = !op.key.empty() || op.non_model_bytes != 0;
    absl::StatusOr<AcquireResult> acquired;
    switch (request->location()) {
      case v1::LOCATION_UNSPECIFIED:
      case v1::LOCATION_DEVICE:
        acquired = manager_->Acquire(request->session().session_id(), token,
                                     ids, mode, has_op ? &op : nullptr);
        break;
      case v1::LOCATION_HOST:
        acquired = manager_->AcquireOnHost(request->session().session_id(),
                                           token, ids, mode);
        break;
      case v1::LOCATION_PLACED:
        acquired = manager_->AcquireWherePlaced(request->session().session_id(),
                                                token, ids, mode);
        break;
      default:
        return absl::InvalidArgumentError("unknown acquire location");
    }
    TP_ASSIGN_OR_RETURN(AcquireResult r, std::move(acquired));
    for (const auto& t : r.tensors) {
      auto* out = response->add_tensors();
      out->set_tensor_id(t.tensor_id);
      out->set_device_offset(t.device_offset);
      out->set_size_bytes(t.bytes);
    }
    response->set_ready_sequence(r.ready_sequence);
    response->set_map_generation(r.map_generation);
    response->set_location(r.on_host ? v1::LOCATION_HOST : v1::LOCATION_DEVICE);
    return absl::OkStatus();
  });
}

grpc::Status GrpcService::Release(grpc::ServerContext*,
                                  const v1::ReleaseRequest* request,
                                  v1::ReleaseResponse*) {
  return Run("Release", [&]() -> absl::Status {
    TP_ASSIGN_OR_RETURN(Token token, TokenOf(request->session()));
    TP_ASSIGN_OR_RETURN(const TensorState target, FromProto(request->target()));
    std::vector<uint64_t> ids(request->tensor_ids().begin(),
                              request->tensor_ids().end());
    return manager_->Release(request->session().session_id(), token, ids,
                             target);
  });
}

grpc::Status GrpcService::GetStats(grpc::ServerContext*,
                                   const v1::StatsRequest* request,
                                   v1::StatsResponse* response) {
  return Run("GetStats", [&]() -> absl::Status {
    TP_ASSIGN_OR_RETURN(Token token, TokenOf(request->session()));
    TP_ASSIGN_OR_RETURN(
        StatsView v, manager_->Stats(request->session().session_id(), token));
    auto* s = response->mutable_session();
    s->set_session_id(v.session.id);
    s->set_bytes_to_device(v.session.bytes_to_device);
    s->set_bytes_to_host(v.session.bytes_to_host);
    s->set_evictions(v.session.evictions);
    s->set_clean_evictions(v.session.clean_evictions);
    s->set_device_bytes(v.session.device_bytes);
    s->set_peak_device_bytes(v.session.peak_device_bytes);
    s->set_host_bytes(v.session.host_bytes);
    s->set_chunks(v.session.chunks);
    s->set_tensors(v.session.tensors);
    s->set_acquires(v.session.acquires);
    FillSessionStats(v.session, s);
    if (v.placement) FillPlacement(*v.placement, response->mutable_placement());
    FillPool(v.device_pool, response->mutable_device_pool());
    FillPool(v.host_pool, response->mutable_host_pool());
    response->set_sessions(v.sessions);
    return absl::OkStatus();
  });
}

grpc::Status GrpcService::GetChunks(grpc::ServerContext*,
                                    const v1::ChunkStateRequest* request,
                                    v1::ChunkStateResponse* response) {
  return Run("GetChunks", [&]() -> absl::Status {
    TP_ASSIGN_OR_RETURN(Token token, TokenOf(request->session()));
    TP_ASSIGN_OR_RETURN(
        std::vector<ChunkView> chunks,
        manager_->Chunks(request->session().session_id(), token));
    for (const auto& c : chunks) FillChunk(c, response->add_chunks());
    return absl::OkStatus();
  });
}

grpc::Status GrpcService::MarkStep(grpc::ServerContext*,
                                   const v1::MarkStepRequest* request,
                                   v1::MarkStepResponse* response) {
  return Run("MarkStep", [&]() -> absl::Status {
    TP_ASSIGN_OR_RETURN(Token token, TokenOf(request->session()));
    TP_ASSIGN_OR_RETURN(
        std::optional<PlacementStatsView> v,
        manager_->MarkStep(request->session().session_id(), token));
    if (v) FillPlacement(*v, response->mutable_placement());
    return absl::OkStatus();
  });
}

grpc::Status GrpcService::GetStatus(grpc::ServerContext*,
                                    const v1::GetStatusRequest*,
                                    v1::GetStatusResponse* response) {
  return Run("GetStatus", [&]() -> absl::Status {
    const ManagerSnapshot snap = manager_->Snapshot();
    const ManagerOptions& o = manager_->options();
    response->set_version(TIDEPOOL_VERSION);
    response->set_uptime_seconds(
        absl::ToDoubleSeconds(absl::Now() - manager_->started_at()));
    uint32_t sessions = 0;
    for (size_t d = 0; d < snap.devices.size(); ++d) {
      auto* dev = response->add_devices();
      FillDevice(manager_->devices()[d]->description(), dev->mutable_device());
      FillPool(snap.devices[d].pool, dev->mutable_pool());
      uint32_t n = 0;
      for (const auto& [policy, count] : snap.devices[d].sessions) n += count;
      dev->set_sessions(n);
      sessions += n;
    }
    FillPool(snap.host_pool, response->mutable_host_pool());
    response->set_sessions(sessions);
    auto* c = response->mutable_config();
    c->set_chunk_size_bytes(o.chunk_size);
    c->set_default_policy(ToProto(o.default_policy));
    c->set_host_pool_bytes(snap.host_pool.capacity);
    c->set_attach_timeout_seconds(absl::ToDoubleSeconds(o.attach_timeout));
    c->set_max_tensors_per_request(o.max_tensors_per_request);
    c->set_max_name_bytes(o.max_name_bytes);
    c->set_max_dims(o.max_dims);
    c->set_residency_event_capacity(o.residency_event_capacity);
    response->set_residency_events_recorded(
        manager_->residency_events_recorded());
    return absl::OkStatus();
  });
}

grpc::Status GrpcService::ListSessions(grpc::ServerContext*,
                                       const v1::ListSessionsRequest*,
                                       v1::ListSessionsResponse* response) {
  return Run("ListSessions", [&]() -> absl::Status {
    const absl::Time now = absl::Now();
    for (const SessionInfoView& s : manager_->ListSessions()) {
      auto* out = response->add_sessions();
      out->set_session_id(s.id);
      out->set_pid(s.pid);
      out->set_client_name(s.client_name);
      out->set_policy(ToProto(s.policy));
      out->set_device(manager_->devices()[s.device]->description().name);
      out->set_attached(s.attached);
      out->set_age_seconds(absl::ToDoubleSeconds(now - s.opened_at));
      out->set_device_quota_bytes(s.device_quota);
      out->set_host_quota_bytes(s.host_quota);
      FillSessionStats(s.stats, out->mutable_stats());
    }
    return absl::OkStatus();
  });
}

grpc::Status GrpcService::ListChunks(grpc::ServerContext*,
                                     const v1::ListChunksRequest* request,
                                     v1::ListChunksResponse* response) {
  return Run("ListChunks", [&]() -> absl::Status {
    TP_ASSIGN_OR_RETURN(std::vector<ChunkDetailView> chunks,
                        manager_->SessionChunks(request->session_id()));
    for (const auto& c : chunks) FillChunkDetail(c, response->add_chunks());
    return absl::OkStatus();
  });
}

grpc::Status GrpcService::GetTimeline(grpc::ServerContext*,
                                      const v1::GetTimelineRequest* request,
                                      v1::GetTimelineResponse* response) {
  return Run("GetTimeline", [&]() -> absl::Status {
    TP_ASSIGN_OR_RETURN(
        TimelineView t,
        manager_->Timeline(request->session_id(),
                           static_cast<size_t>(std::min<uint64_t>(
                               request->max_events(), 1ull << 30))));
    for (const ResidencyEventView& e : t.events) {
      auto* out = response->add_events();
      out->set_sequence(e.sequence);
      out->set_time_unix_nanos(absl::ToUnixNanos(e.time));
      out->set_session_id(e.session_id);
      out->set_chunk_id(e.chunk_id);
      out->set_kind(ToProto(e.kind));
      out->set_location(e.on_device ? v1::LOCATION_DEVICE : v1::LOCATION_HOST);
      out->set_dirty(e.dirty);
    }
    for (const auto& c : t.chunks) FillChunkDetail(c, response->add_chunks());
    response->set_truncated(t.truncated);
    return absl::OkStatus();
  });
}

grpc::Status GrpcService::GetTrace(grpc::ServerContext*,
                                   const v1::GetTraceRequest* request,
                                   v1::GetTraceResponse* response) {
  return Run("GetTrace", [&]() -> absl::Status {
    TP_ASSIGN_OR_RETURN(TraceView t,
                        manager_->RecordedTrace(request->session_id()));
    response->set_policy(ToProto(t.policy));
    response->set_state(std::string(PlacementStateName(t.stats.state)));
    response->set_measured_capacity_bytes(t.measured_capacity);
    response->set_steps(t.stats.steps);
    response->set_replans(t.stats.replans);
    response->set_last_divergence(t.stats.last_divergence);
    for (const auto& op : t.ops) {
      auto* out = response->add_ops();
      out->set_key(op.key);
      out->mutable_chunks()->Add(op.chunks.begin(), op.chunks.end());
      out->mutable_written()->Add(op.written.begin(), op.written.end());
      out->set_non_model_bytes(op.non_model_bytes);
      out->set_budget_bytes(op.budget_bytes);
    }
    for (const auto& u : t.updates) {
      auto* out = response->add_updates();
      out->mutable_chunks()->Add(u.chunks.begin(), u.chunks.end());
      out->set_on_device(u.on_device);
    }
    response->set_updates_on_device(t.stats.updates_on_device);
    response->set_updates_on_host(t.stats.updates_on_host);
    response->set_kept_bytes(t.stats.kept_bytes);
    return absl::OkStatus();
  });
}

}  // namespace tidepool
