#include "daemon/policy/trace.h"

#include <algorithm>

namespace tidepool {
namespace {

// What the heap gives for a request of `n` bytes (glibc: 8 bytes of
// header, 16-byte granules, 32 at least); 0 for nothing.
size_t Heap(size_t n) {
  return n == 0 ? 0 : std::max<size_t>(32, (n + 8 + 15) / 16 * 16);
}
// A string's own allocation (none when it fits the inline buffer).
size_t StringHeap(size_t length) { return length > 15 ? Heap(length + 1) : 0; }
// A std::map node holding `value` bytes.
size_t MapNode(size_t value) { return Heap(32 + value); }
// What a vector's buffer grew by when its capacity went from `before` to
// `after` elements of `size` bytes (the old buffer is freed).
size_t Grown(size_t before, size_t after, size_t size) {
  return Heap(after * size) - Heap(before * size);
}
template <typename T>
size_t PushBack(std::vector<T>& v, T value) {
  const size_t before = v.capacity();
  v.push_back(std::move(value));
  return Grown(before, v.capacity(), sizeof(T));
}

}  // namespace

bool Trace::Touches(size_t pos, uint64_t chunk) const {
  const auto& c = ops.at(pos).chunks;
  return std::find(c.begin(), c.end(), chunk) != c.end();
}

void TraceRecorder::BeginOp(absl::string_view key, uint64_t non_model_bytes,
                            uint64_t outside_bytes) {
  if (overflowed_) return;
  if (trace_.ops.size() >= max_ops_) {
    Overflow();
    return;
  }
  const size_t grown =
      PushBack(trace_.ops, TraceOp{.key = std::string(key),
                                   .non_model_bytes = non_model_bytes,
                                   .outside_bytes = outside_bytes});
  Charge(grown + StringHeap(key.size()));
}

void TraceRecorder::Touch(uint64_t chunk, uint64_t bytes, bool write) {
  if (overflowed_) return;
  if (trace_.ops.empty()) BeginOp("", 0, 0);
  if (overflowed_) return;
  if (++touches_ > max_touches_) {
    Overflow();
    return;
  }
  TraceOp& op = trace_.ops.back();
  size_t grown = 0;
  if (std::find(op.chunks.begin(), op.chunks.end(), chunk) == op.chunks.end()) {
    grown += PushBack(op.chunks, chunk);
  }
  if (write && std::find(op.written.begin(), op.written.end(), chunk) ==
                   op.written.end()) {
    grown += PushBack(op.written, chunk);
  }
  auto [it, fresh] = trace_.chunk_bytes.try_emplace(chunk, bytes);
  it->second = bytes;
  if (fresh) grown += MapNode(2 * sizeof(uint64_t));
  Charge(grown);
}

void TraceRecorder::Placed(
    std::span<const std::pair<uint64_t, uint64_t>> chunks, bool write) {
  if (overflowed_ || chunks.empty()) return;
  touches_ += chunks.size();
  if (touches_ > max_touches_) {
    Overflow();
    return;
  }
  PlacedSet set;
  size_t grown = 0;
  for (const auto& [chunk, bytes] : chunks) {
    set.chunks.push_back(chunk);
    auto [it, fresh] = trace_.chunk_bytes.try_emplace(chunk, bytes);
    it->second = bytes;
    if (fresh) grown += MapNode(2 * sizeof(uint64_t));
  }
  if (!Charge(grown)) return;
  std::sort(set.chunks.begin(), set.chunks.end());
  set.chunks.erase(std::unique(set.chunks.begin(), set.chunks.end()),
                   set.chunks.end());
  auto [it, fresh] =
      placed_index_.try_emplace(set.chunks, trace_.placed.size());
  const size_t ids = Heap(set.chunks.size() * sizeof(uint64_t));
  if (!fresh) {
    PlacedSet& seen = trace_.placed[it->second];
    if (write) {
      if (seen.written.empty()) grown = ids;
      seen.written = seen.chunks;
      ++seen.writes;
      Charge(grown);
    }
    return;
  }
  // The set's chunks (with their spare capacity), its index entry (a copy
  // of them), and what it writes.
  grown = Heap(set.chunks.capacity() * sizeof(uint64_t)) + ids +
          MapNode(sizeof(std::vector<uint64_t>) + sizeof(size_t));
  if (write) {
    set.written = set.chunks;
    set.writes = 1;
    grown += ids;
  }
  grown += PushBack(trace_.placed, std::move(set));
  Charge(grown);
}

std::optional<Trace> TraceRecorder::EndStep() {
  std::optional<Trace> out;
  if (!overflowed_ && !trace_.ops.empty()) out = std::move(trace_);
  Reset();
  return out;
}

void TraceRecorder::Reset() {
  trace_ = Trace();
  placed_index_.clear();
  touches_ = 0;
  bytes_ = 0;
  overflowed_ = false;
}

bool TraceRecorder::Charge(size_t n) {
  bytes_ += n;
  if (bytes_ <= max_bytes_) return true;
  Overflow();
  return false;
}

void TraceRecorder::Overflow() {
  // Dropped now rather than at the end of the step: the limits are on
  // what the daemon holds.
  trace_ = Trace();
  placed_index_.clear();
  bytes_ = 0;
  overflowed_ = true;
}

}  // namespace tidepool
