#include "daemon/server/hot_path_server.h"

#include <chrono>
#include <cstring>
#include <new>

#include "absl/strings/str_cat.h"
#include "common/futex.h"
#include "common/spin_wait.h"
#include "common/status_macros.h"
#include "daemon/server/hot_path_poller.h"
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
    HotPathPollers* pollers, MemoryManager* manager, uint64_t session_id,
    const Token& token, RpcObserver observer) {
  std::unique_ptr<HotPathServer> s(
      new HotPathServer(manager, session_id, token, std::move(observer)));
  const size_t bytes = (sizeof(wire::HotPath) + 4095) & ~size_t{4095};
  TP_ASSIGN_OR_RETURN(s->fd_, CreateMemfd("tidepool-hot-path", bytes));
  TP_ASSIGN_OR_RETURN(s->mapping_, SharedMapping::Map(s->fd_.get(), bytes));
  auto* page = new (s->mapping_.data()) wire::HotPath();
  page->magic = wire::kHotPathMagic;
  page->version = wire::kHotPathVersion;
  page->ring_entries = wire::kHotPathRing;
  if (pollers != nullptr) {
    TP_RETURN_IF_ERROR(pollers->Add(s.get()));
    s->pollers_ = pollers;
  }
  return s;
}

HotPathServer::~HotPathServer() {
  if (pollers_ != nullptr) pollers_->Remove(this);
}

namespace {

// What request entry `k` holds before request k is posted: request
// k - kHotPathRing, or nothing yet.
uint64_t Previous(uint64_t k) {
  return k > wire::kHotPathRing ? k - wire::kHotPathRing : 0;
}

// Requests that are not run behind a failure the client has not seen:
// the acquires (the client must not hold tensors it does not know it
// holds) and step marks (as over gRPC, where the client first returns the
// failure and marks no step).
bool NeedsFailuresSeen(uint32_t op) {
  const auto o = static_cast<wire::HotPathOp>(op);
  return o == wire::HotPathOp::kAcquire ||
         o == wire::HotPathOp::kAcquireOnHost ||
         o == wire::HotPathOp::kAcquirePlaced ||
         o == wire::HotPathOp::kMarkStep;
}

// The placement in the completion, its free-text field shortened until it
// fits.
void FillPlacement(const PlacementStatsView& v,
                   wire::HotPathCompletion* completion) {
  v1::PlacementStatus status;
  FillPlacement(v, &status);
  while (status.ByteSizeLong() > wire::kHotPathMaxPlacement) {
    std::string* text = status.mutable_last_divergence();
    const size_t excess = status.ByteSizeLong() - wire::kHotPathMaxPlacement;
    text->resize(text->size() > excess ? text->size() - excess : 0);
  }
  completion->placement_bytes = static_cast<uint32_t>(status.ByteSizeLong());
  status.SerializeToArray(completion->placement, wire::kHotPathMaxPlacement);
}

}  // namespace

bool HotPathServer::Ready() const {
  const uint64_t k = handled_ + 1;
  return page()->requests[wire::HotPathIndex(k)].seq.load(
             std::memory_order_acquire) != Previous(k);
}

int64_t HotPathServer::PostedNs() const {
  return static_cast<int64_t>(
      page()->requests[wire::HotPathIndex(handled_ + 1)].posted_ns.load(
          std::memory_order_relaxed));
}

void HotPathServer::ServeNext() {
  wire::HotPath* hp = page();
  const uint64_t k = handled_ + 1;
  wire::HotPathRequestEntry& entry = hp->requests[wire::HotPathIndex(k)];
  const uint64_t seq = entry.seq.load(std::memory_order_acquire);
  // The page is the client's to scribble on: work on a private copy.
  wire::HotPathRequest request;
  std::memcpy(&request, &entry.request, sizeof(request));
  wire::HotPathCompletion completion{};
  if (seq != k) {
    // Neither the old value nor k: the client broke its own ring. The
    // entry completes with an error and the daemon moves on to k + 1.
    Fill(absl::InvalidArgumentError(
             absl::StrCat("hot path: request entry ", wire::HotPathIndex(k),
                          " holds ", "sequence ", seq, ", expected ", k)),
         &completion);
  } else if (NeedsFailuresSeen(request.op) &&
             request.failures_seen != failures_) {
    Fill(absl::AbortedError(absl::StrCat(
             "hot path: request not run: the client had seen ",
             request.failures_seen, " failed requests of ", failures_)),
         &completion);
  } else {
    Serve(request, &completion);
  }
  if (completion.status_code != 0) ++failures_;
  wire::HotPathCompletionEntry& done = hp->completions[wire::HotPathIndex(k)];
  std::memcpy(&done.completion, &completion, sizeof(completion));
  done.posted_ns.store(AdaptiveSpin::NowNs(), std::memory_order_relaxed);
  done.seq.store(k, std::memory_order_release);
  hp->completion_bell.fetch_add(1, std::memory_order_seq_cst);
  if (hp->client_sleeping.load(std::memory_order_seq_cst) != 0) {
    FutexWakeAll(&hp->completion_bell);
  }
  handled_ = k;
}

void HotPathServer::Serve(const wire::HotPathRequest& request,
                          wire::HotPathCompletion* completion) {
  const auto start = std::chrono::steady_clock::now();
  absl::string_view method = "Acquire";
  absl::Status status = [&]() -> absl::Status {
    const auto op = static_cast<wire::HotPathOp>(request.op);
    if (op == wire::HotPathOp::kMarkStep) {
      method = "MarkStep";
      if (request.count != 0 || request.key_len != 0) {
        return absl::InvalidArgumentError(
            "hot path: a step mark names no tensors and no op");
      }
      TP_ASSIGN_OR_RETURN(std::optional<PlacementStatsView> placement,
                          manager_->MarkStep(session_id_, token_));
      if (placement) FillPlacement(*placement, completion);
      return absl::OkStatus();
    }
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
