// Warm-up traces for the `auto` policy: what every op of a training step
// touched and how much non-model memory (activations, workspaces) was in
// use while it ran. Ops are identified by a key the client supplies (such as
// "layer3.attn/fwd"), never by their position, so that a plan can find its
// place again after an evaluation pass or a skipped op.
//
//   TraceRecorder rec;
//   rec.BeginOp("layer0/fwd", /*non_model_bytes=*/1 << 30, /*outside=*/0);
//   rec.Touch(chunk_id, chunk_bytes, /*write=*/false);
//   ...
//   std::optional<Trace> trace = rec.EndStep();  // one step's ops, in order
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/string_view.h"

namespace tidepool {

struct TraceOp {
  std::string key;
  std::vector<uint64_t> chunks;   // first-touch order, no duplicates
  std::vector<uint64_t> written;  // chunks it acquired for writing
  uint64_t non_model_bytes = 0;   // the client's report for this op
  // Device memory outside the daemon's pool that the framework could use at
  // this op (driver free bytes + the framework's own bytes); 0 on the sim
  // backend, whose "card" is the pool itself.
  uint64_t outside_bytes = 0;
};

// The chunks of one placed acquire (Session::AcquireWherePlaced): an update
// the client runs wherever the policy puts it, on the device or in the
// host homes (the optimizer step of a parameter block). Not an op: it may
// come from another thread at any point of the step.
struct PlacedSet {
  std::vector<uint64_t> chunks;   // ascending, no duplicates
  std::vector<uint64_t> written;  // ascending
  // Acquires of this set for writing in the step (blocks that share a
  // chunk each write it).
  int writes = 0;
};

struct Trace {
  std::vector<TraceOp> ops;
  std::vector<PlacedSet> placed;             // distinct sets, first-seen order
  std::map<uint64_t, uint64_t> chunk_bytes;  // every chunk touched -> bytes

  // Whether the op at `pos` touches `chunk`.
  bool Touches(size_t pos, uint64_t chunk) const;
};

// Records one step at a time. Bounded: a step with more than `max_ops` ops,
// `max_touches` chunk touches or `max_bytes` of trace (keys included, as
// the heap holds them) is abandoned (EndStep returns nothing), so a client
// cannot make the daemon keep an unbounded trace: one that sends a new op
// key with every acquire costs at most `max_bytes` per session.
class TraceRecorder {
 public:
  explicit TraceRecorder(size_t max_ops = 1 << 16, size_t max_touches = 1 << 22,
                         size_t max_bytes = 16 << 20)
      : max_ops_(max_ops), max_touches_(max_touches), max_bytes_(max_bytes) {}

  void BeginOp(absl::string_view key, uint64_t non_model_bytes,
               uint64_t outside_bytes);
  // A chunk the current op acquired. Before the first BeginOp of a step,
  // touches go to an op with an empty key.
  void Touch(uint64_t chunk, uint64_t bytes, bool write);
  // A placed acquire of `chunks` (chunk, bytes). Identical sets are
  // recorded once.
  void Placed(std::span<const std::pair<uint64_t, uint64_t>> chunks,
              bool write);
  // Ends the step: its trace, or nothing when it was empty or overflowed.
  std::optional<Trace> EndStep();
  // Forgets the step being recorded.
  void Reset();

  size_t ops() const { return trace_.ops.size(); }
  bool overflowed() const { return overflowed_; }
  // The heap the step recorded so far holds, estimated.
  size_t bytes() const { return bytes_; }

 private:
  // Adds `n` bytes to the estimate; false (and overflowed) past max_bytes.
  bool Charge(size_t n);
  // Abandons the step: forgets what it recorded, ignores the rest of it.
  void Overflow();

  size_t max_ops_;
  size_t max_touches_;
  size_t max_bytes_;
  size_t touches_ = 0;
  size_t bytes_ = 0;
  bool overflowed_ = false;
  Trace trace_;
  // Recorded placed sets -> their index in trace_.placed.
  std::map<std::vector<uint64_t>, size_t> placed_index_;
};

}  // namespace tidepool
