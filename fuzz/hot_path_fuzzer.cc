// libFuzzer target: hot-path requests (proto/wire.h HotPathRequest), the
// bytes a client writes into shared memory and the daemon's hot-path
// thread copies out and serves (daemon/server/hot_path_server.h Serve).
//
// Input: [flags] then raw HotPathRequest images back to back (the last one
// zero-filled past the input's end). flags % 5 is the session's policy;
// bit 0x80 maps every tensor id onto the eight tensors the input's session
// registered (random ids would nearly always be unknown ones). Each input
// has its own session and hot-path server, closed at its end.
#include <glog/logging.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include "daemon/server/hot_path_server.h"
#include "fuzz/sim_daemon.h"
#include "proto/wire.h"

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  FLAGS_minloglevel = 2;  // sessions opened and closed log at INFO
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace tidepool;
  MemoryManager& manager = fuzz::SimManager();
  fuzz::Bytes bytes(data, size);
  const uint8_t flags = bytes.U8();
  static constexpr Policy kPolicies[] = {Policy::kCpu, Policy::kCuda,
                                         Policy::kAuto, Policy::kStatic,
                                         Policy::kCpu};
  auto session =
      manager.OpenSession({.policy = kPolicies[flags % 5], .pid = ::getpid()});
  if (!session.ok()) return 0;
  // Eight tensors of two sizes in two groups: several chunks, shared ones.
  std::vector<TensorSpec> specs;
  for (int i = 0; i < 8; ++i) {
    specs.push_back({"t" + std::to_string(i),
                     i % 2 ? DType::kF32 : DType::kBF16,
                     {static_cast<int64_t>(i < 4 ? 1024 : 300 * 1024)},
                     i % 3 ? Group::kParam : Group::kGrad});
  }
  std::vector<uint64_t> ids;
  if (auto r = manager.Register(session->id, session->token, specs); r.ok()) {
    for (const auto& t : r->tensors) ids.push_back(t.tensor_id);
  }
  auto server =
      HotPathServer::Start(nullptr, &manager, session->id, session->token);
  if (server.ok()) {
    while (!bytes.empty()) {
      wire::HotPathRequest request;
      std::memset(&request, 0, sizeof(request));
      const std::vector<uint8_t> image = bytes.Take(sizeof(request));
      std::memcpy(&request, image.data(), image.size());
      if ((flags & 0x80) != 0 && !ids.empty()) {
        for (auto& id : request.tensor_ids) id = ids[id % ids.size()];
      }
      wire::HotPathCompletion completion;
      std::memset(&completion, 0, sizeof(completion));
      (*server)->Serve(request, &completion);
      // The completion goes back to the client as it is: it must say as
      // many tensors as fit, and a terminated message.
      if (completion.count > wire::kHotPathMaxTensors ||
          std::memchr(completion.message, '\0', sizeof(completion.message)) ==
              nullptr) {
        __builtin_trap();
      }
    }
    server->reset();
  }
  (void)manager.CloseSession(session->id, session->token);
  return 0;
}
