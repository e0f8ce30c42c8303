#include "daemon/policy/trace.h"

#include <algorithm>

namespace tidepool {

bool Trace::Touches(size_t pos, uint64_t chunk) const {
  const auto& c = ops.at(pos).chunks;
  return std::find(c.begin(), c.end(), chunk) != c.end();
}

void TraceRecorder::BeginOp(absl::string_view key, uint64_t non_model_bytes,
                            uint64_t outside_bytes) {
  if (overflowed_) return;
  if (trace_.ops.size() >= max_ops_) {
    overflowed_ = true;
    return;
  }
  trace_.ops.push_back(TraceOp{.key = std::string(key),
                               .non_model_bytes = non_model_bytes,
                               .outside_bytes = outside_bytes});
}

void TraceRecorder::Touch(uint64_t chunk, uint64_t bytes, bool write) {
  if (overflowed_) return;
  if (trace_.ops.empty()) BeginOp("", 0, 0);
  if (overflowed_) return;
  if (++touches_ > max_touches_) {
    overflowed_ = true;
    return;
  }
  TraceOp& op = trace_.ops.back();
  if (std::find(op.chunks.begin(), op.chunks.end(), chunk) == op.chunks.end()) {
    op.chunks.push_back(chunk);
  }
  if (write && std::find(op.written.begin(), op.written.end(), chunk) ==
                   op.written.end()) {
    op.written.push_back(chunk);
  }
  trace_.chunk_bytes[chunk] = bytes;
}

void TraceRecorder::Placed(
    std::span<const std::pair<uint64_t, uint64_t>> chunks, bool write) {
  if (overflowed_ || chunks.empty()) return;
  touches_ += chunks.size();
  if (touches_ > max_touches_) {
    overflowed_ = true;
    return;
  }
  PlacedSet set;
  for (const auto& [chunk, bytes] : chunks) {
    set.chunks.push_back(chunk);
    trace_.chunk_bytes[chunk] = bytes;
  }
  std::sort(set.chunks.begin(), set.chunks.end());
  set.chunks.erase(std::unique(set.chunks.begin(), set.chunks.end()),
                   set.chunks.end());
  auto [it, fresh] =
      placed_index_.try_emplace(set.chunks, trace_.placed.size());
  if (!fresh) {
    PlacedSet& seen = trace_.placed[it->second];
    if (write) {
      seen.written = seen.chunks;
      ++seen.writes;
    }
    return;
  }
  if (write) {
    set.written = set.chunks;
    set.writes = 1;
  }
  trace_.placed.push_back(std::move(set));
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
  overflowed_ = false;
}

}  // namespace tidepool
