#include "daemon/metrics/tidepool_metrics.h"

#include <algorithm>
#include <cmath>
#include <initializer_list>

#include "absl/strings/str_cat.h"

namespace tidepool::metrics {
namespace {

// Bucket bounds are written out rather than computed so that the `le`
// labels print exactly (2.5 * 1e-5 is not the double nearest 2.5e-5).

// A 64 MiB chunk takes ~1.2 ms over PCIe Gen5, 1 MiB ~20 us; a throttled
// sim link or a GiB-sized tensor takes longer.
const prometheus::Histogram::BucketBoundaries kTransferBuckets = {
    1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3,
    1e-2, 2.5e-2, 5e-2, 0.1,  0.25,   0.5,  1,    2.5};

// Unix-socket gRPC calls take ~100 us; registering many tensors or
// opening a session (pool mapping) can take much longer.
const prometheus::Histogram::BucketBoundaries kRpcBuckets = {
    2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2,
    2.5e-2, 5e-2, 0.1,  0.25,   0.5,  1,    2.5,    5,    10};

// A resident chunk is acquired in microseconds over the shared-memory
// ring; a miss waits for a transfer (milliseconds) or an eviction first.
const prometheus::Histogram::BucketBoundaries kAcquireBuckets = {
    1e-6, 2.5e-6, 5e-6,   1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3,
    5e-3, 1e-2,   2.5e-2, 5e-2, 0.1,    0.25, 0.5,  1,      2.5,  5};

template <typename E>
constexpr int Index(E value) {
  return static_cast<int>(value);
}

// prometheus-cpp adds a NaN to a histogram's sum (and a counter's value)
// like any other number, which would poison the series for the life of the
// process; durations are measured, so a NaN is a bug upstream to ignore.
bool IsNumber(double value) { return !std::isnan(value); }

std::string_view NormaliseRpcMethod(std::string_view method) {
  // "/package.Service/Method" -> "Method"
  if (const size_t slash = method.rfind('/'); slash != std::string_view::npos) {
    method.remove_prefix(slash + 1);
  }
  return method;
}

}  // namespace

std::string_view LabelValue(Direction direction) {
  switch (direction) {
    case Direction::kHostToDevice:
      return "h2d";
    case Direction::kDeviceToHost:
      return "d2h";
  }
  return "unknown";
}

std::string_view LabelValue(ChunkLocation location) {
  switch (location) {
    case ChunkLocation::kHost:
      return "host";
    case ChunkLocation::kDevice:
      return "device";
  }
  return "unknown";
}

std::string_view LabelValue(ChunkState state) {
  switch (state) {
    case ChunkState::kCompute:
      return "compute";
    case ChunkState::kHold:
      return "hold";
    case ChunkState::kHoldAfterBwd:
      return "hold_after_bwd";
    case ChunkState::kFree:
      return "free";
    case ChunkState::kReadyForReduce:
      return "ready_for_reduce";
  }
  return "unknown";
}

std::string_view LabelValue(EvictionReason reason) {
  switch (reason) {
    case EvictionReason::kCapacity:
      return "capacity";
    case EvictionReason::kQuota:
      return "quota";
    case EvictionReason::kReclaim:
      return "reclaim";
  }
  return "unknown";
}

std::string_view LabelValue(PrefetchOutcome outcome) {
  switch (outcome) {
    case PrefetchOutcome::kHit:
      return "hit";
    case PrefetchOutcome::kLate:
      return "late";
    case PrefetchOutcome::kWasted:
      return "wasted";
  }
  return "unknown";
}

std::string_view LabelValue(Policy policy) {
  switch (policy) {
    case Policy::kCuda:
      return "cuda";
    case Policy::kCpu:
      return "cpu";
    case Policy::kStatic:
      return "static";
    case Policy::kAuto:
      return "auto";
  }
  return "unknown";
}

std::string_view LabelValue(ReclaimReason reason) {
  switch (reason) {
    case ReclaimReason::kClosed:
      return "closed";
    case ReclaimReason::kDisconnected:
      return "disconnected";
    case ReclaimReason::kAttachTimeout:
      return "attach_timeout";
  }
  return "unknown";
}

// What an exposer scrapes: runs the scrape callback, then reads the
// registry, so that gauges the callback refreshes are read fresh.
class TidepoolMetrics::Scrape final : public prometheus::Collectable {
 public:
  explicit Scrape(std::shared_ptr<const prometheus::Registry> registry)
      : registry_(std::move(registry)) {}

  void SetCallback(std::function<void()> callback) {
    absl::MutexLock lock(&mu_);
    callback_ = std::move(callback);
  }

  std::vector<prometheus::MetricFamily> Collect() const override {
    {
      absl::MutexLock lock(&mu_);  // also keeps SetCallback from racing it
      if (callback_) callback_();
    }
    return registry_->Collect();
  }

 private:
  const std::shared_ptr<const prometheus::Registry> registry_;
  mutable absl::Mutex mu_;
  std::function<void()> callback_ ABSL_GUARDED_BY(mu_);
};

TidepoolMetrics::TidepoolMetrics(std::string_view version,
                                 std::string_view backend)
    : registry_(std::make_shared<prometheus::Registry>()),
      device_pool_capacity_(
          prometheus::BuildGauge()
              .Name("tidepool_device_pool_capacity_bytes")
              .Help("Bytes of GPU memory the daemon's pool on this device "
                    "holds.")
              .Register(*registry_)),
      device_pool_used_(prometheus::BuildGauge()
                            .Name("tidepool_device_pool_used_bytes")
                            .Help("Bytes of the device pool handed out to "
                                  "chunks and arena allocations.")
                            .Register(*registry_)),
      device_pool_peak_(prometheus::BuildGauge()
                            .Name("tidepool_device_pool_peak_bytes")
                            .Help("Highest tidepool_device_pool_used_bytes "
                                  "since the daemon started.")
                            .Register(*registry_)),
      chunk_bytes_(prometheus::BuildGauge()
                       .Name("tidepool_chunk_bytes")
                       .Help("Bytes of chunks of this device's sessions by "
                             "location (device: has a device copy; host: "
                             "host only) and tensor state.")
                       .Register(*registry_)),
      bytes_moved_(prometheus::BuildCounter()
                       .Name("tidepool_bytes_moved_total")
                       .Help("Bytes copied between host and device pools.")
                       .Register(*registry_)),
      transfer_duration_(prometheus::BuildHistogram()
                             .Name("tidepool_transfer_duration_seconds")
                             .Help("Duration of one host<->device chunk copy, "
                                   "enqueue to completion.")
                             .Register(*registry_)),
      evictions_(prometheus::BuildCounter()
                     .Name("tidepool_evictions_total")
                     .Help("Chunks evicted from the device pool, by reason; "
                           "clean evictions needed no copy back.")
                     .Register(*registry_)),
      prefetches_(prometheus::BuildCounter()
                      .Name("tidepool_prefetches_total")
                      .Help("Prefetches by outcome: hit (ready before use), "
                            "late (still in flight when acquired), wasted "
                            "(evicted or unused).")
                      .Register(*registry_)),
      optimizer_updates_(
          prometheus::BuildCounter()
              .Name("tidepool_optimizer_updates_total")
              .Help("Placed acquires (optimizer updates) by where they ran: "
                    "device (GPU) or host (CPU).")
              .Register(*registry_)),
      acquire_wait_(prometheus::BuildHistogram()
                        .Name("tidepool_acquire_wait_seconds")
                        .Help("Time from an acquire request to the chunk "
                              "being ready on the device.")
                        .Register(*registry_)),
      stall_seconds_(prometheus::BuildCounter()
                         .Name("tidepool_stall_seconds_total")
                         .Help("Seconds clients' compute waited for chunks "
                               "that prefetch did not hide.")
                         .Register(*registry_)),
      sessions_(prometheus::BuildGauge()
                    .Name("tidepool_sessions")
                    .Help("Open sessions by device and placement policy.")
                    .Register(*registry_)),
      host_pool_capacity_(prometheus::BuildGauge()
                              .Name("tidepool_host_pool_capacity_bytes")
                              .Help("Bytes of the pinned host memory pool.")
                              .Register(*registry_)
                              .Add({})),
      host_pool_used_(prometheus::BuildGauge()
                          .Name("tidepool_host_pool_used_bytes")
                          .Help("Bytes of the pinned host pool in use.")
                          .Register(*registry_)
                          .Add({})),
      host_pool_peak_(prometheus::BuildGauge()
                          .Name("tidepool_host_pool_peak_bytes")
                          .Help("Highest tidepool_host_pool_used_bytes since "
                                "the daemon started.")
                          .Register(*registry_)
                          .Add({})),
      scrape_(std::make_shared<Scrape>(registry_)) {
  prometheus::Family<prometheus::Histogram>& rpc =
      prometheus::BuildHistogram()
          .Name("tidepool_rpc_duration_seconds")
          .Help(
              "Control-plane RPC latency, handler entry to response, by "
              "method.")
          .Register(*registry_);
  for (size_t i = 0; i < kRpcMethods.size(); ++i) {
    rpc_duration_[i] =
        &rpc.Add({{"method", std::string(kRpcMethods[i])}}, kRpcBuckets);
  }
  prometheus::Family<prometheus::Counter>& reclaimed =
      prometheus::BuildCounter()
          .Name("tidepool_sessions_reclaimed_total")
          .Help("Sessions whose memory was reclaimed, by reason.")
          .Register(*registry_);
  for (int i = 0; i < kReclaimReasonCount; ++i) {
    sessions_reclaimed_[i] = &reclaimed.Add(
        {{"reason", std::string(LabelValue(static_cast<ReclaimReason>(i)))}});
  }
  prometheus::BuildGauge()
      .Name("tidepool_build_info")
      .Help("Always 1; labels carry the daemon version and device backends.")
      .Register(*registry_)
      .Add({{"version", std::string(version)},
            {"backend", std::string(backend)}})
      .Set(1);
}

// An exposer holds scrape_ weakly: once it is gone, scrapes skip it.
TidepoolMetrics::~TidepoolMetrics() = default;

std::weak_ptr<prometheus::Collectable> TidepoolMetrics::collectable() const {
  return scrape_;
}

std::vector<prometheus::MetricFamily> TidepoolMetrics::Collect() const {
  return scrape_->Collect();
}

DeviceMetrics& TidepoolMetrics::Device(std::string_view gpu,
                                       std::string_view uuid) {
  absl::MutexLock lock(&mu_);
  auto [it, inserted] =
      devices_.try_emplace({std::string(gpu), std::string(uuid)});
  if (!inserted) return *it->second;
  it->second = std::make_unique<DeviceMetrics>();
  DeviceMetrics& device = *it->second;
  device.gpu = gpu;
  device.uuid = uuid;
  const prometheus::Labels base = {{"gpu", device.gpu}, {"UUID", device.uuid}};
  const auto with =
      [&base](std::initializer_list<prometheus::Labels::value_type> extra) {
        prometheus::Labels labels = base;
        labels.insert(extra.begin(), extra.end());
        return labels;
      };

  device.pool_capacity_bytes = &device_pool_capacity_.Add(base);
  device.pool_used_bytes = &device_pool_used_.Add(base);
  device.pool_peak_bytes = &device_pool_peak_.Add(base);
  for (int l = 0; l < kChunkLocationCount; ++l) {
    for (int s = 0; s < kChunkStateCount; ++s) {
      device.chunk_bytes[l][s] = &chunk_bytes_.Add(with(
          {{"location", std::string(LabelValue(static_cast<ChunkLocation>(l)))},
           {"state", std::string(LabelValue(static_cast<ChunkState>(s)))}}));
    }
  }
  for (int d = 0; d < kDirectionCount; ++d) {
    const prometheus::Labels labels = with(
        {{"direction", std::string(LabelValue(static_cast<Direction>(d)))}});
    device.bytes_moved[d] = &bytes_moved_.Add(labels);
    device.transfer_duration[d] =
        &transfer_duration_.Add(labels, kTransferBuckets);
  }
  for (int r = 0; r < kEvictionReasonCount; ++r) {
    for (int clean = 0; clean < 2; ++clean) {
      device.evictions[r][clean] = &evictions_.Add(with(
          {{"reason", std::string(LabelValue(static_cast<EvictionReason>(r)))},
           {"clean", clean ? "true" : "false"}}));
    }
  }
  for (int o = 0; o < kPrefetchOutcomeCount; ++o) {
    device.prefetches[o] = &prefetches_.Add(
        with({{"outcome",
               std::string(LabelValue(static_cast<PrefetchOutcome>(o)))}}));
  }
  for (int l = 0; l < kChunkLocationCount; ++l) {
    device.optimizer_updates[l] = &optimizer_updates_.Add(
        with({{"location",
               std::string(LabelValue(static_cast<ChunkLocation>(l)))}}));
  }
  device.acquire_wait = &acquire_wait_.Add(base, kAcquireBuckets);
  device.stall_seconds = &stall_seconds_.Add(base);
  for (int p = 0; p < kPolicyCount; ++p) {
    device.sessions[p] = &sessions_.Add(
        with({{"policy", std::string(LabelValue(static_cast<Policy>(p)))}}));
  }
  return device;
}

void TidepoolMetrics::RemoveDevice(DeviceMetrics& device) {
  absl::MutexLock lock(&mu_);
  auto it = devices_.find({device.gpu, device.uuid});
  if (it == devices_.end() || it->second.get() != &device) return;
  device_pool_capacity_.Remove(device.pool_capacity_bytes);
  device_pool_used_.Remove(device.pool_used_bytes);
  device_pool_peak_.Remove(device.pool_peak_bytes);
  for (const auto& by_state : device.chunk_bytes) {
    for (prometheus::Gauge* gauge : by_state) chunk_bytes_.Remove(gauge);
  }
  for (prometheus::Counter* counter : device.bytes_moved)
    bytes_moved_.Remove(counter);
  for (prometheus::Histogram* h : device.transfer_duration)
    transfer_duration_.Remove(h);
  for (const auto& by_clean : device.evictions) {
    for (prometheus::Counter* counter : by_clean) evictions_.Remove(counter);
  }
  for (prometheus::Counter* counter : device.prefetches)
    prefetches_.Remove(counter);
  for (prometheus::Counter* counter : device.optimizer_updates) {
    optimizer_updates_.Remove(counter);
  }
  acquire_wait_.Remove(device.acquire_wait);
  stall_seconds_.Remove(device.stall_seconds);
  for (prometheus::Gauge* gauge : device.sessions) sessions_.Remove(gauge);
  devices_.erase(it);
}

void TidepoolMetrics::RaisePeak(prometheus::Gauge& peak, double value) {
  absl::MutexLock lock(&peak_mu_);
  if (value > peak.Value()) peak.Set(value);
}

void TidepoolMetrics::SetDevicePool(DeviceMetrics& device,
                                    const PoolUsage& usage) {
  device.pool_capacity_bytes->Set(static_cast<double>(usage.capacity_bytes));
  device.pool_used_bytes->Set(static_cast<double>(usage.used_bytes));
  RaisePeak(*device.pool_peak_bytes,
            static_cast<double>(std::max(usage.peak_bytes, usage.used_bytes)));
}

void TidepoolMetrics::SetHostPool(const PoolUsage& usage) {
  host_pool_capacity_.Set(static_cast<double>(usage.capacity_bytes));
  host_pool_used_.Set(static_cast<double>(usage.used_bytes));
  RaisePeak(host_pool_peak_,
            static_cast<double>(std::max(usage.peak_bytes, usage.used_bytes)));
}

void TidepoolMetrics::SetChunkBytes(DeviceMetrics& device,
                                    ChunkLocation location, ChunkState state,
                                    uint64_t bytes) {
  device.chunk_bytes[Index(location)][Index(state)]->Set(
      static_cast<double>(bytes));
}

void TidepoolMetrics::AddChunkBytes(DeviceMetrics& device,
                                    ChunkLocation location, ChunkState state,
                                    int64_t delta_bytes) {
  device.chunk_bytes[Index(location)][Index(state)]->Increment(
      static_cast<double>(delta_bytes));
}

void TidepoolMetrics::OnBytesMoved(DeviceMetrics& device, Direction direction,
                                   uint64_t bytes, double seconds) {
  device.bytes_moved[Index(direction)]->Increment(static_cast<double>(bytes));
  if (IsNumber(seconds)) {
    device.transfer_duration[Index(direction)]->Observe(seconds);
  }
}

void TidepoolMetrics::OnEviction(DeviceMetrics& device, EvictionReason reason,
                                 bool clean) {
  device.evictions[Index(reason)][clean ? 1 : 0]->Increment();
}

void TidepoolMetrics::OnPrefetch(DeviceMetrics& device,
                                 PrefetchOutcome outcome) {
  device.prefetches[Index(outcome)]->Increment();
}

void TidepoolMetrics::OnOptimizerUpdate(DeviceMetrics& device,
                                        ChunkLocation location) {
  device.optimizer_updates[Index(location)]->Increment();
}

void TidepoolMetrics::ObserveRpc(std::string_view method, double seconds) {
  method = NormaliseRpcMethod(method);
  size_t index = kRpcMethods.size() - 1;  // "other"
  for (size_t i = 0; i + 1 < kRpcMethods.size(); ++i) {
    if (kRpcMethods[i] == method) {
      index = i;
      break;
    }
  }
  if (IsNumber(seconds)) rpc_duration_[index]->Observe(seconds);
}

void TidepoolMetrics::ObserveAcquireWait(DeviceMetrics& device,
                                         double seconds) {
  if (IsNumber(seconds)) device.acquire_wait->Observe(seconds);
}

void TidepoolMetrics::AddStall(DeviceMetrics& device, double seconds) {
  if (IsNumber(seconds)) device.stall_seconds->Increment(seconds);
}

void TidepoolMetrics::SessionOpened(DeviceMetrics& device, Policy policy) {
  device.sessions[Index(policy)]->Increment();
}

void TidepoolMetrics::SessionClosed(DeviceMetrics& device, Policy policy) {
  device.sessions[Index(policy)]->Decrement();
}

void TidepoolMetrics::SessionReclaimed(ReclaimReason reason) {
  sessions_reclaimed_[Index(reason)]->Increment();
}

void TidepoolMetrics::SetScrapeCallback(std::function<void()> callback) {
  scrape_->SetCallback(std::move(callback));
}

}  // namespace tidepool::metrics
