#include "tidepool/session.h"

#include <grpcpp/grpcpp.h>
#include <poll.h>
#include <unistd.h>

#include <atomic>
#include <cstddef>
#include <cstring>
#include <mutex>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "client/src/device_mapping.h"
#include "common/futex.h"
#include "common/shared_memory.h"
#include "common/spin_wait.h"
#include "common/status_macros.h"
#include "common/unix_socket.h"
#include "proto/channel.h"
#include "proto/convert.h"
#include "proto/tidepool.grpc.pb.h"

namespace tidepool {

namespace {

// A hot-path request; `arg` is the proto enum value of the access mode or
// release target, read back with FromProto on the daemon's side.
wire::HotPathRequest HotRequest(wire::HotPathOp op, int arg,
                                std::span<const uint64_t> tensor_ids,
                                absl::string_view op_key = "",
                                uint64_t op_seq = 0,
                                uint64_t non_model_bytes = 0) {
  wire::HotPathRequest r;
  r.op = static_cast<uint32_t>(op);
  r.arg = static_cast<uint32_t>(arg);
  r.count = static_cast<uint32_t>(tensor_ids.size());
  r.key_len = static_cast<uint32_t>(op_key.size());
  r.op_seq = op_seq;
  r.non_model_bytes = non_model_bytes;
  std::memcpy(r.op_key, op_key.data(), op_key.size());
  std::copy(tensor_ids.begin(), tensor_ids.end(), r.tensor_ids);
  return r;
}

}  // namespace

class Session::Impl {
 public:
  absl::Status Open(const SessionOptions& options);
  absl::Status Call(absl::string_view what, const grpc::Status& status) const;
  v1::SessionRef Ref() const {
    v1::SessionRef ref;
    ref.set_session_id(id_);
    ref.set_token(token_);
    return ref;
  }

  std::string socket_;
  std::unique_ptr<v1::Tidepool::Stub> stub_;
  uint64_t id_ = 0;
  std::string token_;
  Policy policy_ = Policy::kCpu;
  DeviceInfo device_;
  uint64_t chunk_size_ = 0;
  bool closed_ = false;
  UniqueFd fd_conn_;  // open for the session's lifetime
  // The host pool as this process sees it: reserved address space in which
  // the daemon's pieces (this session's chunk homes) are mapped as they
  // come (SyncMappings).
  ReservedRegion host_;
  // Maps every piece of the pools the daemon granted up to `generation`.
  absl::Status SyncMappings(uint64_t generation);
  std::mutex map_mu_;
  uint64_t mapped_generation_ = 0;  // guarded by map_mu_ (read racily first)
  std::atomic<uint64_t> mapped_hint_{0};
  std::unique_ptr<internal::DeviceMapping> mapping_;
  // The current op (BeginOp); travels with every acquire.
  // Whether a request of `count` tensors and an op key of `key_len` bytes
  // fits the hot path (others go over gRPC).
  bool HotPathFits(size_t count, size_t key_len = 0) const {
    return hot() != nullptr && count > 0 && count <= wire::kHotPathMaxTensors &&
           key_len <= wire::kHotPathMaxKey;
  }
  // Acquire, AcquireOnHost and AcquireWherePlaced: over the hot path when
  // the request fits, else gRPC; waits for the bytes (see Session).
  struct Acquired {
    bool on_host = false;
    std::vector<AcquiredTensor> tensors;
  };
  absl::StatusOr<Acquired> Acquire(absl::string_view what,
                                   v1::Location location,
                                   std::span<const uint64_t> tensor_ids,
                                   AccessMode mode, CudaStream stream);
  // The hot path (proto/wire.h): a ring of requests, one thread at a time
  // (hot_mu_). HotCall posts an acquire and waits for its completion (and
  // so for every release before it); HotRelease posts a release and
  // returns. A release's failure is kept in hot_deferred_ and returned by
  // the next call that takes it (TakeDeferred): the next acquire, release,
  // MarkStep, Flush or Close.
  absl::Status HotCall(absl::string_view what, wire::HotPathRequest& request,
                       wire::HotPathCompletion* completion);
  absl::Status HotRelease(wire::HotPathRequest& request);
  // Waits for every posted request; with `take`, also returns (and clears)
  // a release's failure not yet returned. Cheap when nothing is posted.
  absl::Status Drain(absl::string_view what, bool take);
  wire::HotPath* hot() const {
    return reinterpret_cast<wire::HotPath*>(hot_path_.data());
  }
  // Under hot_mu_: posts `request` as the next entry (first waiting for a
  // free one) and returns its number.
  absl::StatusOr<uint64_t> HotPost(wire::HotPathRequest& request)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(hot_mu_);
  // Under hot_mu_: reads completions up to `k`; the one for `k` goes to
  // `last` when not null, earlier ones are releases (failures deferred).
  // With `wait` false, reads only what has arrived.
  absl::Status HotRead(absl::string_view what, uint64_t k, bool wait,
                       wire::HotPathCompletion* last)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(hot_mu_);
  absl::Status TakeDeferred(absl::string_view what)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(hot_mu_);
  SharedMapping hot_path_;
  std::mutex hot_mu_;
  uint64_t hot_posted_ ABSL_GUARDED_BY(hot_mu_) = 0;  // requests posted
  uint64_t hot_read_ ABSL_GUARDED_BY(hot_mu_) = 0;    // completions read
  // Failed completions read (HotPathRequest.failures_seen).
  uint64_t hot_failures_ ABSL_GUARDED_BY(hot_mu_) = 0;
  // The first failure of a release posted without waiting, not yet
  // returned, and how many more failed after it.
  absl::Status hot_deferred_ ABSL_GUARDED_BY(hot_mu_);
  uint64_t hot_deferred_more_ ABSL_GUARDED_BY(hot_mu_) = 0;
  AdaptiveSpin hot_spin_ ABSL_GUARDED_BY(hot_mu_);

  std::mutex op_mu_;
  std::string op_key_;
  uint64_t op_seq_ = 0;
  uint64_t op_non_model_ = 0;
};

namespace {

PlacementStatus FromProto(const v1::PlacementStatus& p) {
  PlacementStatus out;
  switch (p.state()) {
    case v1::PLACEMENT_STATE_RECORDING:
      out.state = "recording";
      break;
    case v1::PLACEMENT_STATE_PLANNED:
      out.state = "planned";
      break;
    case v1::PLACEMENT_STATE_FALLBACK:
      out.state = "fallback";
      break;
    default:
      out.state = "none";
  }
  out.plan_ops = p.plan_ops();
  out.replans = p.replans();
  out.planned_ops = p.planned_ops();
  out.unplanned_ops = p.unplanned_ops();
  out.updates_on_device = p.updates_on_device();
  out.updates_on_host = p.updates_on_host();
  out.kept_bytes = p.kept_bytes();
  out.resyncs = p.resyncs();
  out.steps = p.steps();
  out.last_divergence = p.last_divergence();
  return out;
}

}  // namespace

absl::Status Session::Impl::Call(absl::string_view what,
                                 const grpc::Status& status) const {
  if (status.ok()) return absl::OkStatus();
  if (status.error_code() == grpc::StatusCode::UNAVAILABLE) {
    return absl::UnavailableError(
        absl::StrCat(what, ": tidepoold is not reachable on ", socket_, " (",
                     status.error_message(), ")"));
  }
  absl::Status s = FromGrpc(status);
  return absl::Status(s.code(), absl::StrCat(what, ": ", s.message()));
}

absl::Status Session::Impl::HotRead(absl::string_view what, uint64_t k,
                                    bool wait, wire::HotPathCompletion* last) {
  wire::HotPath* hp = hot();
  while (hot_read_ < k) {
    const uint64_t next = hot_read_ + 1;
    wire::HotPathCompletionEntry& entry =
        hp->completions[wire::HotPathIndex(next)];
    auto ready = [&] {
      return entry.seq.load(std::memory_order_acquire) == next;
    };
    if (!ready()) {
      if (!wait) return absl::OkStatus();
      // The daemon usually answers in microseconds: spin (adaptively),
      // then sleep, checking now and then that the daemon is still there.
      if (!hot_spin_.Spin(ready)) {
        const int64_t gave_up = AdaptiveSpin::NowNs();
        hp->client_sleeping.store(1, std::memory_order_seq_cst);
        while (true) {
          const uint32_t bell =
              hp->completion_bell.load(std::memory_order_seq_cst);
          if (ready()) break;
          FutexWait(&hp->completion_bell, bell, 100'000'000);
          if (ready()) break;
          // Not POLLIN: another thread may be reading a mapping reply.
          pollfd pfd{fd_conn_.get(), POLLRDHUP, 0};
          if (!fd_conn_.valid() ||
              (::poll(&pfd, 1, 0) > 0 &&
               (pfd.revents & (POLLRDHUP | POLLHUP | POLLERR)))) {
            hp->client_sleeping.store(0, std::memory_order_relaxed);
            return absl::UnavailableError(
                absl::StrCat(what, ": tidepoold went away (", socket_, ")"));
          }
        }
        hp->client_sleeping.store(0, std::memory_order_relaxed);
        // How soon after the give-up the daemon answered, not when this
        // thread woke: with slow wake-ups (a VM's idle vCPU) the latter
        // would always look too late to spin for.
        hot_spin_.Slept(static_cast<int64_t>(
                            entry.posted_ns.load(std::memory_order_relaxed)) -
                        gave_up);
      }
    }
    hot_read_ = next;
    const wire::HotPathCompletion& c = entry.completion;
    if (next == k && last != nullptr) {
      std::memcpy(last, &c, sizeof(*last));
      if (last->status_code != 0) ++hot_failures_;
      continue;
    }
    // A release posted without waiting.
    const int32_t code = c.status_code;
    if (code == 0) continue;
    ++hot_failures_;
    if (!hot_deferred_.ok()) {
      ++hot_deferred_more_;
      continue;
    }
    char message[sizeof(c.message)];
    std::memcpy(message, c.message, sizeof(message));
    message[sizeof(message) - 1] = '\0';
    hot_deferred_ = absl::Status(static_cast<absl::StatusCode>(code), message);
  }
  return absl::OkStatus();
}

absl::Status Session::Impl::TakeDeferred(absl::string_view what) {
  if (hot_deferred_.ok()) return absl::OkStatus();
  absl::Status s(hot_deferred_.code(),
                 absl::StrCat(what, ": an earlier Release failed: ",
                              hot_deferred_.message()));
  if (hot_deferred_more_ > 0) {
    s = absl::Status(s.code(),
                     absl::StrCat(s.message(), " (and ", hot_deferred_more_,
                                  " more failed releases)"));
  }
  hot_deferred_ = absl::OkStatus();
  hot_deferred_more_ = 0;
  return s;
}

absl::StatusOr<uint64_t> Session::Impl::HotPost(wire::HotPathRequest& request) {
  // Entry k reuses the slot of k - kHotPathRing: its completion must have
  // been read.
  if (hot_posted_ - hot_read_ >= wire::kHotPathRing) {
    TP_RETURN_IF_ERROR(HotRead("Release", hot_posted_ + 1 - wire::kHotPathRing,
                               true, nullptr));
  }
  wire::HotPath* hp = hot();
  const uint64_t k = hot_posted_ + 1;
  request.failures_seen = hot_failures_;
  wire::HotPathRequestEntry& entry = hp->requests[wire::HotPathIndex(k)];
  std::memcpy(&entry.request, &request,
              offsetof(wire::HotPathRequest, tensor_ids) +
                  request.count * sizeof(uint64_t));
  entry.posted_ns.store(AdaptiveSpin::NowNs(), std::memory_order_relaxed);
  entry.seq.store(k, std::memory_order_release);
  hp->request_bell.fetch_add(1, std::memory_order_seq_cst);
  if (hp->daemon_sleeping.load(std::memory_order_seq_cst) != 0) {
    FutexWakeAll(&hp->request_bell);
  }
  hot_posted_ = k;
  return k;
}

absl::Status Session::Impl::HotCall(absl::string_view what,
                                    wire::HotPathRequest& request,
                                    wire::HotPathCompletion* completion) {
  std::lock_guard<std::mutex> lock(hot_mu_);
  // A release that failed since the last call: that failure is this
  // call's answer, and the acquire is not posted.
  TP_RETURN_IF_ERROR(HotRead(what, hot_posted_, false, nullptr));
  TP_RETURN_IF_ERROR(TakeDeferred(what));
  TP_ASSIGN_OR_RETURN(const uint64_t k, HotPost(request));
  TP_RETURN_IF_ERROR(HotRead(what, k, true, completion));
  // A release posted before it failed: the daemon did not run the acquire
  // (its failures_seen was behind), so nothing is held that the caller
  // does not know about, and the release's failure is the answer.
  TP_RETURN_IF_ERROR(TakeDeferred(what));
  if (completion->status_code != 0) {
    completion->message[sizeof(completion->message) - 1] = '\0';
    return absl::Status(static_cast<absl::StatusCode>(completion->status_code),
                        absl::StrCat(what, ": ", completion->message));
  }
  if (completion->count > wire::kHotPathMaxTensors) {
    return absl::DataLossError("malformed hot path completion");
  }
  return absl::OkStatus();
}

absl::Status Session::Impl::HotRelease(wire::HotPathRequest& request) {
  std::lock_guard<std::mutex> lock(hot_mu_);
  TP_RETURN_IF_ERROR(HotRead("Release", hot_posted_, false, nullptr));
  TP_RETURN_IF_ERROR(TakeDeferred("Release"));
  // A failure read while waiting for a free entry is the next call's.
  return HotPost(request).status();
}

absl::Status Session::Impl::Drain(absl::string_view what, bool take) {
  // Closed: the daemon reclaimed the session, there is nothing to wait for.
  if (hot() == nullptr || closed_) return absl::OkStatus();
  std::lock_guard<std::mutex> lock(hot_mu_);
  TP_RETURN_IF_ERROR(HotRead(what, hot_posted_, true, nullptr));
  return take ? TakeDeferred(what) : absl::OkStatus();
}

absl::Status Session::Impl::Open(const SessionOptions& options) {
  socket_ = options.socket;
  if (::access(socket_.c_str(), F_OK) != 0) {
    // The daemon's socket directory is 0750: outside its group the socket
    // cannot even be seen, which is a permission problem, not a stopped
    // daemon.
    if (errno == EACCES) {
      return absl::PermissionDeniedError(
          absl::StrCat("no permission to reach ", socket_,
                       ": join the daemon's group (usually 'tidepool')"));
    }
    return absl::UnavailableError(absl::StrCat(
        "tidepoold is not running: no socket at ", socket_,
        " (start it with `tidepoold`, or point SessionOptions::socket at "
        "its socket)"));
  }
  if (::access(socket_.c_str(), R_OK | W_OK) != 0) {
    return absl::PermissionDeniedError(
        absl::StrCat("no permission to use ", socket_,
                     ": join the daemon's group (usually 'tidepool')"));
  }
  stub_ = v1::Tidepool::NewStub(UnixChannel(socket_));

  v1::OpenSessionRequest request;
  request.set_device(options.device);
  if (options.policy) request.set_policy(ToProto(*options.policy));
  request.set_device_quota_bytes(options.device_quota_bytes);
  request.set_host_quota_bytes(options.host_quota_bytes);
  request.set_pid(::getpid());
  request.set_client_name(options.client_name);
  request.set_chunk_size_bytes(options.chunk_size_bytes);
  if (options.placement) {
    const PlacementOptions& p = *options.placement;
    auto* out = request.mutable_placement();
    out->set_warmup_steps(p.warmup_steps);
    if (p.margin_ratio) out->set_margin_ratio(*p.margin_ratio);
    out->set_disable_prefetch(!p.prefetch);
    switch (p.planner) {
      case Planner::kDefault:
        out->set_planner(v1::PLANNER_UNSPECIFIED);
        break;
      case Planner::kGeminiLike:
        out->set_planner(v1::PLANNER_GEMINI_LIKE);
        break;
      case Planner::kLru:
        out->set_planner(v1::PLANNER_LRU);
        break;
    }
    if (p.static_param_offload) {
      out->set_static_param_offload(*p.static_param_offload);
    }
    if (p.static_optim_offload) {
      out->set_static_optim_offload(*p.static_optim_offload);
    }
    out->set_lookahead_ops(p.lookahead_ops);
  }
  v1::OpenSessionResponse response;
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
  TP_RETURN_IF_ERROR(
      Call("OpenSession", stub_->OpenSession(&ctx, request, &response)));
  id_ = response.session_id();
  token_ = response.token();
  TP_ASSIGN_OR_RETURN(std::optional<Policy> policy,
                      FromProto(response.policy()));
  policy_ = policy.value_or(Policy::kCpu);
  chunk_size_ = response.chunk_size_bytes();
  device_ = DeviceInfo{response.device().name(), response.device().uuid(),
                       response.device().backend(),
                       response.device().capacity_bytes()};

  // Attach over the fd socket; from now on the daemon reclaims the session
  // when this connection closes, so a crash leaks nothing.
  if (device_.backend == "cuda") {
    TP_ASSIGN_OR_RETURN(mapping_, internal::NewCudaMapping(device_.uuid));
  } else {
    mapping_ = internal::NewSimMapping();
  }
  TP_ASSIGN_OR_RETURN(fd_conn_, ConnectUnix(response.fd_socket_path()));
  wire::AttachRequest attach{};
  attach.magic = wire::kAttachMagic;
  attach.version = wire::kAttachVersion;
  attach.session_id = id_;
  if (token_.size() != wire::kTokenBytes) {
    return absl::DataLossError("the daemon sent a malformed session token");
  }
  std::memcpy(attach.token, token_.data(), wire::kTokenBytes);
  mapping_->PrepareAttach(&attach);
  TP_RETURN_IF_ERROR(SendMessage(fd_conn_.get(), &attach, sizeof(attach)));
  wire::AttachReply reply{};
  std::vector<UniqueFd> fds;
  TP_RETURN_IF_ERROR(
      ReceiveMessage(fd_conn_.get(), &reply, sizeof(reply), &fds, 4));
  if (reply.magic != wire::kAttachMagic) {
    return absl::DataLossError("malformed attach reply from the daemon");
  }
  if (reply.status_code != 0) {
    reply.message[sizeof(reply.message) - 1] = '\0';
    return absl::Status(static_cast<absl::StatusCode>(reply.status_code),
                        absl::StrCat("attach: ", reply.message));
  }
  if (fds.size() < 2) {
    return absl::DataLossError("the daemon sent no control page");
  }
  if (options.hot_path && reply.hot_path_bytes >= sizeof(wire::HotPath)) {
    TP_ASSIGN_OR_RETURN(hot_path_,
                        SharedMapping::Map(fds[1].get(), reply.hot_path_bytes));
    if (hot()->magic != wire::kHotPathMagic) {
      return absl::DataLossError("the daemon's hot path page is not valid");
    }
    // Another layout of the ring (a daemon of another version): gRPC only.
    if (hot()->version != wire::kHotPathVersion ||
        hot()->ring_entries != wire::kHotPathRing) {
      hot_path_ = SharedMapping();
    }
  }
  TP_ASSIGN_OR_RETURN(host_, ReservedRegion::Reserve(reply.host_pool_bytes,
                                                     ReservedRegion::kClient));
  UniqueFd device_fd = fds.size() > 2 ? std::move(fds[2]) : UniqueFd();
  return mapping_->Map(reply, std::move(device_fd), std::move(fds[0]));
}

absl::Status Session::Impl::SyncMappings(uint64_t generation) {
  if (mapped_hint_.load(std::memory_order_acquire) >= generation) {
    return absl::OkStatus();
  }
  std::lock_guard<std::mutex> lock(map_mu_);
  while (mapped_generation_ < generation) {
    const wire::MapRequest request{wire::kMapMagic, 0};
    TP_RETURN_IF_ERROR(SendMessage(fd_conn_.get(), &request, sizeof(request)));
    wire::MapReply reply{};
    std::vector<UniqueFd> fds;
    TP_RETURN_IF_ERROR(ReceiveMessage(fd_conn_.get(), &reply, sizeof(reply),
                                      &fds, wire::kMaxPiecesPerReply));
    if (reply.magic != wire::kMapMagic || reply.count != fds.size() ||
        reply.count > wire::kMaxPiecesPerReply) {
      return absl::DataLossError("malformed mapping reply from the daemon");
    }
    if (reply.count == 0) {
      return absl::DataLossError(
          absl::StrCat("the daemon has no pool pieces up to generation ",
                       generation, " (mapped ", mapped_generation_, ")"));
    }
    for (uint32_t i = 0; i < reply.count; ++i) {
      const wire::MapPiece& piece = reply.pieces[i];
      if (piece.generation != mapped_generation_ + 1) {
        return absl::DataLossError("pool pieces arrived out of order");
      }
      if (piece.device != 0) {
        TP_RETURN_IF_ERROR(
            mapping_->MapPiece(piece.offset, piece.bytes, std::move(fds[i])));
      } else {
        TP_RETURN_IF_ERROR(
            host_.MapAt(piece.offset, piece.bytes, fds[i].get()));
      }
      // The mapping holds the memory; the fd is not needed any more.
      fds[i].Reset();
      mapped_generation_ = piece.generation;
    }
  }
  mapped_hint_.store(mapped_generation_, std::memory_order_release);
  return absl::OkStatus();
}

Session::Session(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Session::~Session() { Close().IgnoreError(); }

absl::StatusOr<std::unique_ptr<Session>> Session::Open(
    const SessionOptions& options) {
  auto impl = std::make_unique<Impl>();
  absl::Status status = impl->Open(options);
  if (!status.ok()) {
    if (impl->id_ != 0) {
      // Opened but could not attach: do not leave it to the reaper.
      v1::CloseSessionRequest request;
      *request.mutable_session() = impl->Ref();
      v1::CloseSessionResponse response;
      grpc::ClientContext ctx;
      impl->stub_->CloseSession(&ctx, request, &response);
    }
    return status;
  }
  return std::unique_ptr<Session>(new Session(std::move(impl)));
}

absl::StatusOr<std::vector<TensorInfo>> Session::Register(
    const std::vector<TensorSpec>& specs) {
  v1::RegisterTensorsRequest request;
  *request.mutable_session() = impl_->Ref();
  for (const auto& s : specs) {
    auto* t = request.add_tensors();
    t->set_name(s.name);
    t->set_dtype(ToProto(s.dtype));
    for (int64_t d : s.shape) t->add_shape(d);
    t->set_group(ToProto(s.group));
  }
  v1::RegisterTensorsResponse response;
  grpc::ClientContext ctx;
  TP_RETURN_IF_ERROR(
      impl_->Call("RegisterTensors",
                  impl_->stub_->RegisterTensors(&ctx, request, &response)));
  std::vector<TensorInfo> out;
  out.reserve(response.tensors_size());
  for (const auto& t : response.tensors()) {
    out.push_back(TensorInfo{t.tensor_id(), t.chunk_id(), t.offset_in_chunk(),
                             t.size_bytes()});
  }
  return out;
}

absl::StatusOr<Session::Impl::Acquired> Session::Impl::Acquire(
    absl::string_view what, v1::Location location,
    std::span<const uint64_t> tensor_ids, AccessMode mode, CudaStream stream) {
  // Only device acquires belong to the op sequence auto traces.
  std::string op_key;
  uint64_t op_seq = 0, non_model = 0;
  if (location == v1::LOCATION_DEVICE) {
    std::lock_guard<std::mutex> lock(op_mu_);
    if (op_seq_ != 0) {
      op_key = op_key_;
      op_seq = op_seq_;
      non_model = op_non_model_;
    }
  }
  Acquired got{.on_host = location == v1::LOCATION_HOST};
  std::vector<std::pair<uint64_t, uint64_t>> places;  // offset, size
  uint64_t ready = 0;
  uint64_t generation = 0;
  if (HotPathFits(tensor_ids.size(), op_key.size())) {
    const wire::HotPathOp op =
        location == v1::LOCATION_HOST     ? wire::HotPathOp::kAcquireOnHost
        : location == v1::LOCATION_PLACED ? wire::HotPathOp::kAcquirePlaced
                                          : wire::HotPathOp::kAcquire;
    wire::HotPathRequest request =
        HotRequest(op, ToProto(mode), tensor_ids, op_key, op_seq, non_model);
    wire::HotPathCompletion c;
    TP_RETURN_IF_ERROR(HotCall(what, request, &c));
    ready = c.ready_sequence;
    generation = c.map_generation;
    got.on_host = c.on_host != 0;
    for (uint32_t i = 0; i < c.count; ++i) {
      places.emplace_back(c.offsets[i], c.sizes[i]);
    }
  } else {
    // After every release posted on the hot path (order, and their
    // failures come first).
    TP_RETURN_IF_ERROR(Drain(what, true));
    v1::AcquireRequest request;
    *request.mutable_session() = Ref();
    request.mutable_tensor_ids()->Add(tensor_ids.begin(), tensor_ids.end());
    request.set_mode(ToProto(mode));
    request.set_location(location);
    if (op_seq != 0) {
      request.set_op_key(op_key);
      request.set_op_seq(op_seq);
      request.set_non_model_bytes(non_model);
    }
    v1::AcquireResponse response;
    grpc::ClientContext ctx;
    TP_RETURN_IF_ERROR(Call(what, stub_->Acquire(&ctx, request, &response)));
    ready = response.ready_sequence();
    generation = response.map_generation();
    got.on_host = response.location() == v1::LOCATION_HOST;
    for (const auto& t : response.tensors()) {
      places.emplace_back(t.device_offset(), t.size_bytes());
    }
  }
  if (places.size() != tensor_ids.size()) {
    return absl::DataLossError(absl::StrCat(what, ": the daemon answered for ",
                                            places.size(), " tensors, not ",
                                            tensor_ids.size()));
  }
  TP_RETURN_IF_ERROR(SyncMappings(generation));
  if (got.on_host) {
    // The CPU reads next: wait here for any write-back to land.
    TP_RETURN_IF_ERROR(mapping_->WaitArrivalOnHost(ready, fd_conn_.get()));
  } else {
    TP_RETURN_IF_ERROR(mapping_->WaitArrival(ready, stream, fd_conn_.get()));
  }
  got.tensors.reserve(places.size());
  for (size_t i = 0; i < places.size(); ++i) {
    const auto [offset, size] = places[i];
    if (got.on_host) {
      if (offset + size > host_.size()) {
        return absl::DataLossError(
            "the daemon sent a host offset out of range");
      }
      got.tensors.push_back(
          AcquiredTensor{tensor_ids[i], host_.data() + offset, size});
    } else {
      got.tensors.push_back(
          AcquiredTensor{tensor_ids[i], mapping_->base() + offset, size});
    }
  }
  return got;
}

absl::StatusOr<std::vector<AcquiredTensor>> Session::Acquire(
    std::span<const uint64_t> tensor_ids, AccessMode mode, CudaStream stream) {
  TP_ASSIGN_OR_RETURN(
      Impl::Acquired got,
      impl_->Acquire("Acquire", v1::LOCATION_DEVICE, tensor_ids, mode, stream));
  return std::move(got.tensors);
}

absl::StatusOr<std::vector<AcquiredTensor>> Session::AcquireOnHost(
    std::span<const uint64_t> tensor_ids, AccessMode mode) {
  TP_ASSIGN_OR_RETURN(Impl::Acquired got,
                      impl_->Acquire("AcquireOnHost", v1::LOCATION_HOST,
                                     tensor_ids, mode, nullptr));
  return std::move(got.tensors);
}

absl::StatusOr<PlacedTensors> Session::AcquireWherePlaced(
    std::span<const uint64_t> tensor_ids, AccessMode mode, CudaStream stream) {
  TP_ASSIGN_OR_RETURN(Impl::Acquired got,
                      impl_->Acquire("AcquireWherePlaced", v1::LOCATION_PLACED,
                                     tensor_ids, mode, stream));
  return PlacedTensors{.on_device = !got.on_host,
                       .tensors = std::move(got.tensors)};
}

absl::Status Session::Release(std::span<const uint64_t> tensor_ids,
                              TensorState target, CudaStream stream) {
  TP_RETURN_IF_ERROR(impl_->mapping_->BeforeRelease(stream));
  if (impl_->HotPathFits(tensor_ids.size())) {
    wire::HotPathRequest request =
        HotRequest(wire::HotPathOp::kRelease, ToProto(target), tensor_ids);
    return impl_->HotRelease(request);
  }
  TP_RETURN_IF_ERROR(impl_->Drain("Release", true));
  v1::ReleaseRequest request;
  *request.mutable_session() = impl_->Ref();
  request.mutable_tensor_ids()->Add(tensor_ids.begin(), tensor_ids.end());
  request.set_target(ToProto(target));
  v1::ReleaseResponse response;
  grpc::ClientContext ctx;
  return impl_->Call("Release",
                     impl_->stub_->Release(&ctx, request, &response));
}

void Session::BeginOp(std::string key, uint64_t non_model_bytes) {
  std::lock_guard<std::mutex> lock(impl_->op_mu_);
  impl_->op_key_ = std::move(key);
  ++impl_->op_seq_;
  impl_->op_non_model_ = non_model_bytes;
}

absl::Status Session::Flush() { return impl_->Drain("Flush", true); }

absl::StatusOr<PlacementStatus> Session::MarkStep() {
  if (impl_->hot() != nullptr && !impl_->closed_) {
    // Over the ring: the daemon serves it in order after the releases
    // posted before it, as it would after a drain.
    wire::HotPathRequest request =
        HotRequest(wire::HotPathOp::kMarkStep, 0, {});
    wire::HotPathCompletion completion;
    TP_RETURN_IF_ERROR(impl_->HotCall("MarkStep", request, &completion));
    v1::PlacementStatus placement;
    if (completion.placement_bytes > sizeof(completion.placement) ||
        !placement.ParseFromArray(
            completion.placement,
            static_cast<int>(completion.placement_bytes))) {
      return absl::DataLossError("MarkStep: malformed hot path completion");
    }
    return FromProto(placement);
  }
  TP_RETURN_IF_ERROR(impl_->Drain("MarkStep", true));
  v1::MarkStepRequest request;
  *request.mutable_session() = impl_->Ref();
  v1::MarkStepResponse response;
  grpc::ClientContext ctx;
  TP_RETURN_IF_ERROR(impl_->Call(
      "MarkStep", impl_->stub_->MarkStep(&ctx, request, &response)));
  return FromProto(response.placement());
}

absl::StatusOr<PlacementStatus> Session::Placement() {
  TP_RETURN_IF_ERROR(impl_->Drain("GetStats", false));
  v1::StatsRequest request;
  *request.mutable_session() = impl_->Ref();
  v1::StatsResponse r;
  grpc::ClientContext ctx;
  TP_RETURN_IF_ERROR(
      impl_->Call("GetStats", impl_->stub_->GetStats(&ctx, request, &r)));
  return FromProto(r.placement());
}

absl::StatusOr<SessionStats> Session::Stats() {
  TP_RETURN_IF_ERROR(impl_->Drain("GetStats", false));
  v1::StatsRequest request;
  *request.mutable_session() = impl_->Ref();
  v1::StatsResponse r;
  grpc::ClientContext ctx;
  TP_RETURN_IF_ERROR(
      impl_->Call("GetStats", impl_->stub_->GetStats(&ctx, request, &r)));
  const auto& s = r.session();
  SessionStats out;
  out.bytes_to_device = s.bytes_to_device();
  out.bytes_to_host = s.bytes_to_host();
  out.evictions = s.evictions();
  out.clean_evictions = s.clean_evictions();
  out.device_bytes = s.device_bytes();
  out.peak_device_bytes = s.peak_device_bytes();
  out.host_bytes = s.host_bytes();
  out.chunks = s.chunks();
  out.tensors = s.tensors();
  out.acquires = s.acquires();
  out.device_pool_capacity = r.device_pool().capacity_bytes();
  out.device_pool_used = r.device_pool().used_bytes();
  out.host_pool_capacity = r.host_pool().capacity_bytes();
  out.host_pool_used = r.host_pool().used_bytes();
  out.sessions = r.sessions();
  out.prefetches = s.prefetches();
  out.prefetch_bytes = s.prefetch_bytes();
  out.prefetch_hits = s.prefetch_hits();
  out.prefetch_late = s.prefetch_late();
  out.prefetch_late_short_lead = s.prefetch_late_short_lead();
  out.prefetch_wasted = s.prefetch_wasted();
  return out;
}

absl::StatusOr<std::vector<ChunkState>> Session::Chunks() {
  TP_RETURN_IF_ERROR(impl_->Drain("GetChunks", false));
  v1::ChunkStateRequest request;
  *request.mutable_session() = impl_->Ref();
  v1::ChunkStateResponse r;
  grpc::ClientContext ctx;
  TP_RETURN_IF_ERROR(
      impl_->Call("GetChunks", impl_->stub_->GetChunks(&ctx, request, &r)));
  std::vector<ChunkState> out;
  for (const auto& c : r.chunks()) {
    auto group = FromProto(c.group());
    out.push_back(ChunkState{c.chunk_id(), c.size_bytes(),
                             group.value_or(Group::kOther),
                             c.location() == v1::LOCATION_DEVICE, c.dirty()});
  }
  return out;
}

absl::Status Session::Close() {
  if (impl_ == nullptr || impl_->closed_) return absl::OkStatus();
  // Releases still in the ring complete first; one that failed is the
  // answer (the session closes all the same).
  absl::Status drained = impl_->Drain("Close", true);
  impl_->closed_ = true;
  v1::CloseSessionRequest request;
  *request.mutable_session() = impl_->Ref();
  v1::CloseSessionResponse response;
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
  absl::Status status = impl_->Call(
      "CloseSession", impl_->stub_->CloseSession(&ctx, request, &response));
  impl_->fd_conn_.Reset();
  return drained.ok() ? status : drained;
}

uint64_t Session::id() const { return impl_->id_; }
Policy Session::policy() const { return impl_->policy_; }
const DeviceInfo& Session::device() const { return impl_->device_; }
uint64_t Session::chunk_size() const { return impl_->chunk_size_; }

}  // namespace tidepool
