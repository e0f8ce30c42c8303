// libFuzzer target: decoded gRPC requests into tidepoold's handlers
// (daemon/server/grpc_service.h), which promise that nothing a client sends
// can crash the daemon. The handlers run in process against a sim-backed
// MemoryManager, called as gRPC would call them after decoding.
//
// Input: records, each [selector][length][length bytes], the bytes parsed
// as the selected method's request message (bytes that do not parse are
// the empty message: the handlers must cope with missing fields too).
// selector % 13 picks the method; bit 0x80 puts the input's own session
// (opened before the first record) into the request, without which nearly
// every request stops at the token check; bit 0x40 maps the request's
// tensor ids onto tensors registered earlier in this input. Every session
// the input opened is closed at its end.
#include <glog/logging.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "daemon/server/grpc_service.h"
#include "fuzz/sim_daemon.h"

namespace tidepool::fuzz {
namespace {

constexpr int kMethods = 13;

struct Input {
  uint64_t session_id = 0;
  std::string token;
  std::vector<uint64_t> tensors;  // registered by this input
  std::vector<std::pair<uint64_t, std::string>> opened;
};

void UseSession(Input& in, v1::SessionRef* ref) {
  ref->set_session_id(in.session_id);
  ref->set_token(in.token);
}

void MapTensors(const Input& in,
                google::protobuf::RepeatedField<uint64_t>* ids) {
  if (in.tensors.empty()) return;
  for (auto& id : *ids) id = in.tensors[id % in.tensors.size()];
}

template <typename Request>
Request Parse(const std::vector<uint8_t>& bytes) {
  Request r;
  if (!r.ParseFromArray(bytes.data(), static_cast<int>(bytes.size()))) {
    r.Clear();
  }
  return r;
}

void RunRecord(GrpcService& service, Input& in, uint8_t selector,
               const std::vector<uint8_t>& bytes) {
  const bool own_session = (selector & 0x80) != 0;
  const bool map_tensors = (selector & 0x40) != 0;
  switch (selector % kMethods) {
    case 0: {
      auto req = Parse<v1::OpenSessionRequest>(bytes);
      v1::OpenSessionResponse resp;
      if (service.OpenSession(nullptr, &req, &resp).ok()) {
        in.opened.emplace_back(resp.session_id(), resp.token());
      }
      break;
    }
    case 1: {
      auto req = Parse<v1::CloseSessionRequest>(bytes);
      if (own_session) UseSession(in, req.mutable_session());
      v1::CloseSessionResponse resp;
      service.CloseSession(nullptr, &req, &resp);
      break;
    }
    case 2: {
      auto req = Parse<v1::RegisterTensorsRequest>(bytes);
      if (own_session) UseSession(in, req.mutable_session());
      v1::RegisterTensorsResponse resp;
      if (service.RegisterTensors(nullptr, &req, &resp).ok()) {
        for (const auto& t : resp.tensors())
          in.tensors.push_back(t.tensor_id());
      }
      break;
    }
    case 3: {
      auto req = Parse<v1::AcquireRequest>(bytes);
      if (own_session) UseSession(in, req.mutable_session());
      if (map_tensors) MapTensors(in, req.mutable_tensor_ids());
      v1::AcquireResponse resp;
      service.Acquire(nullptr, &req, &resp);
      break;
    }
    case 4: {
      auto req = Parse<v1::ReleaseRequest>(bytes);
      if (own_session) UseSession(in, req.mutable_session());
      if (map_tensors) MapTensors(in, req.mutable_tensor_ids());
      v1::ReleaseResponse resp;
      service.Release(nullptr, &req, &resp);
      break;
    }
    case 5: {
      auto req = Parse<v1::StatsRequest>(bytes);
      if (own_session) UseSession(in, req.mutable_session());
      v1::StatsResponse resp;
      service.GetStats(nullptr, &req, &resp);
      break;
    }
    case 6: {
      auto req = Parse<v1::ChunkStateRequest>(bytes);
      if (own_session) UseSession(in, req.mutable_session());
      v1::ChunkStateResponse resp;
      service.GetChunks(nullptr, &req, &resp);
      break;
    }
    case 7: {
      auto req = Parse<v1::MarkStepRequest>(bytes);
      if (own_session) UseSession(in, req.mutable_session());
      v1::MarkStepResponse resp;
      service.MarkStep(nullptr, &req, &resp);
      break;
    }
    case 8: {
      auto req = Parse<v1::GetStatusRequest>(bytes);
      v1::GetStatusResponse resp;
      service.GetStatus(nullptr, &req, &resp);
      break;
    }
    case 9: {
      auto req = Parse<v1::ListSessionsRequest>(bytes);
      v1::ListSessionsResponse resp;
      service.ListSessions(nullptr, &req, &resp);
      break;
    }
    case 10: {
      auto req = Parse<v1::ListChunksRequest>(bytes);
      if (own_session) req.set_session_id(in.session_id);
      v1::ListChunksResponse resp;
      service.ListChunks(nullptr, &req, &resp);
      break;
    }
    case 11: {
      auto req = Parse<v1::GetTimelineRequest>(bytes);
      if (own_session) req.set_session_id(in.session_id);
      v1::GetTimelineResponse resp;
      service.GetTimeline(nullptr, &req, &resp);
      break;
    }
    case 12: {
      auto req = Parse<v1::GetTraceRequest>(bytes);
      if (own_session) req.set_session_id(in.session_id);
      v1::GetTraceResponse resp;
      service.GetTrace(nullptr, &req, &resp);
      break;
    }
  }
}

}  // namespace
}  // namespace tidepool::fuzz

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  FLAGS_minloglevel = 2;  // sessions opened and closed log at INFO
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace tidepool;
  using namespace tidepool::fuzz;
  MemoryManager& manager = SimManager();
  static GrpcService service(&manager, "/nonexistent/tidepoold.fd.sock");
  Bytes bytes(data, size);
  Input in;
  // The input's own session; its policy comes from the first byte.
  const uint8_t policy = bytes.U8();
  v1::OpenSessionRequest open;
  open.set_pid(::getpid());
  open.set_policy(static_cast<v1::Policy>(policy % 5));
  v1::OpenSessionResponse opened;
  if (!service.OpenSession(nullptr, &open, &opened).ok()) return 0;
  in.session_id = opened.session_id();
  in.token = opened.token();
  in.opened.emplace_back(in.session_id, in.token);
  while (!bytes.empty()) {
    const uint8_t selector = bytes.U8();
    const uint8_t length = bytes.U8();
    RunRecord(service, in, selector, bytes.Take(length));
  }
  for (const auto& [id, token] : in.opened) {
    v1::CloseSessionRequest close;
    close.mutable_session()->set_session_id(id);
    close.mutable_session()->set_token(token);
    v1::CloseSessionResponse closed;
    service.CloseSession(nullptr, &close, &closed);
  }
  return 0;
}
