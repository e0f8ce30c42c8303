#include "daemon/server/hot_path_server.h"

#include <chrono>
#include <cstring>
#include <new>
#include <system_error>

#include "absl/strings/str_cat.h"
#include "common/futex.h"
#include "common/status_macros.h"
#include "proto/convert.h"

namespace tidepool {
namespace {

void Fill(const absl::Status& status, wire::HotPathCompletion* c) {
  c->status_code = static_cast<int32_t>(status.code());
  const std::string msg(status.message());
  std::strncpy(c->message, msg.c_str(), sizeof(c->message) - 1);
  c->message[sizeof(c->message) - 1] = '\0';
}

}  // namespace

absl::StatusOr<std::unique_ptr<HotPathServer>> HotPathServer::Start(
    MemoryManager* manager, uint64_t session_id, const Token& token,
    RpcObserver observer) {
  std::unique_ptr<HotPathServer> s(
      new HotPathServer(manager, session_id, token, std::move(observer)));
  const size_t bytes = (sizeof(wire::HotPath) + 4095) & ~size_t{4095};
  TP_ASSIGN_OR_RETURN(s->fd_, CreateMemfd("tidepool-hot-path", bytes));
  TP_ASSIGN_OR_RETURN(s->mapping_, SharedMapping::Map(s->fd_.get(), bytes));
  auto* page = new (s->mapping_.data()) wire::HotPath();
  page->magic = wire::kHotPathMagic;
  page->version = 1;
  page->request_seq.store(0);
  page->completion_seq.store(0);
  // Out of threads (a task limit) is the daemon's problem to report, not
  // to die of: the session is refused.
  try {
    s->thread_ = std::thread([raw = s.get()] { raw->Loop(); });
  } catch (const std::system_error& e) {
    return absl::ResourceExhaustedError(
        absl::StrCat("no thread for the session's hot path: ", e.what()));
  }
  return s;
}

HotPathServer::~HotPathServer() {
  stop_.store(true);
  if (mapping_.data() != nullptr) {
    page()->request_bell.fetch_add(1);
    FutexWakeAll(&page()->request_bell);
  }
  if (thread_.joinable()) thread_.join();
}

void HotPathServer::Loop() {
  wire::HotPath* hp = page();
  uint64_t handled = 0;
  while (!stop_.load(std::memory_order_relaxed)) {
    const uint32_t bell = hp->request_bell.load(std::memory_order_acquire);
    const uint64_t seq = hp->request_seq.load(std::memory_order_acquire);
    if (seq == handled) {
      // Nothing new: sleep until the client rings (or a timeout, so that a
      // stop request is never missed).
      FutexWait(&hp->request_bell, bell, 200'000'000);
      continue;
    }
    // The page is the client's to scribble on: work on a private copy.
    wire::HotPathRequest request;
    std::memcpy(&request, &hp->request, sizeof(request));
    wire::HotPathCompletion completion{};
    if (seq != handled + 1) {
      Fill(
          absl::InvalidArgumentError(absl::StrCat(
              "hot path: request sequence jumped from ", handled, " to ", seq)),
          &completion);
    } else {
      Serve(request, &completion);
    }
    std::memcpy(&hp->completion, &completion, sizeof(completion));
    hp->completion_seq.store(seq, std::memory_order_release);
    hp->completion_bell.fetch_add(1, std::memory_order_release);
    FutexWakeAll(&hp->completion_bell);
    handled = seq;
  }
}

void HotPathServer::Serve(const wire::HotPathRequest& request,
                          wire::HotPathCompletion* completion) {
  const auto start = std::chrono::steady_clock::now();
  absl::string_view method = "Acquire";
  absl::Status status = [&]() -> absl::Status {
    if (request.count == 0 || request.count > wire::kHotPathMaxTensors) {
      return absl::InvalidArgumentError(
          absl::StrCat("hot path: ", request.count, " tensors (1..",
                       wire::kHotPathMaxTensors, ")"));
    }
    if (request.key_len > wire::kHotPathMaxKey) {
      return absl::InvalidArgumentError("hot path: op key too long");
    }
    const std::vector<uint64_t> ids(request.tensor_ids,
                                    request.tensor_ids + request.count);
    const auto op = static_cast<wire::HotPathOp>(request.op);
    if (op == wire::HotPathOp::kRelease) {
      method = "Release";
      TP_ASSIGN_OR_RETURN(const TensorState target,
                          FromProto(static_cast<v1::TensorState>(request.arg)));
      return manager_->Release(session_id_, token_, ids, target);
    }
    if (op != wire::HotPathOp::kAcquire &&
        op != wire::HotPathOp::kAcquireOnHost &&
        op != wire::HotPathOp::kAcquirePlaced) {
      return absl::InvalidArgumentError(
          absl::StrCat("hot path: unknown operation ", request.op));
    }
    TP_ASSIGN_OR_RETURN(const AccessMode mode,
                        FromProto(static_cast<v1::AccessMode>(request.arg)));
    absl::StatusOr<AcquireResult> result;
    if (op == wire::HotPathOp::kAcquireOnHost) {
      result = manager_->AcquireOnHost(session_id_, token_, ids, mode);
    } else if (op == wire::HotPathOp::kAcquirePlaced) {
      result = manager_->AcquireWherePlaced(session_id_, token_, ids, mode);
    } else {
      OpContext context{.key = std::string(request.op_key, request.key_len),
                        .seq = request.op_seq,
                        .non_model_bytes = request.non_model_bytes};
      const bool has_op = request.key_len > 0 || request.non_model_bytes != 0;
      result = manager_->Acquire(session_id_, token_, ids, mode,
                                 has_op ? &context : nullptr);
    }
    if (!result.ok()) return result.status();
    completion->count = static_cast<uint32_t>(result->tensors.size());
    completion->ready_sequence = result->ready_sequence;
    completion->map_generation = result->map_generation;
    completion->on_host = result->on_host ? 1 : 0;
    for (size_t i = 0; i < result->tensors.size(); ++i) {
      completion->offsets[i] = result->tensors[i].device_offset;
      completion->sizes[i] = result->tensors[i].bytes;
    }
    return absl::OkStatus();
  }();
  Fill(status, completion);
  if (observer_) {
    observer_(
        method,
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start)
            .count(),
        status);
  }
}

}  // namespace tidepool
