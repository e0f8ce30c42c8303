#include "daemon/server/grpc_service.h"

#include <chrono>
#include <cstring>

#include "absl/strings/str_cat.h"
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

}  // namespace

template <typename Fn>
grpc::Status GrpcService::Run(absl::string_view method, Fn&& fn) {
  const auto start = std::chrono::steady_clock::now();
  absl::Status status = fn();
  if (observer_) {
    observer_(method,
              std::chrono::duration<double>(std::chrono::steady_clock::now() -
                                            start)
                  .count(),
              status);
  }
  return ToGrpc(status);
}

grpc::Status GrpcService::OpenSession(grpc::ServerContext*,
                                      const v1::OpenSessionRequest* request,
                                      v1::OpenSessionResponse* response) {
  return Run("OpenSession", [&]() -> absl::Status {
    OpenParams params;
    params.device = request->device();
    TP_ASSIGN_OR_RETURN(params.policy, FromProto(request->policy()));
    params.device_quota = request->device_quota_bytes();
    params.host_quota = request->host_quota_bytes();
    params.pid = request->pid();
    params.client_name = request->client_name();
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
    TP_ASSIGN_OR_RETURN(
        AcquireResult r,
        manager_->Acquire(request->session().session_id(), token, ids, mode));
    for (const auto& t : r.tensors) {
      auto* out = response->add_tensors();
      out->set_tensor_id(t.tensor_id);
      out->set_device_offset(t.device_offset);
      out->set_size_bytes(t.bytes);
    }
    response->set_ready_sequence(r.ready_sequence);
    return absl::OkStatus();
  });
}

grpc::Status GrpcService::Release(grpc::ServerContext*,
                                  const v1::ReleaseRequest* request,
                                  v1::ReleaseResponse*) {
  return Run("Release", [&]() -> absl::Status {
    TP_ASSIGN_OR_RETURN(Token token, TokenOf(request->session()));
    TP_ASSIGN_OR_RETURN(const TensorState target,
                        FromProto(request->target()));
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

}  // namespace tidepool
