// TidepoolMetrics: the daemon's metric set (every tidepool_* series on
// /metrics) behind small typed methods that the daemon core calls, kept in a
// prometheus-cpp registry (Debian: prometheus-cpp-dev). Names follow the
// Prometheus conventions: prefix tidepool_, base units (bytes, seconds),
// counters end in _total. Devices carry the labels `gpu` (the ordinal as
// text, or "sim0" for a sim device) and `UUID`, as dcgm-exporter does, so
// the two can be joined in PromQL. No label takes unbounded values:
// sessions appear only as counts per policy.
//
// Every label combination of a device is created when the device is
// registered, so rates read 0 (not "no data") before the first event.
//
//   metrics::TidepoolMetrics metrics("0.1.0", "cuda");
//   metrics::DeviceMetrics& gpu0 = metrics.Device("0", "GPU-8c9f...");
//   metrics.SetDevicePool(gpu0, {.capacity_bytes = 70 << 30,
//                                .used_bytes = 12 << 30});
//   metrics.OnBytesMoved(gpu0, metrics::Direction::kHostToDevice,
//                        64 << 20, 0.0012);
//   metrics.ObserveRpc("OpenSession", 0.0004);
//   metrics::Exposer exposer({.address = "127.0.0.1:9400"});
//   exposer.AddCollectable(metrics.collectable());
//
// Thread-safety: every method may be called from any thread. Device(),
// RemoveDevice() and the two Set*Pool() take a lock of this object; the
// counter and gauge updates are atomics; a histogram observation
// (OnBytesMoved, ObserveRpc, ObserveAcquireWait) takes that one series'
// mutex in prometheus-cpp for a few instructions.
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "prometheus/collectable.h"
#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/metric_family.h"
#include "prometheus/registry.h"

namespace tidepool::metrics {

// The label values below are part of the dashboard's contract; do not
// rename them without updating deploy/grafana and deploy/prometheus.

enum class Direction { kHostToDevice, kDeviceToHost };  // "h2d", "d2h"
inline constexpr int kDirectionCount = 2;

// Where a chunk's bytes are: kDevice when the chunk has a device copy
// (clean or dirty), kHost when it lives only in its host home.
enum class ChunkLocation { kHost, kDevice };  // "host", "device"
inline constexpr int kChunkLocationCount = 2;

// Tensor states of the design ("compute", "hold", "hold_after_bwd",
// "free", "ready_for_reduce").
enum class ChunkState {
  kCompute,
  kHold,
  kHoldAfterBwd,
  kFree,
  kReadyForReduce
};
inline constexpr int kChunkStateCount = 5;

// Why a chunk left the device: the device pool was full ("capacity"), the
// session hit its quota ("quota"), or its session was reclaimed ("reclaim").
enum class EvictionReason { kCapacity, kQuota, kReclaim };
inline constexpr int kEvictionReasonCount = 3;

// What became of a prefetch: on the device before it was needed ("hit"),
// still in flight when acquired ("late"), or evicted/never used ("wasted").
enum class PrefetchOutcome { kHit, kLate, kWasted };
inline constexpr int kPrefetchOutcomeCount = 3;

// Placement policy of a session ("cuda", "cpu", "static", "auto").
enum class Policy { kCuda, kCpu, kStatic, kAuto };
inline constexpr int kPolicyCount = 4;

// Why a session's memory was reclaimed: orderly CloseSession ("closed"),
// the client's stream or socket dropped ("disconnected"), or it opened a
// session and never attached the fd socket in time ("attach_timeout").
enum class ReclaimReason { kClosed, kDisconnected, kAttachTimeout };
inline constexpr int kReclaimReasonCount = 3;

std::string_view LabelValue(Direction direction);
std::string_view LabelValue(ChunkLocation location);
std::string_view LabelValue(ChunkState state);
std::string_view LabelValue(EvictionReason reason);
std::string_view LabelValue(PrefetchOutcome outcome);
std::string_view LabelValue(Policy policy);
std::string_view LabelValue(ReclaimReason reason);

// Label values of tidepool_rpc_duration_seconds{method}: the control-plane
// RPCs, plus "other" for any method not in this list.
inline constexpr std::array<std::string_view, 14> kRpcMethods = {
    "OpenSession", "CloseSession", "RegisterTensors", "Acquire",
    "Release",     "GetStats",     "GetChunks",       "MarkStep",
    "GetStatus",   "ListSessions", "ListChunks",      "GetTimeline",
    "GetTrace",    "other"};

// Pool occupancy in bytes.
struct PoolUsage {
  uint64_t capacity_bytes = 0;
  uint64_t used_bytes = 0;
  // High-water mark if the pool tracks one; 0 is fine (the peak gauge also
  // follows used_bytes and never goes down).
  uint64_t peak_bytes = 0;
};

// The metrics of one device, looked up once by Device() and passed back to
// the methods below. The pointers are owned by the registry; they stay
// valid until RemoveDevice().
struct DeviceMetrics {
  std::string gpu;
  std::string uuid;

  prometheus::Gauge* pool_capacity_bytes = nullptr;
  prometheus::Gauge* pool_used_bytes = nullptr;
  prometheus::Gauge* pool_peak_bytes = nullptr;
  // [location][state]
  std::array<std::array<prometheus::Gauge*, kChunkStateCount>,
             kChunkLocationCount>
      chunk_bytes{};
  std::array<prometheus::Counter*, kDirectionCount> bytes_moved{};
  std::array<prometheus::Histogram*, kDirectionCount> transfer_duration{};
  // [reason][clean]
  std::array<std::array<prometheus::Counter*, 2>, kEvictionReasonCount>
      evictions{};
  std::array<prometheus::Counter*, kPrefetchOutcomeCount> prefetches{};
  // [ChunkLocation]: where a placed update ran.
  std::array<prometheus::Counter*, kChunkLocationCount> optimizer_updates{};
  prometheus::Histogram* acquire_wait = nullptr;
  prometheus::Counter* stall_seconds = nullptr;
  std::array<prometheus::Gauge*, kPolicyCount> sessions{};
};

class TidepoolMetrics {
 public:
  // Registers every tidepool_* family in a registry of its own and sets
  // tidepool_build_info{version,backend} to 1. `backend` names the device
  // backends compiled in, e.g. "cuda" or "sim".
  TidepoolMetrics(std::string_view version, std::string_view backend);
  ~TidepoolMetrics();
  TidepoolMetrics(const TidepoolMetrics&) = delete;
  TidepoolMetrics& operator=(const TidepoolMetrics&) = delete;

  // What an Exposer serves: a scrape runs the scrape callback (see
  // SetScrapeCallback), then reads every family. Owned by this object; an
  // exposer holds it weakly, so a scrape after this object is gone sees
  // nothing rather than freed memory.
  std::weak_ptr<prometheus::Collectable> collectable() const;

  // One scrape, as collectable() would answer it (for tests and tools).
  std::vector<prometheus::MetricFamily> Collect() const;

  // The metrics of the device with label values `gpu` ("0", "1", ... or
  // "sim0") and `uuid` ("GPU-..."; for a sim device any stable id). The
  // same pair returns the same object. Call once per device at startup and
  // keep the reference.
  DeviceMetrics& Device(std::string_view gpu, std::string_view uuid);

  // Removes every series of `device` (a device that went away). `device`
  // and its pointers are dangling afterwards.
  void RemoveDevice(DeviceMetrics& device);

  // --- Memory state -------------------------------------------------------

  // tidepool_device_pool_{capacity,used,peak}_bytes{gpu,UUID}.
  void SetDevicePool(DeviceMetrics& device, const PoolUsage& usage);

  // tidepool_host_pool_{capacity,used,peak}_bytes (one pinned pool per node).
  void SetHostPool(const PoolUsage& usage);

  // tidepool_chunk_bytes{gpu,UUID,location,state}: bytes of the chunks of
  // this device's sessions, split by where the chunk is and by the state
  // of the tensors in it (a chunk's unused tail counts as "free"). Set the
  // absolute value, or AddChunkBytes() a signed delta on each transition.
  void SetChunkBytes(DeviceMetrics& device, ChunkLocation location,
                     ChunkState state, uint64_t bytes);
  void AddChunkBytes(DeviceMetrics& device, ChunkLocation location,
                     ChunkState state, int64_t delta_bytes);

  // --- Transfers, eviction, prefetch ---------------------------------------

  // One completed copy of `bytes` that took `seconds` (enqueue to done on
  // the copy stream): tidepool_bytes_moved_total and
  // tidepool_transfer_duration_seconds{gpu,UUID,direction}.
  void OnBytesMoved(DeviceMetrics& device, Direction direction, uint64_t bytes,
                    double seconds);

  // One chunk evicted from the device. `clean`: its device copy equalled
  // the host copy, so no D2H copy was needed (the D2H copy of a dirty
  // eviction is reported separately through OnBytesMoved).
  void OnEviction(DeviceMetrics& device, EvictionReason reason, bool clean);

  // One prefetch whose outcome is now known.
  void OnPrefetch(DeviceMetrics& device, PrefetchOutcome outcome);

  // One placed acquire (an optimizer update, Session::AcquireWherePlaced)
  // served on the device (kDevice) or in the host homes (kHost):
  // tidepool_optimizer_updates_total{gpu,UUID,location}.
  void OnOptimizerUpdate(DeviceMetrics& device, ChunkLocation location);

  // --- Latency and stalls ---------------------------------------------------

  // One control-plane RPC that took `seconds`, handler entry to response.
  // `method` may be the bare name ("OpenSession") or the gRPC full name
  // ("/tidepool.v1.Tidepool/OpenSession"); unknown methods count as
  // "other", so the label stays bounded.
  void ObserveRpc(std::string_view method, double seconds);

  // One acquire on the hot path: submit to "chunk ready" as the client
  // sees it (near 0 when the chunk was already resident).
  void ObserveAcquireWait(DeviceMetrics& device, double seconds);

  // Time a client's compute was blocked waiting for a chunk that prefetch
  // did not hide: tidepool_stall_seconds_total{gpu,UUID}. rate() of it is
  // the fraction of wall time the GPU's trainer spent stalled.
  void AddStall(DeviceMetrics& device, double seconds);

  // --- Sessions -------------------------------------------------------------

  // tidepool_sessions{gpu,UUID,policy}: call once when a session is
  // opened and once when it ends (for whatever reason).
  void SessionOpened(DeviceMetrics& device, Policy policy);
  void SessionClosed(DeviceMetrics& device, Policy policy);

  // tidepool_sessions_reclaimed_total{reason}: a session's memory was
  // given back to the pools.
  void SessionReclaimed(ReclaimReason reason);

  // --- Scrape-time refresh ---------------------------------------------------

  // `callback` runs at the start of every scrape, before any value is
  // read, so the core can refresh gauges that are cheaper to recompute
  // than to keep current (e.g. SetChunkBytes from the chunk registry). It
  // runs on an exposer thread; keep it short and thread-safe. Pass an
  // empty function to clear it; clear it before what it reads is destroyed.
  void SetScrapeCallback(std::function<void()> callback);

 private:
  class Scrape;

  // Raises a peak gauge to `value` if that is larger; never lowers it.
  void RaisePeak(prometheus::Gauge& peak, double value);

  // First: the families below live in it.
  const std::shared_ptr<prometheus::Registry> registry_;
  prometheus::Family<prometheus::Gauge>& device_pool_capacity_;
  prometheus::Family<prometheus::Gauge>& device_pool_used_;
  prometheus::Family<prometheus::Gauge>& device_pool_peak_;
  prometheus::Family<prometheus::Gauge>& chunk_bytes_;
  prometheus::Family<prometheus::Counter>& bytes_moved_;
  prometheus::Family<prometheus::Histogram>& transfer_duration_;
  prometheus::Family<prometheus::Counter>& evictions_;
  prometheus::Family<prometheus::Counter>& prefetches_;
  prometheus::Family<prometheus::Counter>& optimizer_updates_;
  prometheus::Family<prometheus::Histogram>& acquire_wait_;
  prometheus::Family<prometheus::Counter>& stall_seconds_;
  prometheus::Family<prometheus::Gauge>& sessions_;
  prometheus::Gauge& host_pool_capacity_;
  prometheus::Gauge& host_pool_used_;
  prometheus::Gauge& host_pool_peak_;
  std::array<prometheus::Histogram*, kRpcMethods.size()> rpc_duration_{};
  std::array<prometheus::Counter*, kReclaimReasonCount> sessions_reclaimed_{};
  const std::shared_ptr<Scrape> scrape_;

  // prometheus::Gauge has no compare-and-set, so a peak is raised under a
  // lock: read, compare and write must not interleave with another raise.
  absl::Mutex peak_mu_;

  absl::Mutex mu_;  // guards the device map, not the metrics
  std::map<std::pair<std::string, std::string>, std::unique_ptr<DeviceMetrics>>
      devices_ ABSL_GUARDED_BY(mu_);
};

}  // namespace tidepool::metrics
