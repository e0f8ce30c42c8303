// The sim backend: a "device" that is a reserved region of fixed capacity
// whose slots are backed by memfds of their own, one per chunk placement
// (a client maps only its own session's slots), copies done by a small pool
// of copy workers (one, in order, when throttled to a modelled link
// bandwidth), and arrival signalled through a sequence counter in a control
// page that clients map read-only and futex-wait on. Real bytes move.
//
// Batches run one after another, in submission order, on a sequencer
// thread; within a batch, the write-backs, then (after the installs) the
// zero fills and loads, are each split into pieces that all workers take at
// once, and the batch completes when its last piece is done. A single CPU
// thread's memcpy reaches only part of the memory bandwidth, so several
// move a large chunk faster; arrival stays strictly in sequence.
#pragma once

#include <chrono>
#include <deque>
#include <map>
#include <set>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "common/shared_memory.h"
#include "daemon/backend/device_backend.h"

namespace tidepool {

class SimBackend : public DeviceBackend {
 public:
  static absl::StatusOr<std::unique_ptr<SimBackend>> Create(
      const BackendOptions& options, uint8_t* host_pool, uint64_t host_bytes);
  ~SimBackend() override;

  const DeviceDescription& description() const override { return desc_; }
  absl::StatusOr<uint64_t> Submit(CopyBatch batch) override;
  absl::Status Drain() override;
  uint64_t CompletedSequence() const override;
  int device_pool_fd() const override { return -1; }  // slots come apart
  int control_page_fd() const override { return control_fd_.get(); }
  uint64_t control_page_bytes() const override { return control_.size(); }
  void FillAttachReply(wire::AttachReply* reply) const override;
  absl::Status AddSession(uint64_t, const wire::AttachRequest&) override {
    return absl::OkStatus();
  }
  void RemoveSession(uint64_t) override {}
  absl::StatusOr<uint64_t> DriverFreeBytes() const override {
    return desc_.capacity_bytes;
  }
  uint8_t* HostVisibleDeviceMemory() const override { return device_.data(); }
  absl::StatusOr<std::shared_ptr<UniqueFd>> BackSlot(uint64_t offset,
                                                     uint64_t bytes,
                                                     uint64_t owner,
                                                     CopyBatch& batch) override;
  void ReleaseSlot(uint64_t offset, uint64_t bytes, uint64_t owner) override;
  std::optional<uint64_t> ParkedSlot(uint64_t owner,
                                     uint64_t bytes) const override;
  void ForgetOwner(uint64_t owner) override;

  // Copy workers in use (the sequencer is one of them).
  int copy_workers() const { return copy_workers_; }

 private:
  using Clock = std::chrono::steady_clock;
  // One piece of a copy (src null: a zero fill); `op` is its copy's index
  // in the phase.
  struct Piece {
    uint8_t* dst = nullptr;
    const uint8_t* src = nullptr;
    uint64_t bytes = 0;
    size_t op = 0;
  };
  // A copy of a phase as the copy observer hears of it: from its first
  // piece's start to its last piece's end.
  struct OpTiming {
    uint64_t bytes = 0;
    bool to_device = false;
    bool zero = false;
    Clock::time_point start = Clock::time_point::max();
    Clock::time_point end;
  };

  SimBackend() = default;
  void SequencerLoop();
  void CopierLoop();
  // Runs one phase of a batch: its copies split into pieces, all handed to
  // the copy workers at once (the sequencer takes pieces too); returns when
  // every piece is done.
  void RunPhase(const std::vector<CopyOp>& to_host,
                const std::vector<CopyOp>& zero_device,
                const std::vector<CopyOp>& to_device);
  static void RunPiece(const Piece& piece);
  // A piece of the phase in flight: copied, then counted as done.
  void RunSharedPiece(const Piece& piece);
  void Throttle(Clock::time_point start, uint64_t bytes) const;
  wire::ControlPage* page() const {
    return reinterpret_cast<wire::ControlPage*>(control_.data());
  }

  DeviceDescription desc_;
  uint8_t* host_ = nullptr;
  uint64_t host_bytes_ = 0;
  double link_bytes_per_second_ = 0;
  ReservedRegion device_;
  UniqueFd control_fd_;
  SharedMapping control_;

  // Slot backings by offset (called under the manager's lock, in planning
  // order; their physical changes travel in the batches).
  struct Backing {
    uint64_t bytes = 0;
    uint64_t owner = 0;  // 0: its session ended
    bool parked = false;
  };
  void Unpark(uint64_t offset, const Backing& b)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(slots_mu_);
  mutable absl::Mutex slots_mu_;
  std::map<uint64_t, Backing> backings_ ABSL_GUARDED_BY(slots_mu_);
  // Parked backings by (owner, bytes): offsets, lowest first.
  std::map<std::pair<uint64_t, uint64_t>, std::set<uint64_t>> parked_
      ABSL_GUARDED_BY(slots_mu_);

  mutable absl::Mutex mu_;
  std::deque<std::pair<uint64_t, CopyBatch>> queue_ ABSL_GUARDED_BY(mu_);
  uint64_t submitted_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t completed_ ABSL_GUARDED_BY(mu_) = 0;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::thread sequencer_;

  // The phase being copied: pieces handed out from `next_piece_`, and how
  // many are not done yet. Only the sequencer starts a phase, and only once
  // the previous one is done, so one phase is in flight at a time.
  int copy_workers_ = 1;
  absl::Mutex phase_mu_;
  std::vector<Piece> pieces_ ABSL_GUARDED_BY(phase_mu_);
  std::vector<OpTiming> timings_ ABSL_GUARDED_BY(phase_mu_);
  size_t next_piece_ ABSL_GUARDED_BY(phase_mu_) = 0;
  size_t pieces_left_ ABSL_GUARDED_BY(phase_mu_) = 0;
  bool copiers_stop_ ABSL_GUARDED_BY(phase_mu_) = false;
  std::vector<std::thread> copiers_;
};

}  // namespace tidepool
