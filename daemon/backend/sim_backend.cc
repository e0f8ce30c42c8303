#include "daemon/backend/sim_backend.h"

#include <glog/logging.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <new>

#include "absl/strings/str_cat.h"
#include "common/futex.h"
#include "common/status_macros.h"

namespace tidepool {
namespace {
// Slots are page-aligned memfds; a small chunk costs its own size rounded
// to 64 KiB (the smallest chunk a session may ask for), not a VMM granule.
constexpr uint64_t kSimGranularity = 64ull << 10;
constexpr uint64_t kControlPageBytes = 4096;
// Copy workers when the config leaves it open: more memcpy threads than
// cores only contend, and past a few the memory bus is the limit.
constexpr int kDefaultCopyWorkers = 4;
constexpr int kMaxCopyWorkers = 16;
// A copy is split into pieces of at least this much: below it, handing a
// piece to another worker costs about what copying it does.
constexpr uint64_t kMinPieceBytes = 1ull << 20;
constexpr uint64_t kPageBytes = 4096;
}  // namespace

absl::StatusOr<std::unique_ptr<SimBackend>> SimBackend::Create(
    const BackendOptions& options, uint8_t* host_pool, uint64_t host_bytes) {
  if (options.pool_bytes < kSimGranularity) {
    return absl::InvalidArgumentError(
        absl::StrCat("sim device pool must be at least ", kSimGranularity,
                     " bytes, got ", options.pool_bytes));
  }
  if (options.sim_link_gbps < 0) {
    return absl::InvalidArgumentError("sim_link_gbps must be >= 0");
  }
  if (options.sim_copy_workers < 0 ||
      options.sim_copy_workers > kMaxCopyWorkers) {
    return absl::InvalidArgumentError(
        absl::StrCat("sim_copy_workers must be 0 (default) to ",
                     kMaxCopyWorkers, ", got ", options.sim_copy_workers));
  }
  std::unique_ptr<SimBackend> b(new SimBackend());
  const uint64_t capacity = options.pool_bytes & ~(kSimGranularity - 1);
  b->desc_.name = absl::StrCat("sim", options.sim_index);
  b->desc_.uuid = absl::StrCat("SIM-", options.sim_index);
  b->desc_.backend = "sim";
  b->desc_.ordinal = options.sim_index;
  b->desc_.capacity_bytes = capacity;
  b->desc_.granularity = kSimGranularity;
  b->host_ = host_pool;
  b->host_bytes_ = host_bytes;
  b->link_bytes_per_second_ = options.sim_link_gbps * 1e9;
  TP_ASSIGN_OR_RETURN(
      b->device_, ReservedRegion::Reserve(capacity, ReservedRegion::kDaemon));
  TP_ASSIGN_OR_RETURN(b->control_fd_,
                      CreateMemfd("tidepool-sim-control", kControlPageBytes));
  TP_ASSIGN_OR_RETURN(
      b->control_, SharedMapping::Map(b->control_fd_.get(), kControlPageBytes));
  // Only the daemon writes the arrival sequence: clients get a read-only
  // view, so no client can make another read bytes that have not landed.
  TP_RETURN_IF_ERROR(SealAgainstWrites(b->control_fd_.get()));
  auto* page = new (b->control_.data()) wire::ControlPage();
  page->magic = wire::kControlMagic;
  page->version = 1;
  page->arrived_sequence.store(0);
  page->arrived_wake.store(0);
  int workers = options.sim_copy_workers;
  if (workers == 0) {
    workers = std::clamp(static_cast<int>(std::thread::hardware_concurrency()),
                         1, kDefaultCopyWorkers);
  }
  // A modelled link carries one copy at a time, in order: each copy then
  // takes its bytes / bandwidth, as before there were several workers.
  if (b->link_bytes_per_second_ > 0) workers = 1;
  b->copy_workers_ = workers;
  for (int i = 1; i < workers; ++i) {
    b->copiers_.emplace_back([raw = b.get()] { raw->CopierLoop(); });
  }
  b->sequencer_ = std::thread([raw = b.get()] { raw->SequencerLoop(); });
  return b;
}

SimBackend::~SimBackend() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
  }
  if (sequencer_.joinable()) sequencer_.join();
  {
    absl::MutexLock lock(&phase_mu_);
    copiers_stop_ = true;
  }
  for (auto& t : copiers_) t.join();
}

absl::StatusOr<uint64_t> SimBackend::Submit(CopyBatch batch) {
  auto in_range = [](const CopyOp& op, uint64_t dev, uint64_t host,
                     bool check_host) {
    return op.device_offset + op.bytes <= dev &&
           (!check_host || op.host_offset + op.bytes <= host);
  };
  for (const auto& op : batch.to_host) {
    if (!in_range(op, desc_.capacity_bytes, host_bytes_, true)) {
      return absl::InternalError("copy outside the pools");
    }
  }
  for (const auto& op : batch.to_device) {
    if (!in_range(op, desc_.capacity_bytes, host_bytes_, true)) {
      return absl::InternalError("copy outside the pools");
    }
  }
  for (const auto& op : batch.zero_device) {
    if (!in_range(op, desc_.capacity_bytes, 0, false)) {
      return absl::InternalError("zero fill outside the pool");
    }
  }
  absl::MutexLock lock(&mu_);
  const uint64_t seq = ++submitted_;
  queue_.emplace_back(seq, std::move(batch));
  return seq;
}

absl::Status SimBackend::Drain() {
  absl::MutexLock lock(&mu_);
  struct Target {
    SimBackend* backend;
    uint64_t sequence;
  } target{this, submitted_};
  mu_.Await(absl::Condition(
      +[](Target* t) { return t->backend->completed_ >= t->sequence; },
      &target));
  return absl::OkStatus();
}

uint64_t SimBackend::CompletedSequence() const {
  absl::MutexLock lock(&mu_);
  return completed_;
}

void SimBackend::FillAttachReply(wire::AttachReply* reply) const {
  reply->backend = wire::Backend::kSim;
  reply->device_ordinal = desc_.ordinal;
  reply->device_pool_bytes = desc_.capacity_bytes;
  reply->control_page_bytes = control_.size();
}

absl::StatusOr<std::shared_ptr<UniqueFd>> SimBackend::BackSlot(
    uint64_t offset, uint64_t bytes, uint64_t owner, CopyBatch& batch) {
  if (bytes == 0 || offset % kSimGranularity != 0 ||
      bytes % kSimGranularity != 0 || offset > desc_.capacity_bytes ||
      bytes > desc_.capacity_bytes - offset) {
    return absl::InternalError(
        absl::StrCat("slot [", offset, ", +", bytes, ") outside the pool"));
  }
  absl::MutexLock lock(&slots_mu_);
  auto it = backings_.find(offset);
  if (it != backings_.end() && it->second.parked && it->second.owner == owner &&
      it->second.bytes == bytes) {
    Unpark(offset, it->second);
    it->second.parked = false;
    return nullptr;  // the owner's client maps it already
  }
  SlotInstall install{offset, bytes, nullptr, {}};
  // Every backing that overlaps the new slot goes: it was parked (the
  // allocator gave out free space), and its pages are freed before the new
  // backing's first copy.
  it = backings_.upper_bound(offset);
  if (it != backings_.begin()) --it;
  while (it != backings_.end() && it->first < offset + bytes) {
    if (it->first + it->second.bytes <= offset) {
      ++it;
      continue;
    }
    if (!it->second.parked) {
      return absl::InternalError(absl::StrCat("slot [", offset, ", +", bytes,
                                              ") overlaps a slot in use at ",
                                              it->first));
    }
    Unpark(it->first, it->second);
    install.retire.emplace_back(it->first, it->second.bytes);
    it = backings_.erase(it);
  }
  TP_ASSIGN_OR_RETURN(UniqueFd fd, CreateMemfd("tidepool-sim-slot", bytes));
  install.fd = std::make_shared<UniqueFd>(std::move(fd));
  backings_[offset] = Backing{bytes, owner, false};
  batch.installs.push_back(install);
  return install.fd;
}

void SimBackend::Unpark(uint64_t offset, const Backing& b) {
  if (!b.parked) return;
  auto p = parked_.find({b.owner, b.bytes});
  if (p == parked_.end()) return;
  p->second.erase(offset);
  if (p->second.empty()) parked_.erase(p);
}

void SimBackend::ReleaseSlot(uint64_t offset, uint64_t bytes, uint64_t owner) {
  absl::MutexLock lock(&slots_mu_);
  auto it = backings_.find(offset);
  if (it == backings_.end() || it->second.parked) return;
  it->second.parked = true;
  parked_[{it->second.owner, it->second.bytes}].insert(offset);
}

std::optional<uint64_t> SimBackend::ParkedSlot(uint64_t owner,
                                               uint64_t bytes) const {
  absl::MutexLock lock(&slots_mu_);
  auto p = parked_.find({owner, bytes});
  if (p == parked_.end() || p->second.empty()) return std::nullopt;
  return *p->second.begin();
}

void SimBackend::ForgetOwner(uint64_t owner) {
  absl::MutexLock lock(&slots_mu_);
  for (auto p = parked_.lower_bound({owner, 0});
       p != parked_.end() && p->first.first == owner;) {
    for (uint64_t offset : p->second) {
      auto it = backings_.find(offset);
      if (it != backings_.end()) it->second.owner = 0;
      parked_[{0, p->first.second}].insert(offset);
    }
    p = parked_.erase(p);
  }
}

void SimBackend::RunPiece(const Piece& piece) {
  if (piece.src == nullptr) {
    std::memset(piece.dst, 0, piece.bytes);
  } else {
    std::memcpy(piece.dst, piece.src, piece.bytes);
  }
}

void SimBackend::Throttle(Clock::time_point start, uint64_t bytes) const {
  if (link_bytes_per_second_ <= 0) return;
  // Model the link: the copy takes at least bytes / bandwidth.
  const auto budget = std::chrono::duration<double>(static_cast<double>(bytes) /
                                                    link_bytes_per_second_);
  std::this_thread::sleep_until(
      start + std::chrono::duration_cast<std::chrono::nanoseconds>(budget));
}

void SimBackend::RunPhase(const std::vector<CopyOp>& to_host,
                          const std::vector<CopyOp>& zero_device,
                          const std::vector<CopyOp>& to_device) {
  // The copies of one phase go to distinct ranges (write-backs to their
  // chunks' host homes; zero fills and loads to slots placed for them), so
  // their pieces may run in any order and at once.
  std::vector<Piece> pieces;
  std::vector<OpTiming> timings;
  auto add = [&](const std::vector<CopyOp>& ops, bool to_dev, bool zero) {
    for (const CopyOp& op : ops) {
      if (op.bytes == 0) continue;
      uint8_t* dst =
          to_dev ? device_.data() + op.device_offset : host_ + op.host_offset;
      const uint8_t* src = zero     ? nullptr
                           : to_dev ? host_ + op.host_offset
                                    : device_.data() + op.device_offset;
      const uint64_t n =
          std::clamp<uint64_t>(op.bytes / kMinPieceBytes, 1, copy_workers_);
      const uint64_t piece =
          ((op.bytes + n - 1) / n + kPageBytes - 1) & ~(kPageBytes - 1);
      timings.push_back(OpTiming{op.bytes, to_dev, zero});
      for (uint64_t done = 0; done < op.bytes; done += piece) {
        pieces.push_back(Piece{dst + done, src ? src + done : nullptr,
                               std::min(piece, op.bytes - done),
                               timings.size() - 1});
      }
    }
  };
  add(to_host, /*to_dev=*/false, /*zero=*/false);
  add(zero_device, /*to_dev=*/true, /*zero=*/true);
  add(to_device, /*to_dev=*/true, /*zero=*/false);
  if (pieces.empty()) return;

  if (copy_workers_ == 1 || pieces.size() == 1) {
    // Nothing to share (or a modelled link, one copy at a time): the
    // sequencer copies alone, waking no one. One piece per copy here.
    for (const Piece& p : pieces) {
      OpTiming& t = timings[p.op];
      t.start = Clock::now();
      RunPiece(p);
      Throttle(t.start, p.bytes);
      t.end = Clock::now();
    }
  } else {
    {
      absl::MutexLock lock(&phase_mu_);
      pieces_ = std::move(pieces);
      timings_ = std::move(timings);
      next_piece_ = 0;
      pieces_left_ = pieces_.size();
    }
    // Every worker, the sequencer included, takes pieces until none is
    // left; then the sequencer waits for the last ones in flight.
    for (;;) {
      Piece p;
      {
        absl::MutexLock lock(&phase_mu_);
        if (next_piece_ >= pieces_.size()) break;
        p = pieces_[next_piece_++];
      }
      RunSharedPiece(p);
    }
    absl::MutexLock lock(&phase_mu_);
    phase_mu_.Await(absl::Condition(
        +[](SimBackend* b) ABSL_EXCLUSIVE_LOCKS_REQUIRED(b->phase_mu_) {
          return b->pieces_left_ == 0;
        },
        this));
    timings = std::move(timings_);
    timings_.clear();
    pieces_.clear();
    next_piece_ = 0;
  }
  if (!copy_observer_) return;
  for (const OpTiming& t : timings) {
    if (t.zero) continue;
    copy_observer_(t.to_device, t.bytes,
                   std::chrono::duration<double>(t.end - t.start).count());
  }
}

void SimBackend::RunSharedPiece(const Piece& piece) {
  const auto start = Clock::now();
  RunPiece(piece);
  const auto end = Clock::now();
  absl::MutexLock lock(&phase_mu_);
  OpTiming& t = timings_[piece.op];
  t.start = std::min(t.start, start);
  t.end = std::max(t.end, end);
  --pieces_left_;
}

void SimBackend::CopierLoop() {
  for (;;) {
    Piece p;
    {
      absl::MutexLock lock(&phase_mu_);
      phase_mu_.Await(absl::Condition(
          +[](SimBackend* b) ABSL_EXCLUSIVE_LOCKS_REQUIRED(b->phase_mu_) {
            return b->copiers_stop_ || b->next_piece_ < b->pieces_.size();
          },
          this));
      if (next_piece_ >= pieces_.size()) return;  // stopping
      p = pieces_[next_piece_++];
    }
    RunSharedPiece(p);
  }
}

void SimBackend::SequencerLoop() {
  static const std::vector<CopyOp> kNone;
  for (;;) {
    std::pair<uint64_t, CopyBatch> item;
    {
      absl::MutexLock lock(&mu_);
      mu_.Await(absl::Condition(
          +[](SimBackend* b) ABSL_EXCLUSIVE_LOCKS_REQUIRED(b->mu_) {
            return b->stop_ || !b->queue_.empty();
          },
          this));
      if (queue_.empty()) return;  // stopping and drained
      item = std::move(queue_.front());
      queue_.pop_front();
    }
    // Batches run one at a time, in order, and each phase ends before the
    // next begins: write-backs always precede the installs (which withdraw
    // the backings they read) and the loads submitted after them, and a
    // batch has landed in full when its sequence is published.
    const CopyBatch& batch = item.second;
    RunPhase(batch.to_host, kNone, kNone);
    for (const auto& install : batch.installs) {
      for (const auto& [offset, bytes] : install.retire) {
        absl::Status s = device_.Withdraw(offset, bytes);
        if (!s.ok()) LOG(ERROR) << "sim slot withdrawal: " << s;
      }
      absl::Status s = device_.MapAt(install.device_offset, install.bytes,
                                     install.fd->get());
      if (!s.ok()) LOG(ERROR) << "sim slot installation: " << s;
    }
    RunPhase(kNone, batch.zero_device, batch.to_device);
    {
      absl::MutexLock lock(&mu_);
      completed_ = item.first;
    }
    page()->arrived_sequence.store(item.first, std::memory_order_release);
    page()->arrived_wake.fetch_add(1, std::memory_order_release);
    FutexWakeAll(&page()->arrived_wake);
  }
}

}  // namespace tidepool
